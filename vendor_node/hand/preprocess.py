"""Find the hand in a greyscale frame, measure it, and cut out an aligned palm region.

Why it matters: the recognizer compares palm regions, so the same palm must land
in the same place of the ROI every time. The ROI is placed from the finger
valleys (index/middle and ring/little) when they can be found, and from the palm's
largest inscribed circle and the wrist-to-fingers axis when fingers are held
together. Anything that cannot be used is refused with a reason the employee can
act on (``HandRejected.reason``).

Works on a downscaled copy (long side ``WORK_SIZE``) for speed; the ROI itself is
cut from the full-resolution frame. Keypoints are in full-resolution pixels.
Fingertips, valleys, ROI placement and finger measurements live in handshape.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import cv2
import numpy as np

from . import area_shrink, dim_parts, frame_edge, hand_geometry, handedness, handshape, palm_circle, palm_square
from ..errors import HandRejected
from .handshape import FINGERS, GEOMETRY_NAMES, GEOMETRY_SIZE

__all__ = ["ROI_SIZE", "REASONS", "FINGERS", "GEOMETRY_NAMES", "GEOMETRY_SIZE", "Hand", "extract_hand"]

ROI_SIZE = palm_square.ROI_SIZE
WORK_SIZE = 320

REASONS = {  # what the employee is told per refusal: short, says what to do (the unit looks up: nearer is lower)
    "no_hand": "Hold your open hand flat over the unit.",
    "two_hands": "One hand at a time, please.",
    "fingers_closed": "Spread your fingers a little.",
    "cut_off": "Move your hand to the centre.",
    "blurred": "Hold still for a moment.",
    "too_far": "Hold your hand a little lower.",
    "too_close": "Hold your hand a little higher.",
    "bad_image": "The camera delivered an unusable picture.",
}

# Left hands cut mirrored, so every ROI is a right palm? Off: the thumb's side is told right on 90-98% of the frames
# where it is told at all (11k_small palmar, 11k_full), and a person told both ways (or unknown) is mirrored on some
# frames only; on the model's held-out people mirroring cost 11k_full rank-1 88.9% -> 75.8%, nir_dev 100% -> 90%
# (one person), 11k_small palmar left EER 25.4% -> 38.1%; coep_dev (all right), webcam_hand2 (all left) told right.
MIRROR_LEFT_HANDS = False

# Tuning (fractions are relative to the working image or the palm radius).
HYSTERESIS = 0.8  # dim parts of a lit hand are kept down to this fraction of Otsu's threshold over background
DIM_FINGERS_HYSTERESIS = 0.4  # the second try, for close-ups whose fingers get little light (nir_dev)
RETRY_REASONS = ("no_hand", "too_far", "two_hands", "fingers_closed", "bad_image", "cut_off")  # not blurred: that is the frame
MIN_CONTRAST = 18.0  # grey levels between hand and background
MIN_HAND_AREA = 0.03  # of the frame: smaller is "too far"
CLOSE_UP_AREA = 0.3  # a hand covering this much of the frame is a close-up (nir_dev 0.31-0.63; whole-hand
# photos: 11k_full 0.16-0.29, webcam_hand2 0.16-0.30, coep_dev 0.22-0.38)
MAX_HAND_AREA = 0.85  # of the frame: larger is "too close" (near-IR close-ups: 0.33-0.57, and nearer still)
SECOND_HAND_AREA = 0.35  # a second blob this big relative to the first is a second hand
# Outline steepness (palm_square.edge_sharpness, step measured 6 working px either side): photos 0.46 and up, the soft
# near-IR close-ups (nir_dev) 0.28-0.47. Probe blurred (enrollment not), coep_dev's held-out people: sigma 0.6% of the
# long side gives 0.31-0.38 (nir_dev 0.24-0.29), still 100% rank-1; 1.2% gives 0.22-0.24, 87%. The limit sits between.
MIN_SHARPNESS = 0.24
MIN_TEXTURE = 0.5  # robust sd of the palm's fine detail (grey levels): real palms 1.0 and up, silhouettes 0
MIN_COVERAGE = 0.8  # share of the ROI on the hand; real photos: 95% or more but for 1% of 11k_small
MAX_SOLIDITY = 0.975  # hands measured 0.46-0.96 (11k_small, fingers together, at the top)
MIN_PALM_SPAN = 0.15  # palm diameter over the frame's short side: smaller is "too far"
MAX_PALM_SPAN = 0.62  # larger, with the hand running out of the frame, is "too close"
NEAR_PALM_SPAN = 0.75  # larger and no finger gaps seen: "too close", not "fingers_closed" (nir_dev as framed 0.55-0.71)


@dataclass(frozen=True)
class Hand:
    roi: np.ndarray  # uint8 (ROI_SIZE, ROI_SIZE)
    geometry: np.ndarray  # float32 (GEOMETRY_SIZE,), normalised by palm width; 0 where unmeasurable
    keypoints: dict[str, tuple[float, float]]
    quality: float  # 0..1
    alignment: str = "valleys"  # "valleys", "valley_pair" (two neighbouring valleys, as in close-ups) or "axis"
    # (fingers together: placed from the palm circle)
    measures: dict[str, float] = field(default_factory=dict)  # sharpness, contrast, area: for eval reports
    square: np.ndarray | None = None  # the palm square's corners (4, 2) in frame pixels: ROI top-left, top-right,
    # bottom-right, bottom-left (its top edge faces the fingers; a left hand's ROI is mirrored, so its corners
    # run the other way round)
    side: str = "unknown"  # "right" or "left" from the thumb's side (a left hand's ROI is mirrored), or "unknown"


def reject(reason: str) -> HandRejected:
    return HandRejected(reason, REASONS[reason])


def extract_hand(image: np.ndarray, trace: dict | None = None, mirror_left: bool = MIRROR_LEFT_HANDS) -> Hand:
    """The aligned palm ROI, geometry and keypoints of the one hand in ``image``; HandRejected otherwise.

    ``trace``, when given, collects what was found on the way (outline, key points, palm square, in
    full-resolution pixels) even when the frame is refused: the debug view draws it. ``mirror_left`` cuts a
    hand told left by its thumb's side mirrored, into the right-hand frame (see MIRROR_LEFT_HANDS)."""
    hand = _extract(image, trace)
    if mirror_left and hand.side == "left":  # the thumb at the square's +x, as for a right palm
        return replace(hand, roi=np.ascontiguousarray(hand.roi[:, ::-1]), square=hand.square[[1, 0, 3, 2]])
    return hand


def _extract(image: np.ndarray, trace: dict | None) -> Hand:
    grey = validated(image)
    scale = max(grey.shape) / WORK_SIZE
    if scale > 1.0:
        size = (round(grey.shape[1] / scale), round(grey.shape[0] / scale))
        work = area_shrink.shrink(grey, size)  # (cv2's INTER_AREA pixels, faster for a 1024x768 photo)
        scale = grey.shape[1] / size[0]
    else:
        work, scale = grey, 1.0
    # A close-up under the unit's LEDs (a big bright hand on a dark background): the fingers get far less
    # light than the palm and Otsu cuts them off halfway, so dimmer parts touching the hand are taken in
    # further down ("dim_fingers") first; elsewhere that is the second reading.
    first_method = "dim_fingers" if _looks_like_close_up(work) else "otsu"
    shared: dict = {}  # what every reading of this frame computes alike (smoothed frame, Otsu, gradients)
    other = "otsu" if first_method == "dim_fingers" else "dim_fingers"
    first_trace: dict = {"scale": scale}
    try:
        alignment, finish = _hand_in(grey, work, scale, first_method, first_trace, shared, deferred=True)
        hand = None
        if alignment != "valleys" and first_trace.get("dark_background"):
            # Placed without all three finger valleys: the other reading of the fingers may show them (tried
            # before this reading's palm square is cut: when it does, that cut would be thrown away).
            second: dict = {}
            try:
                hand = _hand_in(grey, work, scale, other, second, shared, valleys_only=True)
                if hand is not None:
                    first_trace = second
            except HandRejected:
                pass
        hand = hand or finish()
        if trace is not None:
            trace.update(first_trace)
        return hand
    except HandRejected as first:
        if first.reason not in RETRY_REASONS:
            _keep_trace(trace, first_trace, first)
            raise
        # A pale hand on a pale background by a dark sleeve: the threshold split sleeve from the rest, so the hand
        # is looked for as whatever differs from the background (not when cut off: that takes in its shadow).
        retries = (other,) if first.reason == "cut_off" else (other, "background")
        for method in retries:
            retry_trace: dict = {}
            try:
                hand = _hand_in(grey, work, scale, method, retry_trace, shared)
                if trace is not None:
                    trace.update(retry_trace)
                return hand
            except HandRejected as refusal:
                if method == "otsu":  # the plain reading's reason is the one to tell (e.g. too close)
                    first, first_trace = refusal, retry_trace
        span = 2 * first_trace.get("palm_radius", 0.0) / min(grey.shape)
        if first.reason == "fingers_closed" and span > NEAR_PALM_SPAN:  # the finger gaps left the frame: too near
            first = reject("too_close")
        _keep_trace(trace, first_trace, first)
        raise first from None


def _looks_like_close_up(work: np.ndarray) -> bool:
    """A bright hand covering much of a frame whose edge is mostly dark: the unit's own framing."""
    _, bright = cv2.threshold(work, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    return np.count_nonzero(border) < border.size / 2 and cv2.countNonZero(bright) >= CLOSE_UP_AREA * bright.size


def _keep_trace(trace: dict | None, found: dict, refusal: HandRejected) -> None:
    if trace is not None:
        trace.clear()
        trace.update(found, reason=refusal.reason)


def _hand_in(grey: np.ndarray, work: np.ndarray, scale: float, method: str, trace: dict | None = None,
             shared: dict | None = None, valleys_only: bool = False, deferred: bool = False):
    """One reading of the frame (segmentation ``method``): its Hand. With ``valleys_only``, None as soon as the
    palm square is known not to be placed from all three finger valleys (the reading would not be used), and
    the blur check after that (any refusal discards the reading alike). ``deferred``: (alignment, finish) once
    the square is placed and checked against the frame; ``finish()`` cuts it and gives the Hand (or refuses)."""
    trace = {} if trace is None else trace
    shared = {} if shared is None else shared
    trace.clear()
    trace["scale"], trace["method"] = scale, method
    mask, contrast, unfilled, center, radius = _find_hand(work, method, shared)
    trace["dark_background"] = cv2.mean(work, cv2.bitwise_not(mask))[0] < cv2.mean(work, mask)[0]
    contour = _outline(mask)  # (the largest outline: the hand's, as the mask is one filled blob)
    trace["outline"] = contour * scale
    trace["palm_center"], trace["palm_radius"] = center * scale, radius * scale
    area = float(np.count_nonzero(mask)) / mask.size
    spill = "too_close" if 2 * radius > MAX_PALM_SPAN * min(mask.shape) else "cut_off"
    try:
        wrist, spills = frame_edge.wrist_contact(mask, center, radius)
    except HandRejected as refusal:
        raise reject(spill if refusal.reason == "cut_off" else refusal.reason) from None  # the employee's message
    if wrist is not None:
        trace["wrist"] = wrist * scale
    if not valleys_only:
        sharpness = _sharpness(work, mask, contrast, shared, trace)
    if _solidity(contour) > MAX_SOLIDITY:  # a card, a phone, a sleeve: no fingers or thumb stand out of it
        raise reject("no_hand")
    holes = handshape.gap_holes(mask, unfilled, center, radius)
    shape = handshape.find_fingers(contour, mask, center, radius, wrist, holes, close_up=area >= CLOSE_UP_AREA)
    trace["keypoints"] = {name: point * scale for name, point in shape.points.items()}
    trace["tips"] = [t * scale for t in shape.tips]
    trace["valleys"] = [v * scale for v in shape.valleys]
    if shape.extent < 1.8 and len(shape.valleys) < 2:  # a fist: no fingers reach beyond the palm, none apart
        raise reject("fingers_closed")
    if frame_edge.palm_cut_by_frame(shape, radius):
        raise reject(spill)
    roi_center, axis_x, side, alignment = handshape.roi_frame(shape, mask, center, radius)
    if valleys_only:
        if alignment != "valleys":
            return None
        sharpness = _sharpness(work, mask, contrast, shared, trace)
    in_frame = center, radius  # the frame checks below are about the palm inside the frame
    if alignment == "valleys" and "heel" in palm_circle.cut_sides(center, radius, axis_x, mask.shape):
        # A near hand: the frame cuts the heel of the palm, so the circle kept inside the frame is smaller and sits
        # further towards the fingers than the palm's own. In a close-up the square hangs from the valleys instead,
        # sized by the palm's width (coep_dev held out, zoomed 1.5x: rank-1 61% -> 74%). Otherwise (or where that
        # width is not seen whole, or that square leaves the frame), the palm is taken to go on past the frame's edge
        # towards the wrist, the circle moving only that way (placed again from the valleys).
        placed = None
        if area >= CLOSE_UP_AREA:  # (whole-hand photos whose wrist meets the frame: the circle measured better, and
            # their probes held nearer must place it as their enrollment did)
            placed = frame_edge.square_below_valleys(shape, mask, center, radius, (roi_center, axis_x, side))
        valleys = [shape.points[f"valley_{k}"] for k in ("index_middle", "middle_ring", "ring_little")
                   if f"valley_{k}" in shape.points]
        if placed is not None and not palm_square.inside_frame(*placed[:3], mask.shape):
            placed = None  # (partly out of view: the circle past the heel decides, as for a whole-hand photo)
        if placed is None and valleys:
            wider = palm_circle.past_heel(mask, center, radius, np.array([axis_x[1], -axis_x[0]]),
                                          np.mean(valleys, axis=0))
            placed = handshape.roi_frame(shape, mask, *wider)
            if placed[3] == "valleys" and palm_square.inside_frame(*placed[:3], mask.shape):
                # (a square that would leave the frame keeps the in-frame circle, as a whole-hand photo
                # whose wrist is as wide as the palm does: measured better on 11k_full)
                center, radius = wider
                trace["palm_center"], trace["palm_radius"] = center * scale, radius * scale
        if placed is not None and placed[3] == "valleys" and palm_square.inside_frame(*placed[:3], mask.shape):
            roi_center, axis_x, side, alignment = placed
    trace["roi_square"] = palm_square.square_corners(roi_center, axis_x, side) * scale
    if not palm_square.inside_frame(roi_center, axis_x, side, mask.shape):
        raise reject(spill if spills else "cut_off")
    cut_sides = palm_circle.cut_sides(*in_frame, axis_x, mask.shape)
    if alignment == "axis" and (spills or cut_sides - {"heel"}):  # no valleys place it, and it runs out of view
        raise reject(spill)
    if "across" in cut_sides and (alignment == "valley_pair" or
                                  not palm_square.inside_frame(roi_center, axis_x, side, mask.shape, slack=0.05)):
        raise reject(spill)  # the frame cuts the palm beside the square, and the square with it (or two valleys
        # alone cannot tell how much of the palm is outside)
    finish = partial(_cut_hand, grey, mask, scale, trace, shape, center, radius, wrist, roi_center, axis_x, side,
                     alignment, sharpness, contrast, area)
    return (alignment, finish) if deferred else finish()


def _cut_hand(grey, mask, scale, trace, shape, center, radius, wrist, roi_center, axis_x, side, alignment, sharpness,
              contrast, area) -> Hand:
    """The palm square cut from the frame and the Hand with its measures; HandRejected bad_image when the cut
    shows no palm detail or runs off the hand."""
    roi, texture = palm_square.cut_roi(grey, mask, scale, roi_center, axis_x, side)
    if texture < MIN_TEXTURE:  # a saturated or binarised picture: no palm lines to match, only wrong payers
        raise HandRejected("bad_image", "The palm shows no detail (picture over-exposed or binarised).")
    coverage = np.count_nonzero(roi != 128) / roi.size
    trace["coverage"] = coverage
    if coverage < MIN_COVERAGE:  # the outline ran through the palm
        raise HandRejected("bad_image", "The hand could not be told from the background.")
    hand_side = handedness.thumb_side(shape, center, radius, axis_x) or "unknown"
    trace["side"] = hand_side
    geometry = hand_geometry.geometry(shape, mask, center, radius)
    keypoints = {name: (float(p[0] * scale), float(p[1] * scale)) for name, p in shape.points.items()}
    keypoints["palm_center"] = (float(center[0] * scale), float(center[1] * scale))
    keypoints["roi_center"] = (float(roi_center[0] * scale), float(roi_center[1] * scale))
    if wrist is not None:
        keypoints["wrist"] = (float(wrist[0] * scale), float(wrist[1] * scale))
    quality = _quality(sharpness, contrast, area, alignment, shape)
    measures = {"sharpness": sharpness, "contrast": contrast, "area": area, "palm_radius": radius * scale,
                "roi_side": side * scale, "texture": texture}
    return Hand(roi, geometry, keypoints, quality, alignment, measures, trace["roi_square"], hand_side)


def _sharpness(work, mask, contrast, shared: dict, trace: dict) -> float:
    """The outline's steepness (palm_square.edge_sharpness); HandRejected "blurred" below MIN_SHARPNESS."""
    if "grads" not in shared:
        shared["grads"] = palm_square.gradients(work)
    sharpness = palm_square.edge_sharpness(work, mask, contrast, shared["grads"])
    trace["sharpness"] = sharpness
    if sharpness < MIN_SHARPNESS:
        raise reject("blurred")
    return sharpness


# --- input and segmentation ---------------------------------------------------
def validated(image) -> np.ndarray:
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


def _find_hand(work: np.ndarray, method: str, shared: dict | None = None):
    """Segmentation plus the palm circle: (mask, contrast, unfilled mask, palm centre, palm radius)."""
    mask, contrast, unfilled = _segment(work, method, shared)
    center, radius = palm_circle.largest(mask)
    if 2 * radius < MIN_PALM_SPAN * min(mask.shape):
        raise reject("too_far")
    return mask, contrast, unfilled, center, radius


def _segment(work: np.ndarray, method: str = "otsu", shared: dict | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """The hand as a filled 0/255 mask, the hand/background contrast, and the mask before its holes were
    filled; no_hand/two_hands/too_far/too_close.

    Otsu's threshold splits hand from background ("otsu"; "dim_fingers" takes in dim parts touching the
    hand further down); "background" instead takes everything that
    differs from the frame border's grey level (which is mostly background) by more than its noise.
    ``shared`` keeps the smoothed frame and its Otsu split for the frame's other readings."""
    shared = {} if shared is None else shared
    if "smooth" not in shared:
        shared["smooth"] = cv2.GaussianBlur(work, (5, 5), 0)
        shared["spread"] = float(cv2.meanStdDev(shared["smooth"])[1][0, 0])
    smooth = shared["smooth"]
    if shared["spread"] < MIN_CONTRAST / 4:
        raise reject("no_hand")
    if method == "background":
        border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]]).astype(np.float32)
        level = float(np.median(border))
        spread = 1.4826 * float(np.median(np.abs(border - level)))
        hand = (np.abs(smooth.astype(np.float32) - level) > max(MIN_CONTRAST / 2, 5 * spread)).astype(np.uint8) * 255
    else:
        if "otsu" not in shared:
            threshold, bright = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
            shared["otsu"] = threshold, bright, np.count_nonzero(border) > border.size / 2
        threshold, bright, dark_hand = shared["otsu"]
        hand = cv2.bitwise_not(bright) if dark_hand else bright
        if not dark_hand:  # a lit hand over a dark background (the unit): its far fingers get less light
            hand = dim_parts.grow(smooth, hand, threshold,
                                  DIM_FINGERS_HYSTERESIS if method == "dim_fingers" else HYSTERESIS, shared)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    hand = cv2.morphologyEx(hand, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hand, connectivity=8, ltype=cv2.CV_16U)
    # (16-bit labels: a working image, long side 320, holds at most about 25,600 separate blobs)
    if count <= 1:
        raise reject("no_hand")
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    order = np.argsort(areas)[::-1]
    largest = areas[order[0]] / hand.size
    if largest < MIN_HAND_AREA * 0.25:
        raise reject("no_hand")
    second_big = len(order) > 1 and areas[order[1]] >= SECOND_HAND_AREA * areas[order[0]]
    if second_big and areas[order[1]] / hand.size > MIN_HAND_AREA * 0.5:
        # A second hand has a palm too; background clutter (cloth folds, glare) is thin or ragged.
        first_radius = palm_circle.largest(np.where(labels == order[0] + 1, 255, 0).astype(np.uint8))[1]
        second_radius = palm_circle.largest(np.where(labels == order[1] + 1, 255, 0).astype(np.uint8))[1]
        if second_radius >= 0.6 * first_radius:
            raise reject("two_hands")
    mask = cv2.compare(labels, int(order[0] + 1), cv2.CMP_EQ)  # 255 on the hand, 0 elsewhere
    hand_area = int(areas[order[0]])
    if hand_area < mask.size:
        inside_sum = float(cv2.sumElems(cv2.bitwise_and(smooth, mask))[0])
        outside_mean = (float(cv2.sumElems(smooth)[0]) - inside_sum) / (mask.size - hand_area)
        contrast = abs(inside_sum / hand_area - outside_mean)
    else:
        contrast = 0.0
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


def _outline(mask: np.ndarray) -> np.ndarray:
    """The largest outline of ``mask`` as (N, 2) float32 points."""
    contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
    if not contours:
        return np.zeros((0, 2), np.float32)
    return max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float32)


def _solidity(contour: np.ndarray) -> float:
    """Outline area over its convex hull's area: 1 for a convex blob, about 0.6-0.95 for hands."""
    outline = contour.reshape(-1, 1, 2).astype(np.int32)
    hull_area = cv2.contourArea(cv2.convexHull(outline))
    return float(cv2.contourArea(outline) / hull_area) if hull_area > 0 else 1.0


def _quality(sharpness, contrast, area, alignment, shape) -> float:
    """A 0..1 score for choosing the best of several frames: sharp, contrasted, well-sized, valleys found."""
    q = min(1.0, sharpness / 3.0) * min(1.0, contrast / 60.0)
    q *= min(1.0, area / 0.12) * (1.0 if area < 0.45 else 0.8)
    q *= 1.0 if alignment == "valleys" else 0.7
    q *= 1.0 if len(shape.tips) == 5 else 0.85
    return float(max(0.0, min(1.0, q)))
