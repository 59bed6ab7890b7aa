"""The frame shrunk to the working size by area_shrink's block products is cv2's INTER_AREA shrink, pixel for pixel
(issue 8: preprocessing CPU); scripts/palm_squares.py checks the same on the real photo sets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vendor_node.hand import area_shrink
from vendor_node.sim import drawn_hands as synthetic


@pytest.mark.parametrize("size_in, size_out", [((1024, 768), (320, 240)), ((800, 600), (320, 240)),
                                               ((1600, 1200), (320, 240)), ((960, 720), (320, 240)),
                                               ((1000, 750), (320, 240)), ((640, 480), (320, 240)),
                                               ((333, 250), (320, 240)), ((1024, 700), (320, 219))])
def test_block_shrink_is_cv2s_area_shrink(size_in, size_out):
    rng = np.random.default_rng(size_in[0])
    frames = [cv2.resize(synthetic.draw_hand(person, 1, rotation=10.0 * person), size_in,
                         interpolation=cv2.INTER_LINEAR) for person in range(3)]
    frames.append(rng.integers(0, 256, size_in[::-1], dtype=np.uint8))  # every grey level, sharp steps
    frames.append(np.full(size_in[::-1], 255, np.uint8))  # saturated: no rounding above 255
    for frame in frames:
        expected = cv2.resize(frame, size_out, interpolation=cv2.INTER_AREA)
        assert np.array_equal(area_shrink.shrink(frame, size_out), expected)


def test_block_weights_are_the_area_overlaps():
    weights = area_shrink._weights(1024, 320)  # 16 pixels to 5, each output 3.2 pixels wide
    assert weights.shape == (16, 5)
    assert np.allclose(weights.sum(axis=0), 1.0) and np.allclose(weights.sum(axis=1), 5 / 16)
    assert weights[3, 0] == pytest.approx(0.2 / 3.2) and weights[3, 1] == pytest.approx(0.8 / 3.2)
    assert area_shrink._weights(640, 320) is None  # a whole factor: cv2's own fast path
    assert area_shrink._weights(1031, 320) is None  # a long period: cv2
