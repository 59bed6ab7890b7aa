"""Near hands: the zoomed probes of `eval --robustness` stay within the photo, as a camera's frame does (a window
past the photo's edge showed that edge in the frame, cutting the arm short of the frame's edge); on drawn hands."""
from __future__ import annotations

import numpy as np

from vendor_node.hand import robustness
from vendor_node.hand.preprocess import extract_hand
from vendor_node.sim import drawn_hands as synthetic


def test_nearer_zooms_within_the_photo_and_keeps_the_palm_in_view():
    """A palm near the photo's right edge: the 1.5x window moves left just enough to stay inside the photo, so no
    fill (and no photo edge) shows in the frame; the palm stays in view, the arm leaves the frame's edge."""
    photo = synthetic.draw_hand(3, 0, (768, 1024), shift=(0.2, 0.0), rotation=-90.0)  # the arm leaves at the right
    center = extract_hand(photo).keypoints["roi_center"]
    moved = robustness.within_photo(center, 1.5, photo.shape)
    half_w, half_h = 1024 / 3, 768 / 3
    assert half_w <= moved[0] <= 1024 - half_w and half_h <= moved[1] <= 768 - half_h
    assert moved != tuple(center) and np.hypot(moved[0] - center[0], moved[1] - center[1]) < 0.2 * 1024
    near = robustness.nearer(1.5)(photo)
    fill = robustness._border_value(photo)
    assert np.count_nonzero(near[:, -3:] != fill) > 0.2 * 3 * 768  # the arm, not fill, at the frame's right edge
    hand = extract_hand(near)
    assert "wrist" in hand.keypoints and hand.keypoints["wrist"][0] > 0.9 * 1024


def test_zooming_out_keeps_its_centre():
    assert robustness.within_photo((900.0, 100.0), 0.7, (768, 1024)) == (900.0, 100.0)
