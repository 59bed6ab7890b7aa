"""Competitive palm codes: orientation codes from the model's filter responses, packed bits, fast matching.

Why this shape: palm lines carry identity and their local orientation survives
lighting changes, so each cell of the palm ROI keeps only which of the model's
oriented filters answered most strongly (winner-take-all, the "competitive code").
Six orientations are stored as 3-bit Johnson codes, so the Hamming distance of two
codes is their angular distance. Residual misalignment is absorbed by a small
search over shifts (and probe-side rotations); 1:N uses a coarse pass over the
whole gallery, then the full search on the best few candidates only.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BITS = 3  # Johnson-code bits per cell for 6 orientations
BACKGROUND = 128  # preprocess fills the ROI outside the hand with this grey level
SMALL_PASS = 8192  # variants x entries up to which wide_distances does all variants in one go


@dataclass(frozen=True)
class CodeParams:
    """How codes are made and compared; stored in the model manifest (``code``) so training and the unit agree."""

    orientations: int = 6
    max_shift: int = 3  # cells searched either way
    rotations_deg: tuple[float, ...] = (0.0, -5.0, 5.0, -10.0, 10.0)  # probe-side; the first must be 0
    zooms: tuple[float, ...] = ()  # probe-side rescalings tried unrotated (the ROI's size follows the valleys)
    fragile_fraction: float = 0.15  # weakest-winner cells masked out
    mask_erode: int = 2  # cells dropped next to the background (filter edge effects)
    min_overlap: float = 0.4  # of the grid: fewer common valid cells cannot be trusted
    coarse_step: int = 1  # shift step of the coarse 1:N pass
    coarse_rotations: int = 1  # how many of rotations_deg the coarse pass (and the sift) tries
    candidates: int = 32  # gallery entries that get the full search
    sift_reach: int = 2  # > 0: a sift before the coarse pass, shifts up to this many cells by sift_step ...
    sift_step: int = 2
    sift_keep: int = 1000  # ... keeping for the coarse pass max(sift_keep, sift_fraction x gallery) entries
    sift_fraction: float = 0.1
    geometry_weight: float = 0.0  # score -= weight * mean |finger length/width difference| (palm widths)
    geometry_fill: float = 0.0  # the difference assumed when too few measurements are shared
    geometry_min_shared: int = 5  # measurements both hands must have for a real comparison

    @classmethod
    def from_manifest(cls, block: dict) -> "CodeParams":
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in block.items() if k in known}
        for key in ("rotations_deg", "zooms"):
            if key in values:
                values[key] = tuple(float(a) for a in values[key])
        params = cls(**values)
        if params.orientations != 6:
            raise ValueError(f"code.orientations: only 6 is supported, got {params.orientations}")
        if not params.rotations_deg or params.rotations_deg[0] != 0:
            raise ValueError(f"code.rotations_deg: must start with 0, got {params.rotations_deg}")
        return params

    def to_manifest(self) -> dict:
        block = dict(self.__dict__)
        block["rotations_deg"] = list(self.rotations_deg)
        block["zooms"] = list(self.zooms)
        return block

    def poses(self) -> list[tuple[float, float]]:
        """(degrees, zoom) of every probe variant; the first is the ROI as it is."""
        return [(a, 1.0) for a in self.rotations_deg] + [(0.0, z) for z in self.zooms]


def rotate_roi(roi: np.ndarray, degrees: float, zoom: float = 1.0) -> np.ndarray:
    """The ROI turned (and zoomed) about its centre; corners brought in are background."""
    if degrees == 0 and zoom == 1.0:
        return roi
    h, w = roi.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, zoom)
    return cv2.warpAffine(roi, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=BACKGROUND)


def valid_cells(roi: np.ndarray, grid: tuple[int, int], erode: int) -> np.ndarray:
    """Cells of the code grid that lie on the palm (not the background fill), away from its edge."""
    background = (roi == BACKGROUND).astype(np.float32)
    share = cv2.resize(background, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    valid = (share < 0.5).astype(np.uint8)
    if erode:
        kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
        valid = cv2.erode(valid, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return valid.astype(bool)


def competitive_code(responses: np.ndarray, valid: np.ndarray, fragile_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Winner-take-all orientation per cell (dark lines answer most negatively) and the trusted-cell mask."""
    winner = np.argmin(responses, axis=-1)
    code = winner.astype(np.uint8)
    if fragile_fraction > 0 and valid.any():
        # how clearly the winner won: the runner-up's response minus the winner's (what sorting the six
        # responses of every cell would give, without the sort's per-cell cost)
        best = np.take_along_axis(responses, winner[..., None], axis=-1)
        others = responses.copy()
        np.put_along_axis(others, winner[..., None], np.inf, axis=-1)
        strength = (others.min(axis=-1, keepdims=True) - best)[..., 0]
        valid = valid & (strength >= np.quantile(strength[valid], fragile_fraction))
    return code, valid


def johnson_planes(code: np.ndarray) -> np.ndarray:
    """bool (3, H, W): orientation o in 0..5 as 100,110,111,011,001,000 (Hamming = angular distance)."""
    return np.stack([((code.astype(np.int16) - k) % 6) < 3 for k in range(BITS)], axis=0)


def planes_to_code(planes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`johnson_planes`."""
    table = np.full(8, 0, np.uint8)
    for o in range(6):
        bits = [((o - k) % 6) < 3 for k in range(BITS)]
        table[bits[0] * 4 + bits[1] * 2 + bits[2]] = o
    index = planes[0].astype(np.uint8) * 4 + planes[1].astype(np.uint8) * 2 + planes[2].astype(np.uint8)
    return table[index]


def pack_cells(bits: np.ndarray) -> np.ndarray:
    """bool (..., H, W) packed into uint64 words (..., ceil(H*W/64)), zero padded."""
    flat = bits.reshape(bits.shape[:-2] + (-1,))
    pad = (-flat.shape[-1]) % 64
    if pad:
        flat = np.concatenate([flat, np.zeros(flat.shape[:-1] + (pad,), bool)], axis=-1)
    packed = np.packbits(flat, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.uint64)


_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount_by_table(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Set bits per uint64 word (uint8, like ``np.bitwise_count``) for numpy < 2.0 (older Pi images), through
    a byte lookup table."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape + (8,))
    return np.sum(_BYTE_COUNTS[as_bytes], axis=-1, dtype=np.uint8, out=out)


popcount = np.bitwise_count if hasattr(np, "bitwise_count") else popcount_by_table


def shift_cells(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``a[..., y, x]`` moved by (dy, dx) cells; uncovered cells get ``fill``."""
    out = np.full_like(a, fill)
    h, w = a.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def shifts(max_shift: int, step: int = 1) -> list[tuple[int, int]]:
    """(0, 0) first, so ties keep the unshifted alignment."""
    r = list(range(-max_shift, max_shift + 1, step))
    if 0 not in r:
        r.append(0)
    out = [(dy, dx) for dy in r for dx in r]
    out.sort(key=lambda s: (s != (0, 0)))
    return out


def probe_variants(codes: np.ndarray, valid: np.ndarray, offsets: list[tuple[int, int]], rotations: int,
                   order: np.ndarray | None = None,
                   xor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Packed planes (V, 3, W64) and masks (V, W64) of the probe's rotations x shifts, and what each one is.

    ``order`` (cells,) and ``xor`` (3, cells): a template guard's layout (template_guard.TemplateGuard.layout),
    applied while the cells are gathered, so a guarded gallery's probe is packed once, in its domain."""
    h, w = codes.shape[-2:]
    stack = np.concatenate([johnson_planes_batch(codes[:rotations]), valid[:rotations, None]], axis=1)  # (R, 4, H, W)
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = np.pad(stack, ((0, 0), (0, 0), (reach, reach), (reach, reach)))  # zeros: masked out
    index = variant_index((h, w), offsets, order)
    picked = padded.reshape(rotations, BITS + 1, -1)[:, :, index]  # (R, 4, S, cells)
    picked = picked.transpose(0, 2, 1, 3).reshape(rotations * len(offsets), BITS + 1, h, w)
    if xor is not None:
        picked[:, :BITS] ^= xor[:, order].reshape(BITS, h, w)
    packed = pack_cells(picked)
    what = [(r, dy, dx) for r in range(rotations) for dy, dx in offsets]
    return np.ascontiguousarray(packed[:, :BITS]), np.ascontiguousarray(packed[:, BITS]), what


def variant_index(grid: tuple[int, int], offsets: list[tuple[int, int]], order: np.ndarray | None = None) -> np.ndarray:
    """(S, cells) flat positions in the padded code of each shifted cell (in ``order`` when given): shifting
    the content by (dy, dx) reads cell (y - dy, x - dx)."""
    h, w = grid
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    cells = np.arange(h * w) if order is None else np.asarray(order)
    ys, xs = cells // w, cells % w
    dy = np.array([o[0] for o in offsets])[:, None]
    dx = np.array([o[1] for o in offsets])[:, None]
    return (ys[None] + reach - dy) * (w + 2 * reach) + (xs[None] + reach - dx)


def johnson_planes_batch(codes: np.ndarray) -> np.ndarray:
    """bool (R, 3, H, W) for codes (R, H, W)."""
    c = codes.astype(np.int16)[:, None]
    k = np.arange(BITS, dtype=np.int16)[None, :, None, None]
    return ((c - k) % 6) < 3


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
                   min_bits: int, chunk: int = 4096) -> np.ndarray:
    """:func:`variant_distances` (V, N) of a few probe variants against a gallery stored word-major
    (planes (3, W64, N), masks (W64, N)): every operation runs along the gallery (numpy's fast case), into
    buffers reused over chunks of ``chunk`` entries, so the 1:N coarse pass costs a few passes over the bits."""
    n, words = g_masks_t.shape[-1], g_masks_t.shape[0]
    if len(p_planes) * n <= SMALL_PASS:  # a small gallery: all variants at once (fewer numpy calls)
        common = p_masks[:, :, None] & g_masks_t[None]  # (V, W64, N)
        counts = popcount(common).sum(axis=1, dtype=np.int32)
        differing = p_planes[:, :, :, None] ^ g_planes_t[None]  # (V, 3, W64, N)
        differing &= common[:, None]
        diff = popcount(differing).reshape(len(p_planes), BITS * words, n).sum(axis=1, dtype=np.int32)
        return _normalised(diff, counts, min_bits)
    out = np.empty((len(p_planes), n), np.float32)
    width = min(chunk, max(1, n))
    common, work = np.empty((words, width), np.uint64), np.empty((words, width), np.uint64)
    total, bits = np.empty((words, width), np.uint8), np.empty((words, width), np.uint8)
    counts, diff = np.empty(width, np.uint16), np.empty(width, np.uint16)  # at most 3 x 64 x W64 bits
    for start in range(0, n, width):
        stop = min(n, start + width)
        m = stop - start
        c, x, t, b = common[:, :m], work[:, :m], total[:, :m], bits[:, :m]
        for v in range(len(p_planes)):
            np.bitwise_and(g_masks_t[:, start:stop], p_masks[v][:, None], out=c)
            np.sum(popcount(c, out=b), axis=0, dtype=np.uint16, out=counts[:m])
            for k in range(BITS):  # bits differing per word, summed over the planes in uint8 (at most 192)
                np.bitwise_xor(g_planes_t[k, :, start:stop], p_planes[v, k][:, None], out=x)
                x &= c
                popcount(x, out=t if k == 0 else b)
                if k:
                    t += b
            np.sum(t, axis=0, dtype=np.uint16, out=diff[:m])
            out[v, start:stop] = _normalised(diff[:m], counts[:m], min_bits)
    return out


def deep_distances(p_planes_t: np.ndarray, p_masks_t: np.ndarray, g_planes: np.ndarray, g_masks: np.ndarray,
                   min_bits: int) -> np.ndarray:
    """:func:`distances` (N,) of many probe variants stored word-major (planes (3, W64, V), masks (W64, V))
    against a few gallery entries (N, 3, W64): every operation runs along the variants, the full alignment
    search of a shortlist without numpy's per-row overhead."""
    out = np.empty(len(g_planes), np.float32)
    words, variants = p_masks_t.shape
    common, work = np.empty((words, variants), np.uint64), np.empty((words, variants), np.uint64)
    total, bits = np.empty((words, variants), np.uint8), np.empty((words, variants), np.uint8)
    counts, diff = np.empty(variants, np.uint16), np.empty(variants, np.uint16)
    for i in range(len(g_planes)):
        np.bitwise_and(p_masks_t, g_masks[i][:, None], out=common)
        np.sum(popcount(common, out=bits), axis=0, dtype=np.uint16, out=counts)
        for k in range(BITS):
            np.bitwise_xor(p_planes_t[k], g_planes[i, k][:, None], out=work)
            work &= common
            popcount(work, out=total if k == 0 else bits)
            if k:
                total += bits
        np.sum(total, axis=0, dtype=np.uint16, out=diff)
        out[i] = _normalised(diff, counts, min_bits).min() if variants else 1.0
    return out


def _normalised(diff: np.ndarray, counts: np.ndarray, min_bits: int) -> np.ndarray:
    return np.where(counts >= min_bits, diff / (BITS * np.maximum(counts, 1)), 1.0).astype(np.float32)


def geometry_distances(probe: np.ndarray, gallery: np.ndarray, min_shared: int, fill: float) -> np.ndarray:
    """Mean absolute difference of the measurements both hands have (0 = unmeasured): float32 (N,)."""
    n = min(probe.shape[0], gallery.shape[1])
    if n == 0 or len(gallery) == 0:
        return np.full(len(gallery), fill, np.float32)
    p, g = probe[:n], gallery[:, :n]
    shared = (p > 0)[None, :] & (g > 0)
    count = shared.sum(axis=1)
    mean = (np.abs(g - p[None, :]) * shared).sum(axis=1) / np.maximum(count, 1)
    return np.where(count >= min_shared, mean, fill).astype(np.float32)
