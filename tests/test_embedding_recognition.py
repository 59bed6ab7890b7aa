"""The shipped learned model end to end on drawn hands: templates, 1:N, the threshold by gallery size, the guard.

Skipped while firmware_assets/palm-embed-1 is not there; runs as soon as it is.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from vendor_node.config import ASSETS_DIR
from vendor_node.hand.gallery import Gallery, parse_template
from vendor_node.hand.model import Embedder, embedding_scores
from vendor_node.hand.recognition import Recognizer
from vendor_node.hand.template_guard import TemplateGuard
from vendor_node.hand.templates import EmbeddingTemplate, model_tag
from vendor_node.sim.drawn_hands import draw_hand

SHIPPED = ASSETS_DIR / "palm-embed-1"
PEOPLE = range(20, 28)
pytestmark = pytest.mark.skipif(not (SHIPPED / "manifest.json").is_file(),
                                reason="palm-embed-1 is not in firmware_assets yet")


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(Embedder.load(SHIPPED))


@pytest.fixture(scope="module")
def enrolled(recognizer) -> dict[str, bytes]:
    return {f"p{p}": recognizer.enroll([draw_hand(p, 0), draw_hand(p, 1)]).template for p in PEOPLE}


def test_templates_are_v2_of_the_shipped_model_and_at_most_256_bytes(recognizer, enrolled):
    for template in enrolled.values():
        parsed = parse_template(template)
        assert isinstance(parsed, EmbeddingTemplate) and parsed.model_tag == model_tag("palm-embed-1")
        assert len(template) <= 256 and parsed.vector.shape == (recognizer.embedder.manifest["embedding"]["dim"],)


def test_drawn_hands_are_found_and_a_stranger_is_refused(recognizer, enrolled):
    gallery = Gallery.from_templates(enrolled)
    for p in PEOPLE:
        match = recognizer.identify(draw_hand(p, 3), gallery)
        assert match.employee_id == f"p{p}" and match.model_id == "palm-embed-1", (p, match)
    assert recognizer.identify(draw_hand(90, 0), gallery).employee_id is None
    probe = recognizer.features(draw_hand(PEOPLE[0], 4))
    bank = gallery.embeddings[model_tag("palm-embed-1")]
    assert np.allclose(recognizer.scores(probe, gallery), embedding_scores(probe.vector, bank.vectors), atol=1e-6)


def test_the_threshold_rises_with_the_gallery(recognizer):
    sizes = [1, 100, 10_000, 1_000_000]
    thresholds = [recognizer.threshold_for(n) for n in sizes]
    assert thresholds == sorted(thresholds) and thresholds[-1] > thresholds[0]
    assert min(thresholds) >= recognizer.embedder.manifest["decision"]["min_threshold"]


def test_guarded_scores_equal_clear_scores(recognizer, enrolled):
    guard = TemplateGuard(os.urandom(32))
    probes = [recognizer.features(draw_hand(p, 5)) for p in PEOPLE]
    before = recognizer.score_matrix(probes, Gallery.from_templates(enrolled))
    recognizer.guard = guard
    try:
        after = recognizer.score_matrix(probes, Gallery.from_templates({k: guard.protect(t) for k, t in enrolled.items()}))
    finally:
        recognizer.guard = None
    np.testing.assert_array_equal(before, after)
