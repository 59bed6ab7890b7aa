"""The palm-code 1:N kernels: masked Hamming distances of packed Johnson-code planes, along the gallery or along
the probe's variants, split over a persistent thread pool.

Why this shape: numpy's bit operations and popcount cost about a nanosecond a 64-bit word and release the
GIL, so a pass is a few calls along thousands of entries at once (into per-thread buffers reused across
calls and chunks), and a few threads (``recognition.match_threads``; the Pi 4 has 4 cores) share the entries.
Distance = differing bits / (3 x cells both codes trust), 1 when they trust fewer than ``min_bits`` cells.

The compiled twin ``_bitkernel`` (built from ``_bitkernel.c`` when the install had gcc and the Python headers;
in a worktree ``python setup.py build_ext --inplace``) does the same passes with a hardware popcount, bit for bit
the same figures, several times faster and without numpy 2's ``bitwise_count``; :data:`KERNEL` says which runs
(on x86-64 CPUs with AVX-512 VPOPCNTQ its loops take eight entries a vector, about 2.5x fewer cycles again).
"""
from __future__ import annotations

import importlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BITS = 3  # Johnson-code bits per cell for 6 orientations
SMALL_PASS = 8192  # variants x entries up to which wide_distances does all variants in one go
SLICE_MIN = 16384  # variants x entries per thread below which a pass is not split over threads (a hand-off
# costs tens of microseconds; 16,384 pairs of 16 words, about 0.2 ms of the portable loops here)
MAX_THREADS = 4  # the Pi 4 and the Pi Zero 2 W have 4 cores


_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount_by_table(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Set bits per uint64 word (uint8, like ``np.bitwise_count``) for numpy < 2.0 (older Pi images), through
    a byte lookup table."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape + (8,))
    return np.sum(_BYTE_COUNTS[as_bytes], axis=-1, dtype=np.uint8, out=out)


popcount = np.bitwise_count if hasattr(np, "bitwise_count") else popcount_by_table

try:  # decided once: the compiled kernel when the install built it, else numpy
    native = importlib.import_module("._bitkernel", __package__)
except ImportError:
    native = None
# "avx512" where the CPU has VPOPCNTQ, else "portable"; VENDOR_NODE_KERNEL_LOOPS=portable keeps the portable loops
# (the Pi's) on such a CPU too, to measure what a Pi's figures would be made of
SIMD = native.set_simd(os.environ.get("VENDOR_NODE_KERNEL_LOOPS", "") != "portable") if native is not None else None
KERNEL = f"compiled C (hardware popcount, {SIMD} loops)" if native is not None else "numpy " + \
    ("bitwise_count" if popcount is not popcount_by_table else "byte-table popcount") + \
    " (slower: _bitkernel not built; apt install gcc python3-dev and reinstall)"


def distances(p_planes: np.ndarray, p_masks: np.ndarray, g_planes: np.ndarray, g_masks: np.ndarray,
              min_bits: int) -> np.ndarray:
    """Best (smallest) normalised angular distance over the probe variants, per gallery entry: float32 (N,).

    0 is identical, about 0.45 is typical of different palms; 1 when too few cells overlap.
    """
    return variant_distances(p_planes, p_masks, g_planes, g_masks, min_bits).min(axis=0)


def variant_distances(p_planes: np.ndarray, p_masks: np.ndarray, g_planes: np.ndarray, g_masks: np.ndarray,
                      min_bits: int) -> np.ndarray:
    """Normalised angular distance of every probe variant to every gallery entry: float32 (V, N)."""
    common = p_masks[:, None, :] & g_masks[None, :, :]  # (V, N, W)
    counts = popcount(common).sum(axis=-1, dtype=np.int32)
    differing = (p_planes[:, None] ^ g_planes[None]) & common[:, :, None, :]  # (V, N, 3, W)
    diff = popcount(differing.reshape(differing.shape[0], differing.shape[1], -1)).sum(axis=-1, dtype=np.int32)
    return _normalised(diff, counts, min_bits)


def wide_distances(p_planes: np.ndarray, p_masks: np.ndarray, g_planes_t: np.ndarray, g_masks_t: np.ndarray,
                   min_bits: int, chunk: int = 4096, columns: np.ndarray | None = None,
                   pool: "MatchPool | None" = None) -> np.ndarray:
    """:func:`variant_distances` (V, N) of a few probe variants against a gallery stored word-major
    (planes (3, W64, N), masks (W64, N)): every operation runs along the gallery (numpy's fast case), into
    per-thread buffers reused over chunks of ``chunk`` entries, so the 1:N coarse pass costs a few passes over
    the bits. ``columns``: only those entries (gathered a chunk at a time). ``pool`` (:func:`match_pool`): the
    entries split over its threads (numpy's bit operations release the GIL); the figures are the same."""
    n = g_masks_t.shape[-1] if columns is None else len(columns)
    out = np.empty((len(p_planes), n), np.float32)
    part = _wide_part
    if _native_fits(g_planes_t, g_masks_t):
        part, p_planes, p_masks = _wide_native, _words(p_planes), _words(p_masks)
        _same_shapes("wide_distances", p_planes.shape[1:], p_masks.shape, g_planes_t.shape[:2], g_masks_t.shape)
        columns = None if columns is None else np.ascontiguousarray(columns, np.int64)
    elif len(p_planes) * n <= SMALL_PASS:  # a small gallery: all variants at once (fewer numpy calls)
        g_planes, g_masks = (g_planes_t, g_masks_t) if columns is None else \
            (g_planes_t[:, :, columns], g_masks_t[:, columns])
        common = p_masks[:, :, None] & g_masks[None]  # (V, W64, N)
        counts = popcount(common).sum(axis=1, dtype=np.int32)
        differing = p_planes[:, :, :, None] ^ g_planes[None]  # (V, 3, W64, N)
        differing &= common[:, None]
        diff = popcount(differing).reshape(len(p_planes), -1, n).sum(axis=1, dtype=np.int32)
        out[...] = _normalised(diff, counts, min_bits)
        return out
    parts = max(1, min(pool.threads if pool is not None else 1, len(p_planes) * n // SLICE_MIN))
    bounds = [n * k // parts for k in range(parts + 1)]
    jobs = [(p_planes, p_masks, g_planes_t, g_masks_t, min_bits, chunk, columns, out, a, b)
            for a, b in zip(bounds[:-1], bounds[1:])]
    _run_shares(part, jobs, pool)
    return out


def _words(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, np.uint64)


def _native_fits(planes: np.ndarray, masks: np.ndarray) -> bool:
    """The compiled kernel takes uint64 arrays whose last axis (entries or variants) is contiguous."""
    return native is not None and planes.dtype == masks.dtype == np.uint64 and planes.strides[-1] == \
        masks.strides[-1] == 8 and planes.ndim == 3 and masks.ndim == 2 and planes.shape[0] == BITS


def _same_shapes(what: str, rows_planes: tuple, rows_masks: tuple, cols_planes: tuple, cols_masks: tuple) -> None:
    """The row-major side (.., 3, W)/(n, W) and the word-major side (3, W, ..)/(W, m) agree (the C reads by them)."""
    if not (rows_planes == (BITS, rows_masks[1]) == cols_planes == (BITS, cols_masks[0]) and len(rows_masks) == 2):
        raise ValueError(f"{what}: planes/masks shapes disagree: {rows_planes} {rows_masks} {cols_planes} {cols_masks}")


def _wide_native(p_planes, p_masks, g_planes_t, g_masks_t, min_bits, chunk, columns, out, first, stop) -> None:
    """:func:`_wide_part` in C (GIL released): the same figures into ``out``."""
    native.wide(p_planes.ctypes.data, p_masks.ctypes.data, len(p_planes), g_masks_t.shape[0],
                g_planes_t.ctypes.data, g_planes_t.strides[0] // 8, g_planes_t.strides[1] // 8,
                g_masks_t.ctypes.data, g_masks_t.strides[0] // 8, g_masks_t.shape[1],
                0 if columns is None else columns.ctypes.data, first, stop, min_bits, out.ctypes.data, out.shape[1])


def _wide_part(p_planes, p_masks, g_planes_t, g_masks_t, min_bits, chunk, columns, out, first, stop) -> None:
    """Entries ``first:stop`` of :func:`wide_distances` into ``out``, with this thread's buffers."""
    words = g_masks_t.shape[0]
    width = min(chunk, max(1, stop - first))
    common, bits = _scratch("common", (words, width), np.uint64), _scratch("bits", (words, width), np.uint8)
    work, total = _scratch("work", (words, width), np.uint64), _scratch("total", (words, width), np.uint8)
    if columns is not None:
        g_masks, g_planes = _scratch("g_masks", (words, width), np.uint64), \
            _scratch("g_planes", (BITS, words, width), np.uint64)
    counts, diff = _scratch("counts", (width,), np.uint16), _scratch("diff", (width,), np.uint16)
    for start in range(first, stop, width):
        end = min(stop, start + width)
        m = end - start
        c, b, x, t = common[:, :m], bits[:, :m], work[:, :m], total[:, :m]
        if columns is None:
            gm, gp = g_masks_t[:, start:end], g_planes_t[:, :, start:end]
        else:
            gm, gp = g_masks[:, :m], g_planes[:, :, :m]
            np.take(g_masks_t, columns[start:end], axis=1, out=gm, mode="clip")  # clip: no extra buffer
            np.take(g_planes_t, columns[start:end], axis=2, out=gp, mode="clip")
        for v in range(len(p_planes)):
            np.bitwise_and(gm, p_masks[v][:, None], out=c)
            np.sum(popcount(c, out=b), axis=0, dtype=np.uint16, out=counts[:m])
            for k in range(BITS):  # bits differing per word, summed over the planes in uint8 (at most 192)
                np.bitwise_xor(gp[k], p_planes[v, k][:, None], out=x)
                x &= c
                popcount(x, out=t if k == 0 else b)
                if k:
                    t += b
            np.sum(t, axis=0, dtype=np.uint16, out=diff[:m])
            out[v, start:end] = _normalised(diff[:m], counts[:m], min_bits)


def deep_distances(p_planes_t: np.ndarray, p_masks_t: np.ndarray, g_planes: np.ndarray, g_masks: np.ndarray,
                   min_bits: int, rows_at_once: int = 4, pool: "MatchPool | None" = None) -> np.ndarray:
    """:func:`distances` (N,) of many probe variants stored word-major (planes (3, W64, V), masks (W64, V))
    against a few gallery entries (N, 3, W64): every operation runs along the variants, ``rows_at_once`` entries
    a call, the full alignment search of a shortlist without numpy's per-row overhead. ``pool``: the entries
    shared between its threads."""
    out = np.empty(len(g_planes), np.float32)
    if not p_masks_t.shape[1]:
        out[...] = 1.0
        return out
    part = _deep_part
    if _native_fits(p_planes_t, p_masks_t):
        part, g_planes, g_masks = _deep_native, _words(g_planes), _words(g_masks)
        p_planes_t, p_masks_t = _words(p_planes_t), _words(p_masks_t)
        _same_shapes("deep_distances", g_planes.shape[1:], g_masks.shape, p_planes_t.shape[:2], p_masks_t.shape)
    parts = max(1, min(pool.threads if pool is not None else 1, len(g_planes) // rows_at_once))
    bounds = [len(g_planes) * k // parts for k in range(parts + 1)]
    jobs = [(p_planes_t, p_masks_t, g_planes, g_masks, min_bits, rows_at_once, out, a, b)
            for a, b in zip(bounds[:-1], bounds[1:])]
    _run_shares(part, jobs, pool)
    return out


def _deep_part(p_planes_t, p_masks_t, g_planes, g_masks, min_bits, rows_at_once, out, first, stop) -> None:
    """Entries ``first:stop`` of :func:`deep_distances` into ``out``, with this thread's buffers."""
    words, variants = p_masks_t.shape
    rows = min(rows_at_once, max(1, stop - first))
    common, bits = _scratch("deep_common", (rows, words, variants), np.uint64), \
        _scratch("deep_bits", (rows, words, variants), np.uint8)
    work, total = _scratch("deep_work", (rows, BITS, words, variants), np.uint64), \
        _scratch("deep_total", (rows, BITS, words, variants), np.uint8)
    counts, diff = _scratch("deep_counts", (rows, variants), np.uint16), _scratch("deep_diff", (rows, variants), np.uint16)
    for start in range(first, stop, rows):
        k = min(rows, stop - start)
        c, b, x, t = common[:k], bits[:k], work[:k], total[:k]
        np.bitwise_and(p_masks_t[None], g_masks[start:start + k, :, None], out=c)
        np.sum(popcount(c, out=b), axis=1, dtype=np.uint16, out=counts[:k])
        np.bitwise_xor(p_planes_t[None], g_planes[start:start + k, :, :, None], out=x)
        x &= c[:, None]
        np.sum(popcount(x, out=t).reshape(k, BITS * words, variants), axis=1, dtype=np.uint16, out=diff[:k])
        out[start:start + k] = _normalised(diff[:k], counts[:k], min_bits).min(axis=1)


def _deep_native(p_planes_t, p_masks_t, g_planes, g_masks, min_bits, rows_at_once, out, first, stop) -> None:
    """:func:`_deep_part` in C (GIL released): the same figures into ``out``."""
    native.deep(p_planes_t.ctypes.data, p_masks_t.ctypes.data, p_masks_t.shape[1], p_masks_t.shape[0],
                g_planes.ctypes.data, g_masks.ctypes.data, first, stop, min_bits, out.ctypes.data)


def _run_shares(part, jobs: list, pool: "MatchPool | None") -> None:
    """``part(*job)`` for every job: the first on this thread, the others on the pool's helpers."""
    helpers = [pool.executor.submit(part, *job) for job in jobs[1:]]
    try:
        part(*jobs[0])
    finally:
        for helper in helpers:
            helper.result()  # waits for every share before the output is read (re-raises a thread's error)


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """This thread's reusable buffer ``name`` with ``shape`` (grown when too small, never per call)."""
    size = int(np.prod(shape))
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = buffers[name] = np.empty(size, dtype)
    return buffer[:size].reshape(shape)


@dataclass(frozen=True)
class MatchPool:
    """``threads`` share a 1:N pass: the calling thread and the executor's ``threads`` - 1 helpers."""

    threads: int
    executor: ThreadPoolExecutor


_POOLS: dict[int, MatchPool] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_in_child() -> None:
    """A forked child has none of its parent's threads: its pools are made anew when first needed."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def match_threads(requested: int = 0) -> int:
    """Threads a 1:N pass is split over: ``requested``, or (0) one per core, at most ``MAX_THREADS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, requested or min(MAX_THREADS, cores))


def match_pool(threads: int) -> MatchPool | None:
    """The process's persistent pool for ``threads`` (made once, idle between probes); None for one thread."""
    if threads <= 1:
        return None
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = MatchPool(threads, ThreadPoolExecutor(threads - 1, thread_name_prefix="palm-match"))
        return _POOLS[threads]


def _normalised(diff: np.ndarray, counts: np.ndarray, min_bits: int) -> np.ndarray:
    return np.where(counts >= min_bits, diff / (BITS * np.maximum(counts, 1)), 1.0).astype(np.float32)
