"""The palm square: where it lies in the frame, cutting it out level and normalised, and how sharp the
hand's outline is (the blur check). Split from preprocess.py, which finds the hand and decides."""
from __future__ import annotations

import cv2
import numpy as np

ROI_SIZE = 128
STEP_REACH = 6  # the grey-level step across the outline is measured this many working pixels either side


def square_corners(roi_center: np.ndarray, axis_x: np.ndarray, side: float) -> np.ndarray:
    """The ROI square's corners (4, 2) in the order top-left, top-right, bottom-right, bottom-left of the ROI."""
    axis_y = np.array([-axis_x[1], axis_x[0]])
    return np.array([roi_center + (sx * axis_x + sy * axis_y) * side / 2
                     for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))], dtype=np.float32)


def inside_frame(roi_center: np.ndarray, axis_x: np.ndarray, side: float, shape: tuple[int, int],
                 slack: float = 0.2) -> bool:
    """Whether the ROI square lies in the frame (up to ``slack`` of its side may stick out: those pixels
    become background fill, which the matcher ignores)."""
    axis_y = np.array([-axis_x[1], axis_x[0]])
    corners = [roi_center + (sx * axis_x + sy * axis_y) * side / 2 for sx in (-1, 1) for sy in (-1, 1)]
    slack = slack * side
    h, w = shape
    return all(-slack <= x <= w - 1 + slack and -slack <= y <= h - 1 + slack for x, y in corners)


def gradients(work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel gradients of the working image (x, y), computed once per frame for every reading of it."""
    return (cv2.Sobel(work, cv2.CV_32F, 1, 0, ksize=3, scale=0.125),  # (integer sums: exact in float32)
            cv2.Sobel(work, cv2.CV_32F, 0, 1, ksize=3, scale=0.125))


def edge_sharpness(work: np.ndarray, mask: np.ndarray, contrast: float, grads=None) -> float:
    """How steep the hand's outline is: the gradient at the edge over the grey-level step across it
    (measured STEP_REACH px either side, so lighting and gamma cancel out), 90th percentile per edge orientation,
    worst orientation (motion blur softens only the edges across its direction). About 1 when sharp."""
    gx, gy = grads if grads is not None else gradients(work)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    band = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, kernel)
    band[:4, :] = band[-4:, :] = band[:, :4] = band[:, -4:] = 0
    found = cv2.findNonZero(band)
    if found is None:
        return 0.0
    xs, ys = found.reshape(-1, 2).T
    h, w = work.shape
    at = ys * w + xs  # (flat indices: gathering along one axis is cheaper than pairs of coordinates)
    ex, ey = gx.ravel().take(at), gy.ravel().take(at)
    mag = np.hypot(ex, ey)
    strong = mag > 0.15 * contrast / 4
    if np.count_nonzero(strong) < 40 or contrast <= 0:
        return 0.0
    ys, xs, ex, ey, mag = ys[strong], xs[strong], ex[strong], ey[strong], mag[strong]
    reach_x, reach_y = STEP_REACH * (ex / mag), STEP_REACH * (ey / mag)
    # The frame's edge replicated STEP_REACH px outwards: a sample past the edge reads the edge's pixel, as
    # clipping its coordinates would (no sample reaches further: |reach| <= STEP_REACH).
    padded = cv2.copyMakeBorder(work, STEP_REACH, STEP_REACH, STEP_REACH, STEP_REACH, cv2.BORDER_REPLICATE).ravel()
    stride = w + 2 * STEP_REACH

    def sample(sign: float) -> np.ndarray:
        row = np.round(ys + sign * reach_y) + STEP_REACH
        col = np.round(xs + sign * reach_x) + STEP_REACH
        return padded.take((row * stride + col).astype(np.intp)).astype(np.float32)

    step = np.abs(sample(1.0) - sample(-1.0))
    ok = step > 0.3 * contrast
    if np.count_nonzero(ok) < 40:
        return 0.0
    ratio = 2.0 * mag[ok] / step[ok]  # a clean step gives about 1, a step smeared over n px about 2/n
    angle = np.mod(np.arctan2(ey[ok], ex[ok]), np.pi)
    bins = np.minimum((angle / (np.pi / 4)).astype(int), 3)
    per_bin = [_percentile90(ratio[bins == k]) for k in range(4)]
    per_bin = [value for value in per_bin if value is not None]
    return float(min(per_bin)) if per_bin else 0.0


def _percentile90(values: np.ndarray) -> float | None:
    """np.percentile(values, 90) (linear between the two nearest ranks) from a partial sort; None for fewer than
    10 values. (One rank partitioned, the next the least above it: numpy partitions at two ranks ~5x slower.)"""
    if len(values) < 10:
        return None
    at = 0.9 * (len(values) - 1)
    below = int(at)
    ranked = np.partition(values, below)
    low = float(ranked[below])
    high = float(ranked[below + 1:].min()) if below + 1 < len(values) else low
    return low + (high - low) * (at - below)


def cut_roi(grey, mask, scale, roi_center, axis_x, side) -> tuple[np.ndarray, float]:
    """Warp the square ROI out of the full-resolution frame, normalise the palm's grey levels (mean 128,
    sd 40) and set what lies outside the hand to 128; also how much fine texture the palm shows."""
    axis_y = np.array([-axis_x[1], axis_x[0]])
    # Prefilter: shrink the region around the ROI so warping never skips pixels.
    full_side = side * scale
    shrink = min(1.0, ROI_SIZE / full_side)
    c = roi_center * scale
    half = full_side * 0.75
    x0, y0 = max(0, int(c[0] - half)), max(0, int(c[1] - half))
    x1, y1 = min(grey.shape[1], int(c[0] + half) + 1), min(grey.shape[0], int(c[1] + half) + 1)
    patch = grey[y0:y1, x0:x1]
    if shrink < 1.0:
        patch = cv2.resize(patch, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    k = full_side * shrink / ROI_SIZE
    origin = (c - np.array([x0, y0])) * shrink - (axis_x + axis_y) * k * ROI_SIZE / 2
    matrix = np.array([[axis_x[0] * k, axis_y[0] * k, origin[0]], [axis_x[1] * k, axis_y[1] * k, origin[1]]])
    roi = cv2.warpAffine(patch, matrix, (ROI_SIZE, ROI_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    k_work = side / ROI_SIZE
    origin_w = roi_center - (axis_x + axis_y) * k_work * ROI_SIZE / 2
    matrix_w = np.array([[axis_x[0] * k_work, axis_y[0] * k_work, origin_w[0]],
                         [axis_x[1] * k_work, axis_y[1] * k_work, origin_w[1]]])
    inside = cv2.warpAffine(mask, matrix_w, (ROI_SIZE, ROI_SIZE), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    values = roi[inside] if np.count_nonzero(inside) > ROI_SIZE else roi.ravel()
    mean, std = float(values.mean()), float(values.std()) + 1e-3
    raw = roi.astype(np.float32)
    detail = raw - cv2.GaussianBlur(raw, (0, 0), 3.0)  # lines and creases, without the lighting
    core = cv2.erode(inside.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0  # away from the outline
    values = detail[core] if np.count_nonzero(core) > ROI_SIZE else detail.ravel()
    texture = 1.4826 * float(_median(np.abs(values - _median(values))))  # robust: a few edge pixels are not texture
    normalised = (raw - mean) * (40.0 / std) + 128.0
    normalised[~inside] = 128.0
    return np.clip(normalised, 0, 255).astype(np.uint8), texture


def _median(values: np.ndarray):
    """np.median of a 1-D array, in its own precision, from a partial sort (without np.median's checks; one rank
    partitioned, the one below it the greatest beneath it)."""
    half = len(values) // 2
    ranked = np.partition(values, half)
    if len(values) % 2:
        return ranked[half]
    return (ranked[:half].max() + ranked[half]) / 2
