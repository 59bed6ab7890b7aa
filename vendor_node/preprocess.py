"""Find the hand in a greyscale frame, measure it, and cut out an aligned palm region.

Why it matters: the recognizer compares palm regions, so the same palm must land
in the same place of the ROI every time. The ROI is placed from the finger
valleys (index/middle and ring/little) when they can be found, and from the palm's
largest inscribed circle and the wrist-to-fingers axis when fingers are held
together. Anything that cannot be used is refused with a reason the employee can
act on (``HandRejected.reason``).

Works on a downscaled copy (long side ``WORK_SIZE``) for speed; the ROI itself is
cut from the full-resolution frame. Keypoints are in full-resolution pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import HandRejected

ROI_SIZE = 128
WORK_SIZE = 320

# What the employee is told for each refusal reason.
REASONS = {
    "no_hand": "No hand seen: hold your open palm over the unit.",
    "two_hands": "Two hands seen: hold one hand over the unit.",
    "fingers_closed": "Open your hand and spread your fingers a little.",
    "cut_off": "Part of your hand is outside the view: move it to the centre.",
    "blurred": "Hold your hand still for a moment.",
    "too_far": "Bring your hand a little closer.",
    "too_close": "Move your hand a little further away.",
    "bad_image": "The camera delivered an unusable picture.",
}

FINGERS = ("thumb", "index", "middle", "ring", "little")
GEOMETRY_NAMES = (
    tuple(f"{f}_length" for f in FINGERS)
    + tuple(f"{f}_width_{p}" for f in FINGERS for p in ("base", "mid", "top"))
    + ("valley_span_im_mr", "valley_span_mr_rl", "palm_length")
)
GEOMETRY_SIZE = len(GEOMETRY_NAMES)

# Tuning (fractions are relative to the working image or the palm radius).
MIN_CONTRAST = 18.0  # grey levels between hand and background
MIN_HAND_AREA = 0.03  # of the frame: smaller is "too far"
MAX_HAND_AREA = 0.60  # of the frame: larger is "too close"
SECOND_HAND_AREA = 0.35  # a second blob this big relative to the first is a second hand
MIN_SHARPNESS = 0.6  # edge gradient / contrast; a sharp edge gives 1-2, a 2.5%-of-frame motion blur under 0.6
MIN_PALM_SPAN = 0.15  # palm diameter over the frame's short side: smaller is "too far"
MAX_PALM_SPAN = 0.62  # larger, with the hand running out of the frame, is "too close"
# The palm ROI (measured with the palm-code matcher on coep_dev and webcam_hand2, enroll 1): its side is
# ROI_SIDE palm radii (the palm's inscribed circle is steadier than the valleys, which pegs and finger
# spread move); its centre is halfway between a point ROI_PALM_SHIFT radii from the palm centre towards
# the fingers and the centre of a square hanging ROI_GAP sides below the finger-valley line.
ROI_SIDE = 1.45
ROI_GAP = 0.3 / 1.45
ROI_PALM_SHIFT = 0.1
VALLEY_DEPTH = 0.45
VALLEY_REACH = 1.9  # finger valleys lie within this many palm radii of the palm centre  # convexity-defect depth in palm radii


@dataclass(frozen=True)
class Hand:
    roi: np.ndarray  # uint8 (ROI_SIZE, ROI_SIZE)
    geometry: np.ndarray  # float32 (GEOMETRY_SIZE,), normalised by palm width; 0 where unmeasurable
    keypoints: dict[str, tuple[float, float]]
    quality: float  # 0..1
    alignment: str = "valleys"  # "valleys" or "axis" (fingers together: placed from the palm circle)
    measures: dict[str, float] = field(default_factory=dict)  # sharpness, contrast, area: for eval reports


def reject(reason: str) -> HandRejected:
    return HandRejected(reason, REASONS[reason])


def extract_hand(image: np.ndarray) -> Hand:
    """The aligned palm ROI, geometry and keypoints of the one hand in ``image``; HandRejected otherwise."""
    grey = _validated(image)
    scale = max(grey.shape) / WORK_SIZE
    if scale > 1.0:
        size = (round(grey.shape[1] / scale), round(grey.shape[0] / scale))
        work = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        scale = grey.shape[1] / size[0]
    else:
        work, scale = grey, 1.0
    mask, contrast, unfilled = _segment(work)
    area = float(np.count_nonzero(mask)) / mask.size
    center, radius = _palm_circle(mask)
    if 2 * radius < MIN_PALM_SPAN * min(mask.shape):
        raise reject("too_far")
    try:
        wrist = _wrist_contact(mask, center, radius)
    except HandRejected as refusal:
        if refusal.reason == "cut_off" and 2 * radius > MAX_PALM_SPAN * min(mask.shape):
            raise reject("too_close") from None
        raise
    sharpness = _edge_sharpness(work, mask, contrast)
    if sharpness < MIN_SHARPNESS:
        raise reject("blurred")
    contour = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    contour = contour[:, 0, :].astype(np.float32)
    shape = _fingers(contour, mask, center, radius, wrist, _gap_holes(mask, unfilled, center, radius))
    if shape.extent < 1.8:  # a fist: the fingers do not reach beyond the palm
        raise reject("fingers_closed")
    roi_center, axis_x, side, alignment = _roi_frame(shape, mask, center, radius)
    roi = _cut_roi(grey, mask, scale, roi_center, axis_x, side)
    geometry = _geometry(shape, mask, center, radius)
    keypoints = {name: (float(p[0] * scale), float(p[1] * scale)) for name, p in shape.points.items()}
    keypoints["palm_center"] = (float(center[0] * scale), float(center[1] * scale))
    keypoints["roi_center"] = (float(roi_center[0] * scale), float(roi_center[1] * scale))
    if wrist is not None:
        keypoints["wrist"] = (float(wrist[0] * scale), float(wrist[1] * scale))
    quality = _quality(sharpness, contrast, area, alignment, shape)
    measures = {"sharpness": sharpness, "contrast": contrast, "area": area, "palm_radius": radius * scale,
                "roi_side": side * scale}
    return Hand(roi, geometry, keypoints, quality, alignment, measures)


# --- input and segmentation ---------------------------------------------------
def _validated(image) -> np.ndarray:
    """A 2-D uint8 array; 3-channel frames are converted, anything else is a bad image."""
    if not isinstance(image, np.ndarray):
        raise HandRejected("bad_image", f"expected a numpy image, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint8:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise HandRejected("bad_image", f"expected a greyscale uint8 image, got {image.dtype} {image.shape}")
    if min(image.shape) < 64:
        raise HandRejected("bad_image", f"image {image.shape[1]}x{image.shape[0]} is too small (need 64x64)")
    return np.ascontiguousarray(image)


def _segment(work: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The hand as a filled 0/255 mask, the hand/background contrast, and the mask before its holes were
    filled; no_hand/two_hands/too_far/too_close."""
    smooth = cv2.GaussianBlur(work, (5, 5), 0)
    if float(smooth.std()) < MIN_CONTRAST / 4:
        raise reject("no_hand")
    threshold, bright = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    hand = cv2.bitwise_not(bright) if np.count_nonzero(border) > border.size / 2 else bright
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    hand = cv2.morphologyEx(hand, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hand, connectivity=8)
    if count <= 1:
        raise reject("no_hand")
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    order = np.argsort(areas)[::-1]
    largest = areas[order[0]] / hand.size
    if largest < MIN_HAND_AREA * 0.25:
        raise reject("no_hand")
    if len(order) > 1 and areas[order[1]] >= SECOND_HAND_AREA * areas[order[0]] and areas[order[1]] / hand.size > MIN_HAND_AREA * 0.5:
        # A second hand has a palm too; background clutter (cloth folds, glare) is thin or ragged.
        first_radius = _palm_circle(np.where(labels == order[0] + 1, 255, 0).astype(np.uint8))[1]
        second_radius = _palm_circle(np.where(labels == order[1] + 1, 255, 0).astype(np.uint8))[1]
        if second_radius >= 0.6 * first_radius:
            raise reject("two_hands")
    mask = np.where(labels == order[0] + 1, 255, 0).astype(np.uint8)
    inside, outside = smooth[mask > 0], smooth[mask == 0]
    contrast = abs(float(inside.mean()) - float(outside.mean())) if outside.size else 0.0
    if contrast < MIN_CONTRAST:
        raise reject("no_hand")
    if largest < MIN_HAND_AREA:
        raise reject("too_far")
    if largest > MAX_HAND_AREA:
        raise reject("too_close")
    # Fill holes (bright rings, specular spots) so the outline is the hand's outline.
    contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 255, thickness=cv2.FILLED)
    return filled, contrast, mask


def _palm_circle(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and radius of the largest circle inside the hand: the palm."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # the frame edge is not palm
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    _, radius, _, loc = cv2.minMaxLoc(dist)
    return np.array((loc[0] - 1, loc[1] - 1), dtype=np.float32), float(radius)


def _wrist_contact(mask: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray | None:
    """Midpoint of where the arm leaves the frame (None if the whole hand is inside); cut_off/too_close."""
    h, w = mask.shape
    # The frame border walked clockwise as one closed path: (x, y) per step.
    xs = np.concatenate([np.arange(w), np.full(h, w - 1), np.arange(w - 1, -1, -1), np.zeros(h, int)])
    ys = np.concatenate([np.zeros(w, int), np.arange(h), np.full(w, h - 1), np.arange(h - 1, -1, -1)])
    on = mask[ys, xs] > 0
    if not on.any():
        return None
    if on.all():
        raise reject("too_close")
    start = int(np.argmin(on))  # begin walking at a background pixel so runs do not wrap
    on, xs, ys = np.roll(on, -start), np.roll(xs, -start), np.roll(ys, -start)
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    runs = [(edges[i] + 1, edges[i + 1] + 1) for i in range(0, len(edges) - 1, 2)]
    # Runs a short gap apart are one arm (a bracelet or sleeve pattern splits it); a fingertip
    # barely grazing the edge is kept, anything more is a part of the hand outside the view.
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] < 0.6 * radius:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    runs = [r for r in merged if r[1] - r[0] >= max(3.0, 0.2 * radius)]
    if not runs:
        return None
    if len(runs) > 1:
        raise reject("cut_off")
    a, b = runs[0]
    if b - a > 3.2 * radius:  # far wider than a forearm: the palm itself leaves the frame
        raise reject("cut_off")
    border_gap = min(center[0], center[1], w - 1 - center[0], h - 1 - center[1])
    if border_gap < 0.5 * radius:
        raise reject("cut_off")
    return np.array([xs[a:b].mean(), ys[a:b].mean()], dtype=np.float32)


def _edge_sharpness(work: np.ndarray, mask: np.ndarray, contrast: float) -> float:
    """Edge gradient over contrast, worst edge orientation: motion blur softens edges across its direction."""
    gx = cv2.Sobel(work, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(work, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    band = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, kernel) > 0
    inner = (mask > 0) & ~band
    band[[0, -1], :] = band[:, [0, -1]] = False
    ex, ey = gx[band], gy[band]
    mag = np.hypot(ex, ey)
    strong = mag > 0.15 * contrast / 4
    if np.count_nonzero(strong) < 40 or contrast <= 0:
        return 0.0
    angle = np.mod(np.arctan2(ey[strong], ex[strong]), np.pi)
    bins = np.minimum((angle / (np.pi / 4)).astype(int), 3)
    mag = mag[strong]
    per_bin = [np.percentile(mag[bins == k], 90) for k in range(4) if np.count_nonzero(bins == k) >= 10]
    if not per_bin:
        return 0.0
    del inner
    return float(min(per_bin) / contrast * 4.0)


# --- fingers, valleys, ROI ------------------------------------------------------
@dataclass
class _Shape:
    points: dict[str, np.ndarray]  # named keypoints in working pixels
    tips: list[np.ndarray]  # fingertips ordered around the hand
    valleys: list[np.ndarray]  # finger valleys, ordered the same way
    names: list[str]  # finger names for ``tips`` ("" when unknown)
    up: np.ndarray  # unit vector from the wrist towards the fingers
    extent: float  # how far the hand reaches from the palm centre towards the fingers, in palm radii
    contour: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    tip_index: dict[str, int] = field(default_factory=dict)  # named fingertip -> its index on ``contour``


def _gap_holes(mask: np.ndarray, unfilled: np.ndarray, center: np.ndarray, radius: float) -> list[np.ndarray]:
    """Gaps between fingers closed off by something between them (the pegs of a peg-guided reader):
    holes in the hand that reach from near the palm out between the fingers. Their points (x, y)."""
    holes = cv2.findContours(cv2.subtract(mask, unfilled), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
    out = []
    for hole in holes:
        points = hole.reshape(-1, 2).astype(np.float32)
        if len(points) < 6 or cv2.contourArea(hole) < 0.01 * radius * radius:
            continue
        dist = np.linalg.norm(points - center, axis=1)
        if dist.max() >= 1.3 * radius and dist.min() <= VALLEY_REACH * radius:
            out.append(points)
    return out


def _fingers(contour: np.ndarray, mask: np.ndarray, center: np.ndarray, radius: float,
             wrist: np.ndarray | None, holes: list[np.ndarray] = ()) -> _Shape:
    """Fingertips from the convex hull, valleys from the contour (and gap holes) between neighbouring tips."""
    h, w = mask.shape
    step = max(1, len(contour) // 400)
    poly = contour[::step]
    hull = cv2.convexHull(poly.reshape(-1, 1, 2).astype(np.int32), returnPoints=False)
    hull = np.sort(hull.reshape(-1))
    valleys, tips_raw = [], []
    try:
        defects = cv2.convexityDefects(poly.reshape(-1, 1, 2).astype(np.int32), hull.reshape(-1, 1))
    except cv2.error:
        defects = None
    on_border = lambda p: p[0] <= 1 or p[1] <= 1 or p[0] >= w - 2 or p[1] >= h - 2  # noqa: E731
    for s, e, f, depth in (defects.reshape(-1, 4) if defects is not None else ()):
        start, end, far = poly[s], poly[e], poly[f]
        if depth / 256.0 < VALLEY_DEPTH * radius or on_border(start) or on_border(end):
            continue
        v1, v2 = start - far, end - far
        if float(v1 @ v2 / (np.linalg.norm(v1) * np.linalg.norm(v2) + 1e-6)) < -0.2:
            continue  # wider than ~100 degrees: not between two fingers
        valleys.append(far)
        tips_raw += [start, end]
    dist_all = np.linalg.norm(contour - center, axis=1)
    near = [v for v in valleys if np.linalg.norm(v - center) <= VALLEY_REACH * radius]
    if wrist is not None:
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
    tips = sorted((_refine_tip(contour, dist_all, t, radius) for t in tips), key=lambda t: angle(t[1]))
    names = _name_fingers([t for _, t in tips])
    points: dict[str, np.ndarray] = {}
    for name, (_, tip) in zip(names, tips):
        if name:
            points[f"tip_{name}"] = tip
    if names and names[0]:
        # The valley between two named fingers: the contour point between their tips nearest the palm.
        for (ia, _), (ib, _), left, right in zip(tips, tips[1:], names, names[1:]):
            pair = tuple(sorted((left, right), key=FINGERS.index))
            sector = [h for h in holes if _between(angle(h.mean(axis=0)), angle(contour[ia]), angle(contour[ib]))]
            valley = _valley_between(contour, ia, ib, sector)
            if np.linalg.norm(valley - center) <= VALLEY_REACH * radius:
                points[f"valley_{pair[0]}_{pair[1]}"] = valley
    valleys_sorted = sorted(near, key=angle)
    tip_index = {name: index for name, (index, _) in zip(names, tips) if name}
    return _Shape(points, [t for _, t in tips], valleys_sorted, names, up, extent, contour, tip_index)


def _refine_tip(contour, dist_all, tip, radius) -> tuple[int, np.ndarray]:
    """The contour point near a hull tip that is farthest from the palm centre (index, point)."""
    index = int(np.argmin(np.linalg.norm(contour - tip, axis=1)))
    reach = max(2, int(0.4 * radius))
    window = np.arange(index - reach, index + reach + 1) % len(contour)
    best = int(window[np.argmax(dist_all[window])])
    return best, contour[best]


def _between(value: float, a: float, b: float) -> bool:
    return min(a, b) < value < max(a, b)


def _valley_between(contour, ia: int, ib: int, holes=()) -> np.ndarray:
    """The outline point between two tips deepest below the line joining them (a convexity defect);
    a gap hole between the same fingers can hold the true valley beyond whatever closed the gap."""
    n = len(contour)
    forward = (ib - ia) % n
    arc = (ia + np.arange(forward + 1)) % n if forward <= n - forward else (ib + np.arange(n - forward + 1)) % n
    points = np.concatenate([contour[arc], *holes]) if len(holes) else contour[arc]
    a, b = contour[ia], contour[ib]
    chord = (b - a) / (np.linalg.norm(b - a) + 1e-6)
    rel = points - a
    depth = np.abs(rel[:, 0] * chord[1] - rel[:, 1] * chord[0])
    return points[int(np.argmax(depth))]


def _merge_points(points: list[np.ndarray], within: float) -> list[np.ndarray]:
    merged: list[list[np.ndarray]] = []
    for p in points:
        for group in merged:
            if np.linalg.norm(group[0] - p) < within:
                group.append(p)
                break
        else:
            merged.append([p])
    return [np.mean(g, axis=0) for g in merged]


def _name_fingers(tips: list[np.ndarray]) -> list[str]:
    """Name fingertips when all five are seen: the thumb is the one farthest from its neighbour."""
    if len(tips) != 5:
        return [""] * len(tips)
    first_gap = np.linalg.norm(tips[0] - tips[1])
    last_gap = np.linalg.norm(tips[4] - tips[3])
    return list(FINGERS) if first_gap > last_gap else list(reversed(FINGERS))


def _roi_frame(shape: _Shape, mask: np.ndarray, center: np.ndarray, radius: float):
    """ROI centre, its x axis, side (working pixels) and which alignment placed it."""
    p = shape.points
    im, mr, rl = (p.get(f"valley_{k}") for k in ("index_middle", "middle_ring", "ring_little"))
    if mr is not None:
        # Two fingers touching at the base push their valley out towards the tips: drop it, extrapolate it.
        limit = float(np.linalg.norm(mr - center)) + 0.3 * radius
        im = im if im is None or np.linalg.norm(im - center) < limit else None
        rl = rl if rl is None or np.linalg.norm(rl - center) < limit else None
    a = b = None
    alignment = "valleys"
    if im is not None and rl is not None:
        a, b = im, rl
    elif mr is not None and (im is not None or rl is not None):
        # Two fingers touching hide one valley: the three finger valleys are about evenly spaced.
        a, b = (im, 2 * mr - im) if im is not None else (2 * mr - rl, rl)
    elif not shape.names or not shape.names[0]:
        v = shape.valleys  # fingers not named: three evenly spaced valleys in a row are the finger valleys
        for i in range(len(v) - 2):
            gaps = np.linalg.norm(v[i + 1] - v[i]), np.linalg.norm(v[i + 2] - v[i + 1])
            if 0.6 < gaps[0] / (gaps[1] + 1e-6) < 1.6:
                a, b = v[i], v[i + 2]
                break
    span = 0.0
    if a is not None:
        span = float(np.linalg.norm(b - a))
        # Finger valleys lie across the hand, on the fingers' side of the palm centre.
        across = abs(float((b - a) @ shape.up)) / (span + 1e-6) < 0.5
        ahead = float(((a + b) / 2 - center) @ shape.up) > 0.3 * radius
        if not (across and ahead):
            a = None
    if a is not None and 0.6 * radius < span < 2.2 * radius:
        line = (b - a) / (span + 1e-6)
        up = np.array([line[1], -line[0]])
        if up @ ((a + b) / 2 - center) < 0:
            up = -up  # from the palm towards the fingers
        fingers_up = _finger_direction(p)
        if fingers_up is not None:  # the valley line tilts with finger spread; the fingers' direction steadies it
            up = up + fingers_up
            up = up / (np.linalg.norm(up) + 1e-6)
        axis_x = np.array([-up[1], up[0]])  # fingers point to -y in the ROI (a rotation, never a mirror image)
        side = ROI_SIDE * radius
        from_palm = center + up * ROI_PALM_SHIFT * radius
        from_valleys = (a + b) / 2 - up * (ROI_GAP + 0.5) * side
        return (from_palm + from_valleys) / 2, axis_x, side, alignment
    up = _principal_axis(mask, center, radius, shape.up)
    axis_x = np.array([-up[1], up[0]])
    return center + up * ROI_PALM_SHIFT * radius, axis_x, ROI_SIDE * radius, "axis"


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
    """The long axis of the hand near the palm (palm plus finger bases), pointing the way ``up`` does."""
    reach = int(2.5 * radius)
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


def _cut_roi(grey, mask, scale, roi_center, axis_x, side) -> np.ndarray:
    """Warp the square ROI out of the full-resolution frame; background inside it is set to the palm mean."""
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
    normalised = (roi.astype(np.float32) - mean) * (40.0 / std) + 128.0
    normalised[~inside] = 128.0
    return np.clip(normalised, 0, 255).astype(np.uint8)


# --- measurements -------------------------------------------------------------
def _run_width(mask: np.ndarray, point: np.ndarray, direction: np.ndarray, limit: float) -> float:
    """Length of the foreground run through ``point`` along ``direction`` (working pixels)."""
    h, w = mask.shape
    total = 0.0
    for sign in (1.0, -1.0):
        t = 0.0
        while t < limit:
            q = point + sign * (t + 1.0) * direction
            x, y = int(round(q[0])), int(round(q[1]))
            if x < 0 or y < 0 or x >= w or y >= h or mask[y, x] == 0:
                break
            t += 1.0
        total += t
    return total + 1.0


def _geometry(shape: _Shape, mask, center, radius) -> np.ndarray:
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
            out[5 + 3 * i + j] = _run_width(mask, base + along * frac, normal, radius) / palm_width
    if all(f"valley_{v}" in p for v in ("index_middle", "middle_ring", "ring_little")):
        out[20] = np.linalg.norm(p["valley_index_middle"] - p["valley_middle_ring"]) / palm_width
        out[21] = np.linalg.norm(p["valley_middle_ring"] - p["valley_ring_little"]) / palm_width
        line_middle = (p["valley_index_middle"] + p["valley_ring_little"]) / 2
        out[22] = np.linalg.norm(line_middle - center) / palm_width
    return out


def _opposite_base(shape: _Shape, finger: str, valley: np.ndarray) -> np.ndarray:
    """For a finger with a valley on one side only: the outline point on its other side as far from the
    tip as the valley is, so the finger's base is the middle of the two."""
    contour, tip_at = shape.contour, shape.tip_index.get(finger)
    if tip_at is None or not len(contour):
        return valley
    n = len(contour)
    tip = contour[tip_at]
    reach = float(np.linalg.norm(valley - tip))
    valley_at = int(np.argmin(np.linalg.norm(contour - valley, axis=1)))
    towards_valley = 1 if (valley_at - tip_at) % n < n / 2 else -1
    steps = (tip_at - towards_valley * np.arange(1, n // 4)) % n
    far = np.flatnonzero(np.linalg.norm(contour[steps] - tip, axis=1) >= reach)
    return contour[steps[far[0]]] if far.size else valley


def _quality(sharpness, contrast, area, alignment, shape) -> float:
    """A 0..1 score for choosing the best of several frames: sharp, contrasted, well-sized, valleys found."""
    q = min(1.0, sharpness / 3.0) * min(1.0, contrast / 60.0)
    q *= min(1.0, area / 0.12) * (1.0 if area < 0.45 else 0.8)
    q *= 1.0 if alignment == "valleys" else 0.7
    q *= 1.0 if len(shape.tips) == 5 else 0.85
    return float(max(0.0, min(1.0, q)))
