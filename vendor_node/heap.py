"""The process's memory as the kernel counts it, and giving freed heap back to it.

Why: the unit runs under a systemd MemoryMax on a Pi with 512 MB to 4 GB. Building a gallery of 10,000
templates parses tens of thousands of short-lived objects; glibc keeps the freed memory in its arenas
(measured: 148 MB resident after a 10,000-template gallery build, 93 MB after ``malloc_trim``), so after
each rebuild the unit hands it back. Each purchase also makes and drops frame-sized arrays (a 640x480 frame,
its float copies, the palm's poses); glibc raises its mmap threshold after the first such free and then keeps
them in the heap, so the unit fixes the threshold (106 MB steady instead of 131 MB after 40 customers, no
measurable latency change). Elsewhere than glibc both are no-ops.

Not trimmed after each purchase: with 10,000 palm codes the matcher's freed working set is about 40 MB
(147 MB steady, 106 MB right after a trim, 1.5-5 ms per trim), and the next match would fault those pages
in again on the sensor->approval path.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = None
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return _libc


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``); False where there is none."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


def keep_large_blocks_unheaped() -> bool:
    """Blocks of 128 KiB and more always mapped on their own, so each is returned when freed (glibc)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Resident memory now (MiB), None where /proc is not there."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """The highest resident memory of this process so far (MiB)."""
    return _status_mb("VmHWM")
