"""Where the hand meets the frame's edge: the arm leaving the view (the wrist's side), fingers leaving it (a near
hand held over the camera), or the hand spilling out more widely, and the frame cutting through the palm.
Split from preprocess.py; working pixels."""
from __future__ import annotations

import numpy as np

from ..errors import HandRejected
from . import handshape
from .handshape import Shape

FINGER_CONTACT = 0.8  # of the palm radius: a contact with the frame's edge narrower than this is a finger
FINGER_CUT = 0.2  # and a finger the frame cuts at least this wide (drawn and nir_dev near hands: 0.26-0.6; the
# pieces of a patterned sleeve: down to 0.1)
MAX_SPAN_OVER_RADIUS = 1.5  # index/middle to ring/little valley distance over the palm radius, at most
# Where the frame cuts the heel, the palm square hangs from the finger valleys, fitted on the tuning people's
# untransformed frames placed from three valleys (coep_dev 76, webcam_hand2 74, 11k_full 30 frames): the mean of the
# three sets' medians, each setup counted alike (coep_dev's pegged hands alone would put it 0.1 of a side lower).
WIDTH_LEVELS = (0.25, 0.4, 0.55)  # the palm's width: the least of the widths across the hand at these many valley
# spans below the valleys' middle that the frame shows whole (the thumb's base widens the lower ones on some hands)
WIDTH_PER_SIDE = 1.34  # that width over the square's side (medians 1.28/1.38/1.35, 10-90%: 1.22-1.59)
SQUARE_DROP = 0.71  # its centre this many sides below the valleys' middle (medians 0.81/0.67/0.64)
# (No refusal when that square leaves the frame: refusing such frames "too_close" at over 0.35 of the side out
# cost held-out rank-1 on every row it touched: webcam_hand2 scaled 1.3 65.6 -> 35.5%, 1.5 53.8 -> 21.5%, coep_dev's
# close-up 95.2 -> 93.5%; 28-30 of the refused webcam frames had matched right. A partly-out square falls back.)


def wrist_contact(mask: np.ndarray, center: np.ndarray, radius: float) -> tuple[np.ndarray | None, bool]:
    """Midpoint of where the arm leaves the frame (None if the whole hand is inside or the arm cannot be
    told from the fingers), whether the hand spills out of the frame more widely than an arm would
    (usable only if the finger valleys still place the palm square inside); HandRejected cut_off/too_close."""
    h, w = mask.shape
    # The frame border walked clockwise as one closed path: (x, y) per step.
    xs = np.concatenate([np.arange(w), np.full(h, w - 1), np.arange(w - 1, -1, -1), np.zeros(h, int)])
    ys = np.concatenate([np.zeros(w, int), np.arange(h), np.full(w, h - 1), np.arange(h - 1, -1, -1)])
    on = mask[ys, xs] > 0
    if not on.any():
        return None, False
    if on.all():
        raise HandRejected("too_close", "the hand covers the frame's whole edge")
    start = int(np.argmin(on))  # begin walking at a background pixel so runs do not wrap
    on, xs, ys = np.roll(on, -start), np.roll(xs, -start), np.roll(ys, -start)
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    runs = [(edges[i] + 1, edges[i + 1] + 1) for i in range(0, len(edges) - 1, 2)]
    # Runs a short gap apart are one arm (a bracelet or sleeve pattern splits it); a fingertip
    # barely grazing the edge is kept, anything more is a part of the hand outside the view.
    merged: list[list] = []  # [start, end, the widths of its pieces]
    for a, b in runs:
        if merged and a - merged[-1][1] < 0.6 * radius:
            merged[-1][1:] = [b, merged[-1][2] + [b - a]]
        else:
            merged.append([a, b, [b - a]])
    # Three or more finger-wide pieces side by side are fingers leaving the frame (a near hand), not an arm with
    # a bracelet or a patterned sleeve (pieces of any width): no arm there (the wrist must not be put at the fingers).
    fingers = [r for r in merged if len(r[2]) >= 3 and FINGER_CUT * radius <= min(r[2])
               and max(r[2]) < FINGER_CONTACT * radius]
    runs = sorted((r[:2] for r in merged if r not in fingers and r[1] - r[0] >= max(3.0, 0.2 * radius)),
                  key=lambda r: r[0] - r[1])
    if not runs:
        return None, bool(fingers)
    if len(runs) >= 2 and runs[0][1] - runs[0][0] < FINGER_CONTACT * radius:  # only finger-wide: no arm in sight
        return None, True
    a, b = runs[0]  # the widest contact is the arm; narrower ones are fingers reaching out of the view,
    # which leave the palm (all the recognizer needs) in view: accepted, the ROI check below decides.
    border_gap = min(center[0], center[1], w - 1 - center[0], h - 1 - center[1])
    if border_gap < 0.5 * radius:
        raise HandRejected("cut_off", "the palm is at the frame's edge")
    if b - a > 3.4 * radius:  # wider than a forearm (1.7 radii) crossing the edge at 30 degrees: the palm leaves too
        return None, True
    if len(runs) > 1 and runs[1][1] - runs[1][0] > max(0.7 * (b - a), 1.2 * radius):
        return None, True  # two broad contacts: no telling the arm from the hand
    return np.array([xs[a:b].mean(), ys[a:b].mean()], dtype=np.float32), False


def palm_cut_by_frame(shape: Shape, radius: float) -> bool:
    """The finger valleys span far more than the palm circle is wide: the frame's edge cuts the palm and
    the circle found is only the part inside (valley span over radius measured 0.8-1.1 on whole palms)."""
    im, rl = shape.points.get("valley_index_middle"), shape.points.get("valley_ring_little")
    return im is not None and rl is not None and float(np.linalg.norm(rl - im)) > MAX_SPAN_OVER_RADIUS * radius


def palm_width(mask: np.ndarray, point: np.ndarray, across: np.ndarray) -> float | None:
    """The hand's width through ``point`` along ``across`` (a unit vector): the run of hand pixels on that line
    containing the point; None when the point is off the hand or the run reaches the frame's edge."""
    h, w = mask.shape
    reach = int(np.hypot(h, w))
    steps = np.arange(-reach, reach + 1)
    xs = np.rint(point[0] + steps * across[0]).astype(np.intp)
    ys = np.rint(point[1] + steps * across[1]).astype(np.intp)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    on = np.zeros(len(steps), bool)
    on[inside] = mask[ys[inside], xs[inside]] > 0
    if not on[reach]:
        return None
    off = np.flatnonzero(~on)  # (the ends of the line lie outside the frame: never on the hand)
    first, last = off[off < reach].max() + 1, off[off > reach].min() - 1
    if not (inside[first - 1] and inside[last + 1]):  # the run ends at the frame's edge: the hand goes on
        return None
    return float(last - first + 1)


def square_below_valleys(shape: Shape, mask: np.ndarray, center: np.ndarray, radius: float, placed):
    """The palm square where the frame cuts the heel of the palm (the palm circle found inside the frame is
    squeezed towards the fingers by the edge, and the square ``placed`` from it with it): it hangs a fixed share
    of its side below the finger valleys instead, its side from the palm's width just below them (no smaller than
    the circle's, which the edge only shrinks), turned and set across the hand as ``placed`` is. (centre, x axis,
    side, "valleys"), or None when three finger valleys do not place it, the palm's width there is not seen whole,
    or it would not lie further towards the wrist than ``placed`` (then the circle was not squeezed)."""
    line = handshape.valley_line(shape, center, radius)
    if not isinstance(line, handshape.ValleyLine):
        return None
    widths = [palm_width(mask, line.middle - line.up * level * line.span, line.axis_x) for level in WIDTH_LEVELS]
    widths = [width for width in widths if width is not None]
    if not widths:
        return None
    roi_center, axis_x, side = placed[:3]
    side = max(min(widths) / WIDTH_PER_SIDE, side)
    up = np.array([axis_x[1], -axis_x[0]])
    lower = float((line.middle - up * SQUARE_DROP * side - roi_center) @ up)  # (negative: towards the wrist)
    if lower >= 0:
        return None
    return roi_center + up * lower, axis_x, side, "valleys"
