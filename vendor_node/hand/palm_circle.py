"""The palm circle: the largest circle inside the hand (its centre and radius place and size the palm square),
where the frame's edge cuts it, and where it would lie when a near hand's heel leaves the frame.
Split from preprocess.py; works on the hand mask in working pixels."""
from __future__ import annotations

import cv2
import numpy as np

PALM_BEYOND_FRAME = 0.3  # a near hand: how far past the frame's edge its outline is continued (of the short side)
PALM_MOVE = 0.35  # of its radius: how far the circle may move past the heel
PALM_BELOW_VALLEYS = 1.3  # the palm centre lies at most this many radii below the finger valleys (whole palms:
# coep_dev 1.34-1.47, webcam_hand2 0.84-0.94, 11k_full 0.97-1.32, quartiles)
NEAR_MARGIN = 1.7  # past the heel: distances taken this many palm radii around the circle's window
PALM_MOVE_COST = 0.5  # of circles past the heel, one a pixel further from the in-frame circle must be this much bigger


def largest(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and radius of the largest circle inside the hand and the frame: the palm. (Letting it run
    past the frame's edge kept a near hand's palm square in place on coep_dev, but slid it into the
    forearm on 11k_full, where the wrist is as wide as the palm: measured worse on real photos.)"""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # the frame edge is not palm
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    _, radius, _, loc = cv2.minMaxLoc(dist)
    return np.array((loc[0] - 1, loc[1] - 1), dtype=np.float32), float(radius)


def past_heel(mask: np.ndarray, center: np.ndarray, radius: float, up: np.ndarray,
                          valleys: np.ndarray) -> tuple[np.ndarray, float]:
    """The palm circle where the frame's edge cuts the heel of the palm: the hand is taken to go on past
    the edge as it left it (its outline continued straight out), and the circle may move from the one kept
    inside the frame only towards the wrist (``up`` points to the fingers), by at most one radius; of
    nearly equal circles the nearest wins, so a wrist as wide as the palm cannot draw it into the arm."""
    h, w = mask.shape
    pad = int(PALM_BEYOND_FRAME * min(h, w)) + 1
    extended = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    extended = cv2.copyMakeBorder(extended, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    # Only a window around the circle can be allowed (along and across the hand within 0.35 and 0.5 radii):
    # scored there, its distances taken on a crop around it (a fraction of the extended frame's pixels); the whole
    # frame only in the unlikely case that nothing there scores above the fill (-1).
    reach = int(np.ceil(np.hypot(PALM_MOVE, 0.5) * radius)) + 2
    window = (max(0, int(center[0]) - reach), max(0, int(center[1]) - reach),
              min(w, int(center[0]) + reach + 1), min(h, int(center[1]) + reach + 1))
    near = _distances_near(extended, pad + 1, window, radius)
    best, loc = _best_circle(near, window, center, radius, up, valleys)
    found = float(near[loc[1] - window[1], loc[0] - window[0]])
    if best <= -1.0:
        dist = cv2.distanceTransform(extended, cv2.DIST_L2, 5)[pad + 1:pad + 1 + h, pad + 1:pad + 1 + w]
        best, loc = _best_circle(dist, (0, 0, w, h), center, radius, up, valleys)
        found = float(dist[loc[1], loc[0]])
    if found <= radius:
        return center, radius
    return np.array(loc, dtype=np.float32), found


def _distances_near(extended: np.ndarray, offset: int, window, radius: float) -> np.ndarray:
    """The distance transform of ``extended`` over ``window`` (frame pixels; the frame starts ``offset`` pixels
    into ``extended``), computed on a crop reaching NEAR_MARGIN radii beyond the window: a distance there up to
    a margin's worth is what the whole image gives (the nearest background pixel, and the chamfer path to it,
    lie inside the crop) but for the last bits of float rounding; larger ones are taken on the whole image."""
    x0, y0, x1, y1 = (v + offset for v in window)
    margin = int(NEAR_MARGIN * radius) + 4
    top, left = max(0, y0 - margin), max(0, x0 - margin)
    crop = extended[top:min(extended.shape[0], y1 + margin), left:min(extended.shape[1], x1 + margin)]
    near = cv2.distanceTransform(crop, cv2.DIST_L2, 5)[y0 - top:y1 - top, x0 - left:x1 - left]
    if 1.1 * float(near.max()) + 3 <= margin:  # (chamfer distances are within a few % of Euclid's)
        return near
    return cv2.distanceTransform(extended, cv2.DIST_L2, 5)[y0:y1, x0:x1]


def _best_circle(dist, window, center, radius, up, valleys) -> tuple[float, tuple[int, int]]:
    """The best score of past_heel's circles (-1 where not allowed) within ``window`` (x0, y0, x1, y1), given its
    distances ``dist``, and where it is, in frame pixels (the first of equals in raster order, as over the whole
    frame)."""
    x0, y0, x1, y1 = window
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    dist = dist[:y1 - y0, :x1 - x0]
    dx, dy = xs - center[0], ys - center[1]
    along = dx * up[0] + dy * up[1]
    lateral = np.abs(dx * up[1] - dy * up[0])
    below_valleys = (valleys[0] - xs) * up[0] + (valleys[1] - ys) * up[1]
    allowed = (along <= 0.05 * radius) & (along >= -PALM_MOVE * radius) & (lateral <= 0.5 * radius)
    allowed &= below_valleys <= PALM_BELOW_VALLEYS * dist  # not slid down a wrist as wide as the palm
    score = np.where(allowed, dist - PALM_MOVE_COST * np.hypot(dx, dy), -1.0)
    _, best, _, loc = cv2.minMaxLoc(score)
    return best, (loc[0] + x0, loc[1] + y0)


def cut_sides(center: np.ndarray, radius: float, axis_x: np.ndarray, shape: tuple[int, int]) -> set[str]:
    """Where the frame's edge cuts the palm circle, seen from the palm: "heel" (towards the wrist, harmless
    to the square, which sits towards the fingers), "fingers", or "across" (beside the square)."""
    h, w = shape
    up = np.array([axis_x[1], -axis_x[0]])
    sides = set()
    for gap, outward in ((center[0], (-1, 0)), (w - 1 - center[0], (1, 0)), (center[1], (0, -1)),
                         (h - 1 - center[1], (0, 1))):
        if gap > radius + 1.5:  # clear of this edge (a circle touching it was cut short by it)
            continue
        along = float(np.dot(outward, up))
        sides.add("fingers" if along > 0.7 else "heel" if along < -0.7 else "across")
    return sides
