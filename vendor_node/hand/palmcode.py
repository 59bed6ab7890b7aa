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

from . import bit_search
from .bit_search import BITS

BACKGROUND = 128  # preprocess fills the ROI outside the hand with this grey level


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
    coarse_first_step: int = 0  # > 0: the coarse pass first scores its shifts on this step only, keeps ...
    coarse_first_keep: int = 128  # ... these entries and scores its other shifts on them only
    candidates: int = 32  # gallery entries that get the full search
    sift_reach: int = 2  # > 0: a sift before the coarse pass, shifts up to this many cells by sift_step ...
    sift_step: int = 2
    sift_word_step: int = 1  # ... on every n-th 64-cell word of each plane only ...
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
    """Winner-take-all orientation per cell (dark lines answer most negatively) and the trusted-cell mask.

    ``responses`` (..., H, W, C) and ``valid`` (..., H, W): any leading axes (a probe's poses) are coded at once;
    the weakest ``fragile_fraction`` of each code's valid cells are masked out."""
    code, strength = winners(responses)
    if fragile_fraction > 0:
        valid = valid.copy()
        for k in np.ndindex(valid.shape[:-2]):
            if valid[k].any():
                valid[k] &= strength[k] >= quantile(strength[k][valid[k]], fragile_fraction)
    return code, valid


def winners(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of (..., C) responses: the winning channel (the first of equal smallest, as ``np.argmin``), uint8,
    and how clearly it won (runner-up minus winner, equal minima give 0; ``np.partition``'s two smallest), by
    one running scan over the C channels: elementwise minima and maxima pick the same float32 values, in an
    eighth of the time numpy's reductions along a 6-long axis take on a probe's nine poses."""
    smallest = responses[..., 0].copy()
    runner_up = np.full_like(smallest, np.inf)
    code = np.zeros(smallest.shape, np.uint8)
    for k in range(1, responses.shape[-1]):
        x = responses[..., k]
        np.minimum(runner_up, np.maximum(smallest, x), out=runner_up)
        np.copyto(code, np.uint8(k), where=x < smallest)
        np.minimum(smallest, x, out=smallest)
    return code, runner_up - smallest


def quantile(values: np.ndarray, q: float):
    """``np.quantile(values, q)`` of a 1-D float array (its default, linear method) bit for bit, without its
    per-call overhead (it was a fifth of coding a probe's nine poses)."""
    ordered = np.sort(values)
    n = len(ordered)
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1  # numpy's virtual index for alpha = beta = 1, same operations
    if virtual >= n - 1:
        return ordered[-1]
    below = int(np.floor(virtual))
    gamma = virtual - below
    a, b = ordered[below], ordered[below + 1]
    step = b - a
    if gamma >= 0.5:  # numpy's lerp interpolates from the nearer end
        return b - step * ordered.dtype.type(1 - gamma)
    return a + step * ordered.dtype.type(gamma)


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
    planes, masks = packed_variants(codes, valid, rotations, variant_layout(codes.shape[-2:], offsets, order, xor))
    return planes, masks, [(r, dy, dx) for r in range(rotations) for dy, dx in offsets]


def variant_layout(grid: tuple[int, int], offsets: list[tuple[int, int]], order: np.ndarray | None = None,
                   xor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """What :func:`packed_variants` needs to gather the shifted cells (in a guard's order and XOR): (flat
    index (S * cells,) into the padded code, XOR byte per gathered cell or None, reach). Made once per guard."""
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    flip = None
    if xor is not None:
        flip = np.bitwise_or.reduce(xor[:, order].astype(np.uint8) << np.arange(BITS, dtype=np.uint8)[:, None])
    return variant_index(tuple(grid), offsets, order).ravel(), flip, reach


def packed_variants(codes: np.ndarray, valid: np.ndarray, rotations: int,
                    layout: tuple[np.ndarray, np.ndarray | None, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`probe_variants`' planes and masks from a :func:`variant_layout`: each cell travels as one byte (its
    3 Johnson bits and the valid bit), so the shifts cost one gather of bytes and one packing per plane."""
    index, flip, reach = layout
    h, w = codes.shape[-2:]
    padded = np.zeros((rotations, h + 2 * reach, w + 2 * reach), np.uint8)  # zeros: masked out
    padded[:, reach:reach + h, reach:reach + w] = (_CELL_BYTE[codes[:rotations]]
                                                   | (valid[:rotations].astype(np.uint8) << BITS))
    native = bit_search.native  # the compiled kernel when built (bit_search decides once), else numpy's
    if native is not None and padded.size:  # the same bits in one compiled pass, no frame-sized temporaries
        cells, words = h * w, -(-h * w // 64)
        index = np.ascontiguousarray(index, np.int64)
        flip = None if flip is None else np.ascontiguousarray(flip, np.uint8)
        planes, masks = np.empty((rotations * (len(index) // cells), BITS, words), np.uint64), \
            np.empty((rotations * (len(index) // cells), words), np.uint64)
        native.pack(padded.ctypes.data, rotations, padded[0].size, index.ctypes.data, len(index) // cells, cells,
                    0 if flip is None else flip.ctypes.data, words, planes.ctypes.data, masks.ctypes.data)
        return planes, masks
    picked = np.take(padded.reshape(rotations, -1), index, axis=1).reshape(-1, h, w)
    if flip is not None:
        picked ^= flip.reshape(h, w)
    packed = np.empty((BITS + 1, len(picked), -(-h * w // 64)), np.uint64)
    for k in range(BITS + 1):
        packed[k] = pack_cells((picked & np.uint8(1 << k)).astype(bool))
    return np.ascontiguousarray(packed[:BITS].transpose(1, 0, 2)), packed[BITS]


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


_CELL_BYTE = np.array([sum(int(((o - k) % 6) < 3) << k for k in range(BITS)) for o in range(8)], np.uint8)


def johnson_planes_batch(codes: np.ndarray) -> np.ndarray:
    """bool (R, 3, H, W) for codes (R, H, W)."""
    c = codes.astype(np.int16)[:, None]
    k = np.arange(BITS, dtype=np.int16)[None, :, None, None]
    return ((c - k) % 6) < 3


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
