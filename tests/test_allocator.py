"""Freed memory kept for reuse (engine.model.allocator): each case in a fresh process, since glibc's settings
last for the process."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model import allocator

ROOT = Path(__file__).resolve().parents[1]
# Page faults while 20 MB blocks are taken, written and freed a second time, in the main thread and in a
# worker thread (glibc gives each thread an arena of its own; Gradio runs requests in worker threads).
PROBE = """
import ctypes, resource, sys, threading
sys.path.insert(0, {root!r})
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p

def faults_of_second_round():
    def round_():
        blocks = [libc.malloc(20 * 2**20) for _ in range(6)]
        for block in blocks:
            ctypes.memset(block, 1, 20 * 2**20)
        for block in blocks:
            libc.free(ctypes.c_void_p(block))
    round_()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    round_()
    found.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

found = []
faults_of_second_round()
worker = threading.Thread(target=faults_of_second_round)
worker.start()
worker.join()
print(*found)
"""
PAGES = 6 * 20 * 2**20 // 4096  # of one round

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


def faults(setup: str, **env: str) -> tuple[int, int]:
    """(main thread, worker thread) page faults of a second round of large blocks."""
    environment = {k: v for k, v in os.environ.items() if k != allocator.OPT_OUT} | env
    done = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), setup=setup)], env=environment,
                          capture_output=True, text=True, check=True)
    main, worker = done.stdout.split()
    return int(main), int(worker)


def test_large_blocks_are_kept_for_the_next_batch_in_every_thread():
    main, worker = faults("")
    assert main > PAGES / 2 and worker > PAGES / 2  # glibc's defaults: back to the kernel, taken again
    kept = faults("from engine.model.allocator import keep_freed_memory; assert keep_freed_memory()")
    assert kept[0] < PAGES / 50 and kept[1] < PAGES / 50, kept


def test_loading_a_model_for_the_cpu_keeps_freed_memory_unless_told_not_to(naflex_dir):
    for dtype in ("int8", "fp32"):
        loaded = f"from engine import load_model; load_model({str(naflex_dir)!r}, device='cpu', dtype={dtype!r})"
        assert max(faults(loaded)) < PAGES / 50, dtype
    assert min(faults(loaded, **{allocator.OPT_OUT: "0"})) > PAGES / 2
