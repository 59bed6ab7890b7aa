"""Shrinking a frame by pixel-area averaging (cv2.INTER_AREA) as two small matrix products, for the frames whose
size is a small fraction of the working size's (1024x768 -> 320x240 is 16 pixels to 5, 800x600 -> 320x240 is 5
to 2). OpenCV's INTER_AREA takes its slow general path for a factor that is not a whole number (1.1 ms of a
1024x768 frame on the development machine; this 0.6 ms); a period's weights are the same area overlaps, so the
pixels come out the same (checked against cv2 on every photo set by scripts/palm_squares.py and in the tests).
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd

import cv2
import numpy as np

MAX_PERIOD = 32  # input pixels per repeating block of weights, at most (larger: cv2.resize)


@lru_cache(maxsize=16)
def _weights(size_in: int, size_out: int) -> np.ndarray | None:
    """The (p, q) area weights of one period (p input pixels to q output pixels), None when the period is long
    or the factor is a whole number (cv2's own fast path)."""
    common = gcd(size_in, size_out)
    p, q = size_in // common, size_out // common
    if p > MAX_PERIOD or q == 1 or size_out >= size_in:
        return None
    step = p / q  # input pixels per output pixel
    weights = np.zeros((p, q), np.float64)
    for out in range(q):
        low, high = out * step, (out + 1) * step
        for pixel in range(int(low), min(p, int(np.ceil(high)))):
            weights[pixel, out] = max(0.0, min(high, pixel + 1) - max(low, pixel)) / step
    return weights.astype(np.float32)


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, size, interpolation=cv2.INTER_AREA)`` for a 2-D uint8 ``image`` (``size`` is
    (width, height)), by block products when both axes shrink by a short rational period."""
    (h, w), (out_w, out_h) = image.shape, size
    across, down = _weights(w, out_w), _weights(h, out_h)
    if across is None or down is None:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # Down the columns first (blocks of whole rows), then along the rows of the transposed result: every product
    # a small one per block, which BLAS runs on the calling thread.
    (p_down, q_down), (p_across, q_across) = down.shape, across.shape
    columns = (down.T @ image.astype(np.float32).reshape(h // p_down, p_down, w)).reshape(out_h, w)
    rows = across.T @ np.ascontiguousarray(columns.T).reshape(w // p_across, p_across, out_h)
    return np.rint(rows.reshape(out_w, out_h).T).astype(np.uint8)
