"""Near hands: the zoomed probes of `eval --robustness` stay within the photo, and a row of finger valleys through
the thumb's valley (a near hand's middle/ring valley hidden) no longer turns the palm square; on drawn hands."""
from __future__ import annotations

import numpy as np
import pytest

from vendor_node.hand import robustness
from vendor_node.hand.preprocess import extract_hand
from vendor_node.sim import drawn_hands as synthetic


def _turn(hand, size, rotation, shift, scale) -> float:
    """The palm square's turn (degrees) on the drawn hand's own canvas."""
    matrix = synthetic.canvas_to_frame(size, rotation, shift, scale)
    back = lambda point: np.linalg.solve(matrix[:, :2], np.asarray(point, float) - matrix[:, 2])  # noqa: E731
    top = back(hand.square[1]) - back(hand.square[0])
    return float(np.degrees(np.arctan2(top[1], top[0])))


@pytest.mark.parametrize("person", [6003, 6004])
def test_a_near_dimly_lit_hand_is_not_turned_by_a_row_through_the_thumbs_valley(person):
    """Close-ups lit from below (fingers dim, leaving the frame) where three valleys in a row span nearly two palm
    radii: the thumb's valley and two beyond a hidden one. The square keeps the upright hand's turn (before:
    21-25 degrees off)."""
    size, pose = (480, 640), {"rotation": 5.0, "shift": (0.0, 0.1), "scale": 1.8}
    upright = _turn(extract_hand(synthetic.draw_hand(person, 5, size, scale=1.0, rotation=5.0)), size, 5.0,
                    (0.0, 0.0), 1.0)
    for rotation in (-1.4, 13.8):
        pose["rotation"] = rotation
        hand = extract_hand(synthetic.draw_hand(person, 5, size, light_falloff=1.5, **pose))
        off = abs((_turn(hand, size, **pose) - upright + 180) % 360 - 180)
        assert off < 10.0, (rotation, off, hand.alignment)


def test_nearer_zooms_within_the_photo_and_keeps_the_palm_in_view():
    """A palm near the photo's right edge: the 1.5x window moves left just enough to stay inside the photo, so no
    fill (and no photo edge) shows in the frame; the palm stays in view, the arm leaves the frame's edge."""
    photo = synthetic.draw_hand(3, 0, (768, 1024), shift=(0.2, 0.0), rotation=-90.0)  # the arm leaves at the right
    center = extract_hand(photo).keypoints["roi_center"]
    moved = robustness._within_photo(center, 1.5, photo.shape)
    half_w, half_h = 1024 / 3, 768 / 3
    assert half_w <= moved[0] <= 1024 - half_w and half_h <= moved[1] <= 768 - half_h
    assert moved != tuple(center) and np.hypot(moved[0] - center[0], moved[1] - center[1]) < 0.2 * 1024
    near = robustness.nearer(1.5)(photo)
    fill = robustness._border_value(photo)
    assert np.count_nonzero(near[:, -3:] != fill) > 0.2 * 3 * 768  # the arm, not fill, at the frame's right edge
    hand = extract_hand(near)
    assert "wrist" in hand.keypoints and hand.keypoints["wrist"][0] > 0.9 * 1024


def test_zooming_out_keeps_its_centre():
    assert robustness._within_photo((900.0, 100.0), 0.7, (768, 1024)) == (900.0, 100.0)
