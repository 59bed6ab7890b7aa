"""Templates v2, the gallery as one int8 matrix per model, the threshold by gallery size, the guard for embeddings.

Synthetic int8 vectors throughout (no model needed): the scores must be exactly the contract's cosine of the
int8 templates (model.embedding_scores), whatever the gallery's history of adds and removes.
"""
from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

from vendor_node.config import Config, parse_config
from vendor_node.errors import ConfigError, RecognitionError
from vendor_node.hand.decision import DecisionPolicy, threshold_at_fmr
from vendor_node.hand.gallery import Gallery, parse_template
from vendor_node.hand.model import embedding_scores, embedding_template
from vendor_node.hand.template_guard import TemplateGuard, guard_id_of_template, is_guarded
from vendor_node.hand.templates import (MAX_EMBEDDING_TEMPLATE_BYTES, EmbeddingTemplate, Template, model_tag,
                                        template_version)

TAG = model_tag("palm-embed-1")


def vectors(n: int, seed: int = 0, dim: int = 128) -> np.ndarray:
    return np.array([embedding_template(v) for v in np.random.default_rng(seed).normal(size=(n, dim))])


def blobs(q: np.ndarray, tag: int = TAG) -> list[bytes]:
    return [EmbeddingTemplate(v, tag).to_bytes() for v in q]


# --- templates v2 -----------------------------------------------------------------
def test_an_embedding_template_names_its_model_and_fits_256_bytes():
    q = vectors(1)[0]
    data = EmbeddingTemplate(q, TAG, images_used=3).to_bytes()
    assert len(data) == 152 <= MAX_EMBEDDING_TEMPLATE_BYTES and template_version(data) == 2
    parsed = parse_template(data)
    assert isinstance(parsed, EmbeddingTemplate) and np.array_equal(parsed.vector, q)
    assert (parsed.model_tag, parsed.images_used, parsed.guard_id) == (TAG, 3, 0)
    assert model_tag("palm-embed-1") != model_tag("palm-embed-2")
    with pytest.raises(RecognitionError, match="over the 256 byte limit"):
        EmbeddingTemplate(np.zeros(240, np.int8), TAG).to_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\0", "trailing bytes"),
    (lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:], "checksum mismatch"),
    (lambda d: d[:5] + b"\x07" + d[6:], "kind 7"),
    (lambda d: b"VNPG" + d[4:], "header says guarded"),
])
def test_a_damaged_v2_template_is_refused_by_name(damage, message):
    data = damage(blobs(vectors(1))[0])
    with pytest.raises(RecognitionError, match=message):
        Gallery.from_rows(["emp-7"], [data])
    with pytest.raises(RecognitionError, match=f"template of emp-7: .*{message}"):
        Gallery.from_templates({"emp-7": data})


def test_v1_palm_codes_still_parse_beside_v2():
    code = np.random.default_rng(1).integers(0, 6, (32, 32)).astype(np.uint8)
    v1 = Template(code, np.ones((32, 32), bool), np.zeros(0, np.float32), 1, 1234).to_bytes()
    gallery = Gallery.from_templates({"old": v1, "new": blobs(vectors(1))[0]})
    assert isinstance(parse_template(v1), Template) and len(gallery) == 2
    assert gallery.counts() == {"palm-code": 1, TAG: 1} and gallery.ids == ["old", "new"]


# --- the gallery ----------------------------------------------------------------------
def test_scores_are_the_contract_cosine_after_adds_and_removes():
    q = vectors(600)
    gallery = Gallery.from_rows([f"e{i}" for i in range(500)], blobs(q[:500]))
    for i in range(0, 500, 7):
        gallery.remove(f"e{i}")
    for i in range(500, 600):
        gallery.add(f"e{i}", blobs(q[i:i + 1])[0])
    gallery.add("e3", blobs(q[599:600])[0])  # a replacement
    bank = gallery.embeddings[TAG]
    probe = vectors(1, seed=9)[0]
    want = {eid: float(s) for eid, s in zip(bank.ids, embedding_scores(probe, bank.vectors))}
    live = {f"e{i}" for i in range(600) if i >= 500 or i % 7} | {"e3"}
    assert set(bank.ids) == live and len(gallery) == len(live)
    got = bank.scores(probe)
    rows = {f"e{i}": q[i] for i in range(600)} | {"e3": q[599]}
    exact = embedding_scores(probe, np.array([rows[e] for e in bank.ids]))
    assert np.allclose(got, exact, atol=1e-6) and np.allclose(got, [want[e] for e in bank.ids], atol=1e-6)
    with pytest.raises(KeyError):
        gallery.remove("e0")


def test_bulk_rows_equal_one_by_one():
    q = vectors(300, seed=3)
    ids = [f"p{i}" for i in range(300)]
    bulk = Gallery.from_rows(ids, blobs(q))
    single = Gallery()
    for employee_id, blob in zip(ids, blobs(q)):
        single.add(employee_id, blob)
    probe = vectors(1, seed=4)[0]
    assert bulk.ids == single.ids
    assert np.array_equal(bulk.embeddings[TAG].scores(probe), single.embeddings[TAG].scores(probe))
    with pytest.raises(RecognitionError, match="id given twice"):
        Gallery.from_rows(["a", "a"], blobs(q[:2]))


def test_gallery_memory_is_under_1_mb_per_1000_templates():
    ids = [f"employee-{i:06d}" for i in range(10_000)]
    rows = blobs(vectors(10_000, seed=5))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    gallery = Gallery.from_rows(ids, rows)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(gallery) == 10_000
    assert held / 10 < 1024 * 1024, f"{held / 10 / 1024:.0f} KiB per 1,000 templates"


# --- the threshold by gallery size -------------------------------------------------------
def test_threshold_follows_the_calibrated_fmr_for_the_gallery_size():
    decision = {"threshold": 0.5, "margin": 0.05, "min_threshold": 0.42,
                "fmr_points": [[1e-2, 0.40], [1e-4, 0.50], [1e-6, 0.60], [1e-9, 0.75]]}
    policy = DecisionPolicy(decision, max_wrong_payer=1e-3)
    assert policy.threshold_for(10) == pytest.approx(0.50)  # fmr 1e-4: a point
    assert policy.threshold_for(100) == pytest.approx(0.55)  # fmr 1e-5: halfway in log10
    assert policy.threshold_for(1000) == pytest.approx(0.60)
    assert policy.threshold_for(10**7) == pytest.approx(0.75)  # beyond the last point: the strictest measured
    assert policy.threshold_for(1) == pytest.approx(0.45) and policy.threshold_for(0) == pytest.approx(0.45)
    assert DecisionPolicy(decision, max_wrong_payer=0.1).threshold_for(1) == pytest.approx(0.42)  # the floor
    assert threshold_at_fmr(decision["fmr_points"], 1e-3) == pytest.approx(0.45)
    assert DecisionPolicy(decision, threshold=0.7).threshold_for(10**6) == 0.7  # configured wins ...
    assert DecisionPolicy(decision, threshold=0.3).threshold_for(10) == 0.42  # ... never below the floor
    assert DecisionPolicy({"threshold": 0.69, "margin": 0.05}).threshold_for(10**5) == 0.69  # palm codes: fixed


def test_max_wrong_payer_is_a_checked_setting():
    assert Config().recognition.max_wrong_payer == 1e-3
    assert parse_config("[recognition]\nmax_wrong_payer = 1e-4\n").recognition.max_wrong_payer == 1e-4
    with pytest.raises(ConfigError, match="recognition.max_wrong_payer"):
        parse_config("[recognition]\nmax_wrong_payer = 0.5\n")


# --- the template guard for embeddings -------------------------------------------------------
def test_guarded_embeddings_score_exactly_as_clear_ones():
    q, probe = vectors(200, seed=6), vectors(1, seed=7)[0]
    guard = TemplateGuard(os.urandom(32))
    guarded = [guard.protect(b) for b in blobs(q)]
    assert all(is_guarded(g) and guard_id_of_template(g) == guard.guard_id and len(g) == 152 for g in guarded)
    assert [guard.reveal(g) for g in guarded] == blobs(q)
    clear_bank = Gallery.from_rows(range(200), blobs(q)).embeddings[TAG]
    bank = Gallery.from_rows(range(200), guarded).embeddings[TAG]
    assert bank.guard_id == guard.guard_id
    assert np.array_equal(bank.scores(guard.protect_vector(probe)), clear_bank.scores(probe))
    other = TemplateGuard(os.urandom(32))
    noise = Gallery.from_rows(range(200), [other.protect(b) for b in blobs(q)]).embeddings[TAG]
    assert np.abs(noise.scores(guard.protect_vector(probe))).max() < 0.5  # another fleet's templates: unrelated


def test_renewal_moves_both_kinds_without_images():
    old, new = TemplateGuard(os.urandom(32)), TemplateGuard(os.urandom(32))
    code = np.random.default_rng(2).integers(0, 6, (32, 32)).astype(np.uint8)
    v1 = Template(code, np.ones((32, 32), bool), np.zeros(4, np.float32), 1, 99).to_bytes()
    clear = blobs(vectors(50, seed=8)) + [v1]
    renewed = old.renew_many([old.protect(t) for t in clear], new)
    assert [new.reveal(t) for t in renewed] == clear
    assert all(guard_id_of_template(t) == new.guard_id for t in renewed)
    with pytest.raises(RecognitionError, match="another template guard"):
        new.renew_many([old.protect(clear[0])], old)
