"""The drawn hands: deterministic, one person alike across samples, different people different."""
from __future__ import annotations

import numpy as np
import pytest

from vendor_node.sim import drawn_hands as synthetic
from vendor_node.hand.preprocess import extract_hand


def _signature(image) -> np.ndarray:
    import cv2

    roi = extract_hand(image).roi
    small = cv2.resize(cv2.GaussianBlur(roi, (0, 0), 2), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    return small.ravel() / np.linalg.norm(small)


def test_same_seeds_draw_the_same_frame():
    assert np.array_equal(synthetic.draw_hand(1, 2), synthetic.draw_hand(1, 2))
    assert not np.array_equal(synthetic.draw_hand(1, 2), synthetic.draw_hand(1, 3))


def test_frame_has_the_requested_size_and_type():
    image = synthetic.draw_hand(1, 0, size=(240, 320))
    assert image.shape == (240, 320) and image.dtype == np.uint8


def test_person_fixes_the_shape_and_sample_varies_the_pose():
    assert synthetic.person(4) == synthetic.person(4)
    assert synthetic.person(4) != synthetic.person(5)


def test_a_person_is_recognisable_and_people_are_distinguishable():
    """Even a crude ROI correlation separates genuine from impostor pairs on average."""
    people, samples = range(6), range(3)
    sig = {(p, s): _signature(synthetic.draw_hand(p, s)) for p in people for s in samples}
    genuine = [sig[p, a] @ sig[p, b] for p in people for a in samples for b in samples if a < b]
    impostor = [sig[p, 0] @ sig[q, 0] for p in people for q in people if p < q]
    assert np.median(genuine) > 0.6 and np.median(impostor) < 0.35
    assert np.mean(np.array(genuine)[:, None] > np.array(impostor)[None, :]) > 0.95


def test_unknown_background_is_a_clear_error():
    with pytest.raises(ValueError, match="background"):
        synthetic.draw_hand(1, 0, background="green")
