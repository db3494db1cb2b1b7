"""Freed memory kept for reuse on the CPU (glibc's malloc, Linux).

An encode allocates and frees the same large buffers batch after batch: activations of tens of MB, and on
the int8 path the quantized copies of each layer's input. glibc gives such memory back to the kernel: the
main heap's top past a (sliding) trim threshold, a thread's heap as soon as it is empty (Gradio runs each
request in a worker thread), and every block over 32 MB, which it maps apart. The next batch then takes it
back page by page: about 100,000 page faults per int8 batch of 8 images of B/16 NaFlex 256, about 15 % of its
time on 2 cores (`python bench/encode.py` prints the faults per batch). So, on a CPU, `keep_freed_memory`
raises the thresholds and pads each heap's top, as tcmalloc or jemalloc (which Intel advises preloading for
PyTorch on CPUs) would. Blocks over 32 MB (batches of 32 at 256 patches) are still mapped apart; cutting
such batches into passes of ≤ 32 MB buffers was tried and gained nothing (int8, 4.27 img/s in passes
against 4.31 in one, a one-off script).

The price: memory freed after a peak stays with the process, up to each malloc arena's own peak (an arena per
thread that allocated, at most 8 per core). `STUDIO_KEEP_FREED_MEMORY=0` leaves malloc as it is; other C
libraries (musl, macOS, Windows) are left alone. With tcmalloc or jemalloc preloaded the settings reach
glibc's unused malloc: harmless.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
LARGEST_HEAP_BLOCK = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
KEEP_BYTES = 1024 * 1024 * 1024  # free at the main heap's top before it is trimmed
TOP_PAD_BYTES = 64 * 1024 * 1024  # kept at each heap's top: a thread's heap is not deleted once empty
OPT_OUT = "STUDIO_KEEP_FREED_MEMORY"

_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MB in its heaps, for the rest of the process. Returns whether
    malloc keeps freed memory now; idempotent."""
    global _kept
    if _kept:
        return True
    if os.environ.get(OPT_OUT, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _kept = all(libc.mallopt(option, value) for option, value in (
            (M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, TOP_PAD_BYTES)))
    except (OSError, AttributeError):  # no libc.so.6 or no mallopt in it: left as it is
        pass
    log.debug("malloc keeps freed memory: %s", _kept)
    return _kept
