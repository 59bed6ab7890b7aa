"""The hand's shape: fingertips, finger valleys, where the palm ROI goes, and finger measurements.

Everything here works on the binary hand mask and its outline in working-image
pixels (see preprocess.py, which finds the mask and cuts the ROI). Finger valleys
are the outline points between neighbouring fingertips deepest below the line
joining them; a hole in the mask between two fingers (a gap closed off by a
reader's peg, say) can hold the true valley beyond what closed it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from . import outline_defects

FINGERS = ("thumb", "index", "middle", "ring", "little")
GEOMETRY_NAMES = (
    tuple(f"{f}_length" for f in FINGERS)
    + tuple(f"{f}_width_{p}" for f in FINGERS for p in ("base", "mid", "top"))
    + ("valley_span_im_mr", "valley_span_mr_rl", "palm_length")
)
GEOMETRY_SIZE = len(GEOMETRY_NAMES)

# The palm ROI (measured with the palm-code matcher on coep_dev and webcam_hand2, enroll 1): its side is ROI_SIDE
# palm radii (the inscribed circle is steadier than the valleys, which pegs and finger spread move); its centre is
# halfway between ROI_PALM_SHIFT radii from the palm centre fingerwards and a square ROI_GAP sides below the valleys.
ROI_SIDE = 1.45
ROI_GAP = 0.3 / 1.45
ROI_PALM_SHIFT = 0.1
AXIS_TIP_BACK = 2.8  # fingers together: the ROI sits this many palm radii back from the farthest fingertip
VALLEY_DEPTH = 0.45  # convexity-defect depth in palm radii
VALLEY_DEPTH_CLOSE = 0.3  # the same in close-ups and between fingers that leave the frame: fingers look shorter
EDGE_NOTCH_DEPTH = 0.06  # the same between two fingers that both leave the frame (cut just above the valley)
OUTLIER_REACH = 0.2  # an index/middle or ring/little valley this much farther out than the middle/ring one
# sits above fingers touching at the base (or a peg between them): it is dropped and extrapolated
PA_REACH = 3.0  # fingers together: the hand axis is measured within this many palm radii of its centre
VALLEY_REACH = 1.9  # finger valleys lie within this many palm radii of the palm centre
VALLEY_UP_WEIGHT = 0.5  # whole-hand photos: how much three finger valleys count against the arm for "up"
MAX_VALLEY_TILT = 0.85  # |cos| between the valley line and the wrist-to-palm direction, at most
ACROSS_TILT = 0.5  # the same against the fingers' own direction (11k_full held out: rank-1 87.9% -> 89.9%)
PAIR_GAP = (0.35, 1.1)  # neighbouring finger valleys lie this many palm radii apart


@dataclass
class Shape:
    points: dict[str, np.ndarray]  # named keypoints in working pixels
    tips: list[np.ndarray]  # fingertips ordered around the hand
    valleys: list[np.ndarray]  # finger valleys, ordered the same way
    names: list[str]  # finger names for ``tips`` ("" when unknown)
    up: np.ndarray  # unit vector from the wrist towards the fingers
    extent: float  # how far the hand reaches from the palm centre towards the fingers, in palm radii
    contour: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    tip_index: dict[str, int] = field(default_factory=dict)  # named fingertip -> its index on ``contour``
    fingers_leave_frame: bool = False  # a close-up, or a valley was found between fingers that leave the frame
    lines: dict = field(default_factory=dict)  # valley_line's answers by palm circle (placing and hanging the square)


def gap_holes(mask: np.ndarray, unfilled: np.ndarray, center: np.ndarray, radius: float) -> list[np.ndarray]:
    """Gaps between fingers closed off by something between them (the pegs of a peg-guided reader):
    holes in the hand that reach from near the palm out between the fingers. Their points (x, y)."""
    holes = cv2.findContours(cv2.subtract(mask, unfilled), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
    out = []
    for hole in holes:
        points = hole.reshape(-1, 2).astype(np.float32)
        if len(points) < 6 or cv2.contourArea(hole) < 0.01 * radius * radius:
            continue
        dist = np.linalg.norm(points - center, axis=1)
        if dist.max() >= 1.15 * radius and dist.min() <= VALLEY_REACH * radius:  # reaches out of the palm
            out.append(points)
    return out


def find_fingers(contour: np.ndarray, mask: np.ndarray, center: np.ndarray, radius: float,
                 wrist: np.ndarray | None, holes: list[np.ndarray] = (), close_up: bool = False) -> Shape:
    """Fingertips from the convex hull, valleys from the contour (and gap holes) between neighbouring tips."""
    h, w = mask.shape
    step = max(1, len(contour) // 400)
    poly = contour[::step]
    hull = cv2.convexHull(poly.reshape(-1, 1, 2).astype(np.int32), returnPoints=False)
    hull = np.sort(hull.reshape(-1))
    valleys, tips_raw, leave = [], [], False
    try:
        defects = cv2.convexityDefects(poly.reshape(-1, 1, 2).astype(np.int32), hull.reshape(-1, 1))
    except cv2.error:
        defects = None
    on_border = lambda p: (p[0] <= 1) | (p[1] <= 1) | (p[0] >= w - 2) | (p[1] >= h - 2)  # noqa: E731
    shallowest = min(EDGE_NOTCH_DEPTH, VALLEY_DEPTH_CLOSE, VALLEY_DEPTH) * radius  # (shallower: never a valley)
    for start, end, far, depth in outline_defects.split_at_border(poly, defects, on_border, shallowest):
        at_edge = bool(on_border(start) or on_border(end))  # fingers cut off by the frame look shorter
        between_cut = bool(on_border(start) and on_border(end)) and depth >= EDGE_NOTCH_DEPTH * radius and (
            wrist is None or float((far - center) @ (wrist - center)) < 0)  # fingers both leaving, not by the arm
        if (depth < (VALLEY_DEPTH_CLOSE if at_edge or close_up else VALLEY_DEPTH) * radius and not between_cut
                or on_border(far)):
            continue
        v1, v2 = start - far, end - far
        if not between_cut and float(v1 @ v2 / (np.linalg.norm(v1) * np.linalg.norm(v2) + 1e-6)) < -0.2:
            continue  # wider than ~100 degrees: not between two fingers
        valleys.append(far)
        tips_raw += [start, end]
        leave = leave or at_edge or close_up
    dist_all = np.linalg.norm(contour - center, axis=1)
    near = [v for v in valleys if np.linalg.norm(v - center) <= VALLEY_REACH * radius]
    if wrist is not None and len(near) >= 2 and float((np.mean(near, axis=0) - center) @ (wrist - center)) > 0:
        wrist = None  # a finger leaving the frame was taken for the arm: the valleys are on the fingers' side
    if wrist is not None and len(near) >= 3 and not close_up:
        # The arm's contact with the frame is shifted by the thumb's base and the sleeve; three valleys
        # across the fingers say more about which way the hand points: both, weighted.
        from_wrist = (center - wrist) / (np.linalg.norm(center - wrist) + 1e-6)
        from_valleys = np.mean(near, axis=0) - center
        up = (1 - VALLEY_UP_WEIGHT) * from_wrist + VALLEY_UP_WEIGHT * from_valleys / (np.linalg.norm(from_valleys) + 1e-6)
    elif wrist is not None:
        up = center - wrist
    elif near:
        up = np.mean(near, axis=0) - center
    else:
        far_pts = contour[dist_all > 1.6 * radius]
        up = (far_pts.mean(axis=0) - center) if len(far_pts) else np.array([0.0, -1.0])
    up = up / (np.linalg.norm(up) + 1e-6)
    extent = float(((contour - center) @ up).max() / max(radius, 1e-6))  # reach towards the fingertips

    def angle(p):  # around the palm centre, starting opposite the fingers
        v = p - center
        return float(np.mod(np.arctan2(v[0] * up[1] - v[1] * up[0], v @ up) + np.pi, 2 * np.pi))

    tips = _merge_points(tips_raw, 0.5 * radius)
    # Tips must stick out beyond the palm and not point back towards the wrist.
    tips = [t for t in tips if np.linalg.norm(t - center) > 1.35 * radius and (t - center) @ up > -0.3 * radius]
    tips = sorted(_refine_tips(contour, dist_all, tips, radius), key=lambda t: angle(t[1]))
    names = _name_fingers([t for _, t in tips])
    points: dict[str, np.ndarray] = {}
    for name, (_, tip) in zip(names, tips):
        if name:
            points[f"tip_{name}"] = tip
    if names and names[0]:
        # The valley between two named fingers: the outline point between their tips deepest below them.
        for (ia, _), (ib, _), left, right in zip(tips, tips[1:], names, names[1:]):
            pair = tuple(sorted((left, right), key=FINGERS.index))
            sector = [h for h in holes if _between(angle(h.mean(axis=0)), angle(contour[ia]), angle(contour[ib]))]
            valley = _valley_between(contour, ia, ib, sector, radius)
            if np.linalg.norm(valley - center) <= VALLEY_REACH * radius:
                points[f"valley_{pair[0]}_{pair[1]}"] = valley
    tip_index = {name: index for name, (index, _) in zip(names, tips) if name}
    return Shape(points, [t for _, t in tips], sorted(near, key=angle), names, up, extent, contour, tip_index, leave)


def _refine_tips(contour, dist_all, tips, radius) -> list[tuple[int, np.ndarray]]:
    """For each hull tip, the contour point near it farthest from the palm centre (index, point), all tips at once."""
    offset = contour[None, :, :] - np.array(tips).reshape(-1, 1, 2)  # (no tips: none)
    nearest_at = np.argmin((offset * offset).sum(axis=2), axis=1)
    reach = max(2, int(0.4 * radius))
    windows = (nearest_at[:, None] + np.arange(-reach, reach + 1)[None, :]) % len(contour)
    best = windows[np.arange(len(windows)), np.argmax(dist_all[windows], axis=1)]
    return [(int(index), contour[index]) for index in best]


def nearest(contour: np.ndarray, point: np.ndarray) -> int:
    """Index of the outline point nearest ``point`` (squared distances: no square root per point)."""
    offset = contour - point
    return int(np.argmin((offset * offset).sum(axis=1)))


def _between(value: float, a: float, b: float) -> bool:
    return min(a, b) < value < max(a, b)


def _valley_between(contour, ia: int, ib: int, holes=(), radius: float = 0.0) -> np.ndarray:
    """The outline point between two tips deepest below the line joining them (a convexity defect);
    a gap hole starting right at that point (what closed the gap sits there) can hold the true valley."""
    n = len(contour)
    forward = (ib - ia) % n
    arc = (ia + np.arange(forward + 1)) % n if forward <= n - forward else (ib + np.arange(n - forward + 1)) % n
    a, b = contour[ia], contour[ib]
    chord = (b - a) / (np.linalg.norm(b - a) + 1e-6)

    def deepest(points):
        rel = points - a
        depth = np.abs(rel[:, 0] * chord[1] - rel[:, 1] * chord[0])
        k = int(np.argmax(depth))
        return points[k], float(depth[k])

    valley, depth = deepest(contour[arc])
    for hole in holes:
        if np.linalg.norm(hole - valley, axis=1).min() < 0.5 * radius:
            candidate, candidate_depth = deepest(hole)
            if candidate_depth > depth:
                valley, depth = candidate, candidate_depth
    return valley


def _merge_points(points: list[np.ndarray], within: float) -> list[np.ndarray]:
    """Points nearer than ``within`` to a group's first point join that group; each group's mean."""
    apart = np.sqrt(((np.array(points)[:, None, :] - np.array(points)[None, :, :]) ** 2).sum(axis=2)) if points else []
    merged: list[list[int]] = []
    for k in range(len(points)):
        group = next((g for g in merged if apart[g[0], k] < within), None)
        if group is None:
            merged.append([k])
        else:
            group.append(k)
    return [np.mean([points[k] for k in g], axis=0) for g in merged]


def _name_fingers(tips: list[np.ndarray]) -> list[str]:
    """Name fingertips when all five are seen: the thumb is the one farthest from its neighbour."""
    if len(tips) != 5:
        return [""] * len(tips)
    first_gap = np.linalg.norm(tips[0] - tips[1])
    last_gap = np.linalg.norm(tips[4] - tips[3])
    return list(FINGERS) if first_gap > last_gap else list(reversed(FINGERS))


@dataclass
class ValleyLine:
    """The index/middle and ring/little finger valleys (found or extrapolated): ``up`` from the palm towards the
    fingers (the valley line's normal steadied by the fingers' direction), ``axis_x`` the ROI's x axis."""
    a: np.ndarray
    b: np.ndarray
    up: np.ndarray

    @property
    def middle(self) -> np.ndarray:
        return (self.a + self.b) / 2

    @property
    def span(self) -> float:
        return float(np.linalg.norm(self.b - self.a))

    @property
    def axis_x(self) -> np.ndarray:  # fingers point to -y in the ROI (a rotation, never a mirror image)
        return np.array([-self.up[1], self.up[0]])


def roi_frame(shape: Shape, mask: np.ndarray, center: np.ndarray, radius: float):
    """ROI centre, its x axis, side (working pixels) and which alignment placed it."""
    line = valley_line(shape, center, radius)
    if isinstance(line, ValleyLine):
        side = ROI_SIDE * radius
        from_palm = center + line.up * ROI_PALM_SHIFT * radius
        from_valleys = line.middle - line.up * (ROI_GAP + 0.5) * side
        return (from_palm + from_valleys) / 2, line.axis_x, side, "valleys"
    if line is not None:  # two neighbouring valleys (a close-up)
        return line
    # Fingers together: orientation from the hand's long axis; position halfway between the palm circle and a point
    # fixed palm radii back from the farthest fingertip (the circle slides along closed fingers; tips move in bending).
    up = _principal_axis(mask, center, radius, shape.up)
    axis_x = np.array([-up[1], up[0]])
    from_circle = center + up * ROI_PALM_SHIFT * radius
    if len(shape.contour):
        reach = float(((shape.contour - center) @ up).max())
    else:
        reach = (AXIS_TIP_BACK + ROI_PALM_SHIFT) * radius
    from_tip = center + up * (reach - AXIS_TIP_BACK * radius)
    return (from_circle + from_tip) / 2, axis_x, ROI_SIDE * radius, "axis"


def valley_line(shape: Shape, center: np.ndarray, radius: float):
    """The finger valleys that place the palm square: a ValleyLine, a close-up's placement from two neighbouring
    valleys (centre, x axis, side, "valley_pair"), or None (fingers together: the hand's axis places it)."""
    key = (float(center[0]), float(center[1]), float(radius))  # (once per palm circle: placed, then hung from it)
    if key not in shape.lines:
        shape.lines[key] = _valley_line(shape, center, radius)
    return shape.lines[key]


def _valley_line(shape: Shape, center: np.ndarray, radius: float):
    p = shape.points
    im, mr, rl = (p.get(f"valley_{k}") for k in ("index_middle", "middle_ring", "ring_little"))
    if mr is not None:
        # Two fingers touching at the base push their valley out towards the tips: drop it, extrapolate it.
        limit = float(np.linalg.norm(mr - center)) + OUTLIER_REACH * radius
        im = im if im is None or np.linalg.norm(im - center) < limit else None
        rl = rl if rl is None or np.linalg.norm(rl - center) < limit else None
    a = b = None
    if im is not None and rl is not None:
        a, b = im, rl
    elif mr is not None and (im is not None or rl is not None):
        # Two fingers touching hide one valley: the valleys form an arch, middle/ring on top; the missing one goes where
        # it typically is (coep_dev, webcam_hand2, silhouettes: steps along the arch and palmwards, in known steps).
        if im is not None:
            a, b = im, _continue_arch(im, mr, center, 0.93, 0.53)
        else:
            a, b = _continue_arch(rl, mr, center, 0.80, 0.45), rl
    elif not shape.names or not shape.names[0]:
        v = shape.valleys  # fingers not named: three evenly spaced valleys in a row are the finger valleys;
        # of several such rows (the thumb's valley can make one), the one lying most across its own fingers
        best = MAX_VALLEY_TILT
        for i in range(len(v) - 2):
            gaps = np.linalg.norm(v[i + 1] - v[i]), np.linalg.norm(v[i + 2] - v[i + 1])
            pointing = finger_axis(shape.contour, v[i:i + 3], radius)  # the two fingers between the three valleys
            pointing = shape.up if pointing is None else pointing
            tilt = abs(float((v[i + 2] - v[i]) @ pointing)) / (float(np.linalg.norm(v[i + 2] - v[i])) + 1e-6)
            if 0.6 < gaps[0] / (gaps[1] + 1e-6) < 1.6 and tilt < best:
                a, b, best = v[i], v[i + 2], tilt
        if a is None and shape.fingers_leave_frame:  # a close-up; with whole fingers in view the axis is steadier
            pair = _valley_pair(v, center, radius, shape.up, shape.contour)
            if pair is not None:
                return pair
    span = 0.0
    if a is not None:
        span = float(np.linalg.norm(b - a))
        fingers_up = _finger_direction(p)
        if fingers_up is None:  # fingertips unnamed or outside the frame: the fingers' outlines point the way
            between = [v for v in (im, mr, rl) if v is not None]
            fingers_up = finger_axis(shape.contour, between if len(between) >= 2 else [a, b], radius)
        # Finger valleys lie across the hand (the arm's direction can be off in a turned hand) and across
        # their own fingers (a row through the thumb's valley, or valleys misread on fingers held together,
        # lies slanted to them), on the fingers' side of the palm centre.
        across = abs(float((b - a) @ shape.up)) / (span + 1e-6) < MAX_VALLEY_TILT
        if fingers_up is not None and not shape.fingers_leave_frame:  # (cut-off fingers point less surely)
            across = across and abs(float((b - a) @ fingers_up)) / (span + 1e-6) < ACROSS_TILT
        ahead = float(((a + b) / 2 - center) @ shape.up) > 0.3 * radius
        if not (across and ahead):
            a = None
    if a is not None and 0.6 * radius < span < 2.2 * radius:
        line = (b - a) / (span + 1e-6)
        up = np.array([line[1], -line[0]])
        if up @ ((a + b) / 2 - center) < 0:
            up = -up  # from the palm towards the fingers
        if fingers_up is not None:  # the valley line tilts with finger spread; the fingers' direction steadies it
            up = up + fingers_up
            up = up / (np.linalg.norm(up) + 1e-6)
        return ValleyLine(a, b, up)
    return None


def finger_axis(contour: np.ndarray, valleys: list, radius: float) -> np.ndarray | None:
    """The mean direction the fingers between neighbouring valleys point in: from the middle of their two
    valleys to the middle of the finger's outline between them (works on fingers cut off by the frame)."""
    if len(valleys) < 2 or not len(contour):
        return None
    n = len(contour)
    at = [nearest(contour, v) for v in valleys]
    directions = []
    for (ia, va), (ib, vb) in zip(zip(at, valleys), zip(at[1:], valleys[1:])):
        forward = (ib - ia) % n
        arc = (ia + np.arange(forward + 1)) % n if forward <= n - forward else (ib + np.arange(n - forward + 1)) % n
        if len(arc) > n // 3:  # not a finger: the way round the rest of the hand
            continue
        d = contour[arc].mean(axis=0) - (va + vb) / 2
        if np.linalg.norm(d) > 0.3 * radius:
            directions.append(d / np.linalg.norm(d))
    if not directions:
        return None
    mean = np.mean(directions, axis=0)
    return mean / (np.linalg.norm(mean) + 1e-6)


def _valley_pair(valleys: list, center: np.ndarray, radius: float, up: np.ndarray, contour: np.ndarray):
    """Close-up frames often show only two neighbouring finger valleys (the outer fingers leave the
    frame or lie dim): their line gives the palm's turn and its distance from the palm centre; which two
    fingers they separate is unknown, so the palm circle places the square across the hand."""
    for first, second in zip(valleys, valleys[1:]):
        gap = float(np.linalg.norm(second - first))
        middle = (first + second) / 2
        if not PAIR_GAP[0] * radius < gap < PAIR_GAP[1] * radius:
            continue
        if abs(float((second - first) @ up)) / gap > 0.5 or float((middle - center) @ up) < 0.3 * radius:
            continue
        line = (second - first) / gap
        towards_fingers = np.array([line[1], -line[0]])
        if towards_fingers @ (middle - center) < 0:
            towards_fingers = -towards_fingers
        fingers = finger_axis(contour, [first, second], radius)  # the finger between the two valleys
        if fingers is not None and fingers @ towards_fingers > 0.5:  # neighbouring valleys are staggered
            towards_fingers = (towards_fingers + 2 * fingers) / (np.linalg.norm(towards_fingers + 2 * fingers) + 1e-6)
        axis_x = np.array([-towards_fingers[1], towards_fingers[0]])
        side = ROI_SIDE * radius
        from_palm = ROI_PALM_SHIFT * radius
        from_valleys = float((middle - center) @ towards_fingers) - (ROI_GAP + 0.5) * side
        return center + towards_fingers * (from_palm + from_valleys) / 2, axis_x, side, "valley_pair"
    return None


def _continue_arch(known: np.ndarray, mr: np.ndarray, center: np.ndarray, along: float, down: float) -> np.ndarray:
    """The valley beyond ``mr`` on the other side from ``known``."""
    step = mr - known
    length = float(np.linalg.norm(step)) + 1e-6
    across = np.array([-step[1], step[0]]) / length
    if across @ ((mr + known) / 2 - center) < 0:
        across = -across  # towards the fingers
    return mr + along * step - down * length * across


def _finger_direction(points: dict) -> np.ndarray | None:
    """Mean pointing direction of the index, middle and ring fingers (base between their valleys to tip)."""
    bases = {"index": ("index_middle",), "middle": ("index_middle", "middle_ring"), "ring": ("middle_ring", "ring_little")}
    directions = []
    for finger, valleys in bases.items():
        tip = points.get(f"tip_{finger}")
        found = [points[f"valley_{v}"] for v in valleys if f"valley_{v}" in points]
        if tip is None or not found:
            continue
        d = tip - np.mean(found, axis=0)
        directions.append(d / (np.linalg.norm(d) + 1e-6))
    if len(directions) < 2:
        return None
    mean = np.mean(directions, axis=0)
    return mean / (np.linalg.norm(mean) + 1e-6)


def _principal_axis(mask: np.ndarray, center: np.ndarray, radius: float, up: np.ndarray) -> np.ndarray:
    """The long axis of the hand within PA_REACH palm radii of its centre, pointing the way ``up`` does."""
    reach = int(PA_REACH * radius)
    x0, y0 = max(0, int(center[0]) - reach), max(0, int(center[1]) - reach)
    crop = mask[y0:int(center[1]) + reach + 1, x0:int(center[0]) + reach + 1].copy()
    disc = np.zeros_like(crop)
    cv2.circle(disc, (int(center[0]) - x0, int(center[1]) - y0), reach, 255, thickness=-1)
    m = cv2.moments(cv2.bitwise_and(crop, disc), binaryImage=True)
    if m["m00"] <= 0:
        return up
    mu20, mu02, mu11 = m["mu20"] / m["m00"], m["mu02"] / m["m00"], m["mu11"] / m["m00"]
    spread = np.hypot(mu20 - mu02, 2 * mu11)
    if spread < 0.15 * (mu20 + mu02):  # nearly round: the axis is not defined, keep the wrist direction
        return up
    theta = 0.5 * np.arctan2(2 * mu11, mu20 - mu02)
    axis = np.array([np.cos(theta), np.sin(theta)])
    return axis if axis @ up >= 0 else -axis

