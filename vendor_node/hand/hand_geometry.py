"""Finger lengths and widths, measured on the hand mask from the key points handshape.py found.

Normalised by the palm circle's diameter, so they do not change with the hand's distance from the camera.
"""
from __future__ import annotations

import numpy as np

from .handshape import FINGERS, GEOMETRY_SIZE, Shape, nearest


def _run_widths(mask: np.ndarray, points: np.ndarray, directions: np.ndarray, limit: float) -> np.ndarray:
    """Length of the foreground run through each of ``points`` along its row of ``directions`` (working
    pixels), at most ``limit`` either way: every step of every run is sampled at once and each way stops at
    its first pixel off the hand or the frame."""
    h, w = mask.shape
    steps = np.arange(1.0, np.ceil(limit) + 1.0)
    total = np.ones(len(points))
    if not steps.size:
        return total
    for sign in (1.0, -1.0):  # (the offsets in the directions' own precision, as a step at a time had them)
        q = points[:, None, :] + (sign * steps).astype(directions.dtype)[None, :, None] * directions[:, None, :]
        xs, ys = np.round(q[..., 0]).astype(np.int64), np.round(q[..., 1]).astype(np.int64)
        on = (xs >= 0) & (ys >= 0) & (xs < w) & (ys < h)
        on[on] = mask[ys[on], xs[on]] > 0
        off = ~on
        total += np.where(off.any(axis=1), off.argmax(axis=1), steps.size)
    return total


def geometry(shape: Shape, mask, center, radius) -> np.ndarray:
    """Finger lengths and widths over palm width (the palm circle's diameter, steadier than any one
    cut across the palm), in the order of GEOMETRY_NAMES; zeros where unmeasurable."""
    out = np.zeros(GEOMETRY_SIZE, dtype=np.float32)
    palm_width = 2.0 * radius
    if palm_width < 4:
        return out
    p = shape.points
    valley_of = {  # the thumb valley sits far below the index finger's base, so the index uses one valley
        "thumb": ["thumb_index"], "index": ["index_middle"], "middle": ["index_middle", "middle_ring"],
        "ring": ["middle_ring", "ring_little"], "little": ["ring_little"],
    }
    cuts = []  # (index in out, a point on the finger's axis, the direction across it)
    for i, finger in enumerate(FINGERS):
        tip = p.get(f"tip_{finger}")
        bases = [p[f"valley_{v}"] for v in valley_of[finger] if f"valley_{v}" in p]
        if tip is None or not bases:
            continue
        if len(bases) == 1:
            bases.append(_opposite_base(shape, finger, bases[0]))
        base = np.mean(bases, axis=0)
        along = tip - base
        length = float(np.linalg.norm(along))
        if length < 2:
            continue
        out[i] = length / palm_width
        axis = along / length
        normal = np.array([-axis[1], axis[0]])
        for j, frac in enumerate((0.25, 0.5, 0.75)):
            cuts.append((5 + 3 * i + j, base + along * frac, normal))
    if cuts:  # the widths across every finger at once
        where, points, normals = zip(*cuts)
        out[list(where)] = _run_widths(mask, np.array(points), np.array(normals), radius) / palm_width
    if all(f"valley_{v}" in p for v in ("index_middle", "middle_ring", "ring_little")):
        out[20] = np.linalg.norm(p["valley_index_middle"] - p["valley_middle_ring"]) / palm_width
        out[21] = np.linalg.norm(p["valley_middle_ring"] - p["valley_ring_little"]) / palm_width
        line_middle = (p["valley_index_middle"] + p["valley_ring_little"]) / 2
        out[22] = np.linalg.norm(line_middle - center) / palm_width
    return out


def _opposite_base(shape: Shape, finger: str, valley: np.ndarray) -> np.ndarray:
    """For a finger with a valley on one side only: the outline point on its other side as far from the
    tip as the valley is, so the finger's base is the middle of the two."""
    contour, tip_at = shape.contour, shape.tip_index.get(finger)
    if tip_at is None or not len(contour):
        return valley
    n = len(contour)
    tip = contour[tip_at]
    reach = float(np.linalg.norm(valley - tip))
    valley_at = nearest(contour, valley)
    towards_valley = 1 if (valley_at - tip_at) % n < n / 2 else -1
    steps = (tip_at - towards_valley * np.arange(1, n // 4)) % n
    far = np.flatnonzero(np.linalg.norm(contour[steps] - tip, axis=1) >= reach)
    return contour[steps[far[0]]] if far.size else valley
