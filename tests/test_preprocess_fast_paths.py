"""The faster pieces of preprocessing give what the plain ones gave (issue 8: preprocessing CPU), on drawn hands;
scripts/palm_squares.py checks the same on the real photo sets (every square, refusal, ROI and measure)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vendor_node.errors import HandRejected
from vendor_node.hand import dim_parts, frame_edge, hand_geometry, palm_circle, palm_square, preprocess
from vendor_node.hand.preprocess import extract_hand
from vendor_node.sim import drawn_hands as synthetic

_DRAWN_POSES = [{}, {"rotation": 25.0}, {"scale": 1.8, "shift": (0.0, -0.02)}, {"light_falloff": 1.5, "scale": 1.8},
                {"pegs": True}, {"background": "light", "sleeve": True}]


def test_finger_widths_sampled_at_once_match_a_step_by_step_scan():
    def scan(mask, point, direction, limit):  # one step at a time until the hand or the frame ends
        total = 0.0
        for sign in (1.0, -1.0):
            t = 0.0
            while t < limit:
                x, y = (int(round(v)) for v in point + sign * (t + 1.0) * direction)
                if not (0 <= x < mask.shape[1] and 0 <= y < mask.shape[0]) or mask[y, x] == 0:
                    break
                t += 1.0
            total += t
        return total + 1.0

    mask = np.zeros((120, 160), np.uint8)
    cv2.ellipse(mask, (80, 60), (50, 20), 30, 0, 360, 255, -1)
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        points = rng.uniform([0, 0], [160, 120], (40, 2)).astype(dtype)
        points[:4] = [[80.5, 60.5], [0.0, 0.0], [159.5, 119.5], [30.5, 60.0]]  # halves, corners
        angles = rng.uniform(0, np.pi, 40)
        directions = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(dtype)
        directions[:4] = [[-0.6, 0.8], [1.0, 0.0], [0.0, -1.0], [0.6, 0.8]]
        for limit in (0.0, 7.0, 25.5):
            expected = [scan(mask, p, d, limit) for p, d in zip(points, directions)]
            assert hand_geometry._run_widths(mask, points, directions, limit).tolist() == expected


def test_the_circle_past_the_heel_from_distances_near_the_palm_is_the_whole_frames(monkeypatch):
    def whole_frame(mask, center, radius, up, valleys):  # every pixel's distance, the whole frame scored
        h, w = mask.shape
        pad = int(palm_circle.PALM_BEYOND_FRAME * min(h, w)) + 1
        extended = cv2.copyMakeBorder(cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE),
                                      1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        dist = cv2.distanceTransform(extended, cv2.DIST_L2, 5)[pad + 1:pad + 1 + h, pad + 1:pad + 1 + w]
        _, loc = palm_circle._best_circle(dist, (0, 0, w, h), center, radius, up, valleys)
        found = float(dist[loc[1], loc[0]])
        return (center, radius) if found <= radius else (np.array(loc, dtype=np.float32), found)

    compared = []
    near_the_palm = palm_circle.past_heel

    def both(*args):
        compared.append((near_the_palm(*args), whole_frame(*args)))
        return compared[-1][0]

    monkeypatch.setattr(palm_circle, "past_heel", both)
    # (a close-up's square hangs from the finger valleys where their palm's width is seen whole; the circle past the
    # heel is what places it otherwise, as for a whole-hand photo)
    monkeypatch.setattr(frame_edge, "square_below_valleys", lambda *args: None)
    for person in range(6):  # near hands whose heel leaves the frame
        try:
            extract_hand(synthetic.draw_hand(person, 0, scale=2.2, shift=(0.0, 0.12), spread=1.0))
        except HandRejected:
            pass
    assert len(compared) >= 3
    for (near_center, near_radius), (center, radius) in compared:
        assert np.array_equal(near_center, center) and near_radius == pytest.approx(radius, rel=1e-6)


def test_partial_sort_percentile_and_median_are_numpys():
    rng = np.random.default_rng(3)
    for size in (9, 10, 11, 40, 1001, 1002):
        values = rng.gamma(2.0, 0.4, size).astype(np.float32)
        expected = None if size < 10 else pytest.approx(float(np.percentile(values, 90)), rel=1e-6)
        assert palm_square._percentile90(values) == expected
        assert palm_square._median(values) == np.median(values)


@pytest.mark.parametrize("pose", _DRAWN_POSES, ids=lambda pose: ",".join(pose) or "upright")
def test_dim_fingers_are_grown_as_a_plain_pixel_reading_grows_them(pose):
    def plain(smooth, hand, threshold, fraction):  # every pixel read with numpy, as before it was made faster
        background = smooth[hand == 0]
        level = float(np.sort(background)[(background.size - 1) // 2])  # the lower median
        weak = smooth > level + fraction * (threshold - level)
        count, labels = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
        touching = np.unique(labels[(hand > 0) & weak])
        grown = np.isin(labels, touching[touching > 0])
        filled = np.zeros_like(hand)
        cv2.drawContours(filled, cv2.findContours(hand, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], -1, 255, -1)
        return np.where((grown & ~((filled > 0) & (hand == 0))) | (hand > 0), 255, 0).astype(np.uint8)

    smooth = cv2.GaussianBlur(cv2.resize(synthetic.draw_hand(4, 1, **pose), (320, 240), interpolation=cv2.INTER_AREA),
                              (5, 5), 0)
    threshold, hand = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    shared: dict = {}  # the frame's two readings: the second reuses the first's background level and gaps
    for fraction in (preprocess.HYSTERESIS, preprocess.DIM_FINGERS_HYSTERESIS, preprocess.HYSTERESIS):
        expected = plain(smooth, hand, threshold, fraction)
        assert np.array_equal(dim_parts.grow(smooth, hand, threshold, fraction), expected)
        assert np.array_equal(dim_parts.grow(smooth, hand, threshold, fraction, shared), expected)


@pytest.mark.parametrize("person", range(4))
@pytest.mark.parametrize("pose", _DRAWN_POSES, ids=lambda pose: ",".join(pose) or "upright")
def test_a_second_reading_that_stops_early_stops_only_where_it_would_not_be_used(person, pose):
    """The second reading of a close-up is kept only when all three valleys place the square: stopped early, it
    gives nothing exactly where the whole reading places it otherwise, and the same hand where it places it so."""
    frame = synthetic.draw_hand(person, 2, **pose)
    work = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    for method in ("otsu", "dim_fingers"):
        try:
            whole = preprocess._hand_in(frame, work, 2.0, method)
        except HandRejected:
            whole = None
        try:
            early = preprocess._hand_in(frame, work, 2.0, method, valleys_only=True)
        except HandRejected:
            early = None
        if whole is None or whole.alignment != "valleys":
            assert early is None
        else:
            assert np.array_equal(early.square, whole.square) and np.array_equal(early.roi, whole.roi)


@pytest.mark.parametrize("pose", _DRAWN_POSES, ids=lambda pose: ",".join(pose) or "upright")
def test_a_reading_cut_later_is_the_reading_cut_at_once(pose):
    """The first reading's palm square is cut only once the other reading has had its chance: the same Hand."""
    frame = synthetic.draw_hand(5, 3, **pose)
    work = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    for method in ("otsu", "dim_fingers"):
        try:
            at_once = preprocess._hand_in(frame, work, 2.0, method)
        except HandRejected as refusal:
            at_once = refusal.reason
        try:
            alignment, finish = preprocess._hand_in(frame, work, 2.0, method, deferred=True)
            later = finish()
            assert later.alignment == alignment
        except HandRejected as refusal:
            later = refusal.reason
        if isinstance(at_once, str):
            assert later == at_once
        else:
            assert np.array_equal(later.square, at_once.square) and np.array_equal(later.roi, at_once.roi)
            assert np.array_equal(later.geometry, at_once.geometry) and later.measures == at_once.measures



def test_fingertips_refined_at_once_are_the_tips_refined_one_by_one():
    from vendor_node.hand import handshape

    def one_by_one(contour, dist_all, tip, radius):  # as each tip was refined before
        index = handshape.nearest(contour, tip)
        reach = max(2, int(0.4 * radius))
        window = np.arange(index - reach, index + reach + 1) % len(contour)
        return int(window[np.argmax(dist_all[window])])

    mask = np.zeros((240, 320), np.uint8)
    cv2.ellipse(mask, (160, 150), (60, 45), 0, 0, 360, 255, -1)
    for angle in (-70, -35, 0, 35, 80):  # five fingers
        tip = (int(160 + 110 * np.sin(np.radians(angle))), int(150 - 110 * np.cos(np.radians(angle))))
        cv2.line(mask, (160, 150), tip, 255, 14)
    contour = preprocess._outline(mask)
    center = np.array([160.0, 150.0], np.float32)
    dist_all = np.linalg.norm(contour - center, axis=1)
    rng = np.random.default_rng(2)
    tips = [contour[k] + rng.normal(0, 3, 2).astype(np.float32) for k in rng.choice(len(contour), 6, replace=False)]
    tips.append(contour[0])  # a tip at the outline's start: its window wraps round
    for radius in (3.0, 40.0):
        refined = handshape._refine_tips(contour, dist_all, tips, radius)
        assert [index for index, _ in refined] == [one_by_one(contour, dist_all, t, radius) for t in tips]
        assert all(np.array_equal(point, contour[index]) for index, point in refined)
    assert handshape._refine_tips(contour, dist_all, [], 40.0) == []


@pytest.mark.parametrize("pose", _DRAWN_POSES + [{"scale": 2.4}], ids=lambda pose: ",".join(pose) or "upright")
def test_shallow_defects_left_out_early_are_only_those_never_taken_for_a_valley(pose):
    from vendor_node.hand import outline_defects

    mask = preprocess._segment(cv2.resize(synthetic.draw_hand(7, 2, **pose), (320, 240),
                                          interpolation=cv2.INTER_AREA))[0]
    poly = preprocess._outline(mask)
    hull = np.sort(cv2.convexHull(poly.reshape(-1, 1, 2).astype(np.int32), returnPoints=False).reshape(-1))
    defects = cv2.convexityDefects(poly.reshape(-1, 1, 2).astype(np.int32), hull.reshape(-1, 1))
    h, w = mask.shape
    on_border = lambda p: (p[0] <= 1) | (p[1] <= 1) | (p[0] >= w - 2) | (p[1] >= h - 2)  # noqa: E731
    border, n, expected = on_border(poly.T), len(poly), []
    for row in defects.reshape(-1, 4):  # one defect at a time, unfiltered, as before
        s, e = row[0], row[1]
        arc = np.arange(s, e + 1) if e >= s else np.r_[np.arange(s, n), np.arange(0, e + 1)]
        split = len(arc) >= 3 and border[arc][1:-1].any()
        expected += [d for d in outline_defects.split_at_border(poly, row[None], on_border)
                     if split or d[3] >= 4.0]
    found = list(outline_defects.split_at_border(poly, defects, on_border, 4.0))
    assert len(found) == len(expected) <= len(list(outline_defects.split_at_border(poly, defects, on_border)))
    for a, b in zip(found, expected):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
