"""The convexity defects of the hand's outline (the gaps between fingers), split where the frame's edge cuts the
hull: fingers leaving the frame side by side make one defect along the edge over several finger gaps.
Split from handshape.py; working pixels."""
from __future__ import annotations

import numpy as np


def split_at_border(poly: np.ndarray, defects, on_border, min_depth: float = 0.0):
    """Convexity defects as (start, end, deepest point, depth in pixels), those shallower than ``min_depth`` left
    out unless split. Where fingers leave the frame the hull runs along the frame's edge over several finger gaps
    at once: such a defect is split at the outline points touching the edge, one part per gap."""
    n = len(poly)
    if defects is None:
        return
    border = on_border(poly.T)
    rows = defects.reshape(-1, 4)
    before = np.concatenate([[0], np.cumsum(border)])  # outline points on the edge before each index
    s, e = rows[:, 0], rows[:, 1]
    inner = np.where(e >= s, before[np.maximum(e, s + 1)] - before[np.minimum(s + 1, n)],
                     before[n] - before[np.minimum(s + 1, n)] + before[e])  # edge points strictly inside the arc
    for s, e, f, depth in rows[(inner > 0) | (rows[:, 3] / 256.0 >= min_depth)]:
        arc = np.arange(s, e + 1) if e >= s else np.r_[np.arange(s, n), np.arange(0, e + 1)]
        touching = border[arc]
        if len(arc) < 3 or not touching[1:-1].any():
            yield poly[s], poly[e], poly[f], depth / 256.0
            continue
        # Each part runs from the middle of one finger's stretch along the edge to the middle of the next's,
        # so a finger cut off by the frame has one tip (not one per corner, which would merge across the gap).
        k, edge_start = 0, 0
        while k < len(arc):
            if touching[k]:
                k += 1
                continue
            first = k
            while k < len(arc) and not touching[k]:
                k += 1
            edge_end = k
            while edge_end < len(arc) and touching[edge_end]:
                edge_end += 1
            a = arc[(edge_start + max(first - 1, 0)) // 2]
            b = arc[min((k + edge_end - 1) // 2, len(arc) - 1)]
            edge_start = k
            run = poly[arc[first:k]]
            chord = poly[b] - poly[a]
            length = float(np.linalg.norm(chord))
            if length < 1:
                continue
            rel = run - poly[a]
            dist = np.abs(rel[:, 0] * chord[1] - rel[:, 1] * chord[0]) / length
            deepest = int(np.argmax(dist))
            yield poly[a], poly[b], run[deepest], float(dist[deepest])
