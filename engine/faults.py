"""Fault injection for the crash tests: a real SIGKILL at a named point, only when asked to.

STUDIO_CRASH_AT=point or point:N (the N-th time the point is reached).
"""

import os
import signal
from collections import Counter

_hits: Counter = Counter()


def crash_point(name: str) -> None:
    wanted = os.environ.get("STUDIO_CRASH_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
