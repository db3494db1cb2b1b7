"""Gathering work that arrives together from many threads (a server's concurrent requests) into one call.

`MicroBatcher(run)` is called with one item per thread; a worker thread waits up to `max_wait` seconds for
company, calls `run` once on up to `max_batch` items with the same `key`, and hands each caller its row.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

import numpy as np

_STOP = object()


class MicroBatcher:
    """One forward pass for many concurrent single-item requests; errors reach every caller of that batch."""

    def __init__(self, run: Callable[[list], np.ndarray], max_batch: int = 16, max_wait: float = 0.005,
                 key: Callable[[Any], Hashable] = lambda item: None, name: str = "batcher"):
        self.run, self.max_batch, self.max_wait, self.key = run, max_batch, max_wait, key
        self.batches = 0  # calls of `run`
        self.items = 0  # items they held
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def __call__(self, item) -> np.ndarray:
        """`run([item, ...])`'s row for `item`, computed together with whatever else arrived meanwhile."""
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(_STOP)

    def _gather(self, first) -> list:
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                self._queue.put(_STOP)  # finish this batch, then stop
                break
            batch.append(entry)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            groups: dict[Hashable, list] = {}
            for item, future in self._gather(first):
                groups.setdefault(self.key(item), []).append((item, future))
            for group in groups.values():
                try:
                    rows = self.run([item for item, _ in group])
                except Exception as error:  # noqa: BLE001 - handed to the callers, who raise it
                    for _, future in group:
                        future.set_exception(error)
                    continue
                self.batches += 1
                self.items += len(group)
                for (_, future), row in zip(group, rows):
                    future.set_result(row)
