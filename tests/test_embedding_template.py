"""The embedding template and score every unit and the calibration share (issue 9's contract)."""
import numpy as np
import pytest

from vendor_node.hand.model import embedding_scores, embedding_template


def test_template_is_int8_of_127_times_the_unit_vector():
    e = np.array([3.0, -4.0, 0.0, 0.0], np.float32)
    q = embedding_template(e)
    assert q.dtype == np.int8
    assert q.tolist() == [76, -102, 0, 0]  # round(127 * 0.6), round(-127 * 0.8)


def test_template_of_a_zero_vector_is_zero_and_scores_zero():
    q = embedding_template(np.zeros(128, np.float32))
    assert not q.any()
    assert embedding_scores(q, np.ones((2, 128), np.int8)).tolist() == [0.0, 0.0]


def test_scores_are_the_cosine_of_the_int8_templates():
    rng = np.random.default_rng(0)
    gallery = np.stack([embedding_template(v) for v in rng.normal(size=(50, 128))])
    probe = embedding_template(rng.normal(size=128))
    got = embedding_scores(probe, gallery)
    a, b = probe.astype(np.float64), gallery.astype(np.float64)
    want = b @ a / (np.linalg.norm(b, axis=1) * np.linalg.norm(a))
    assert got.shape == (50,) and np.allclose(got, want, atol=1e-6)
    assert embedding_scores(gallery[7], gallery)[7] == pytest.approx(1.0, abs=1e-6)
