"""Templates and the 1:N matcher: format checks, threshold and margin decisions, enrollment, loading the model once."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from vendor_node.hand import recognition
from vendor_node.assets import model_set
from vendor_node.config import ASSETS_DIR, Config
from vendor_node.errors import HandRejected, RecognitionError
from vendor_node.hand.model import Embedder
from vendor_node.hand.recognition import (MAX_TEMPLATE_BYTES, Features, Gallery, Recognizer, Template,
                                     TEMPLATE_VERSION)


def palm_roi(person: int, sample: int) -> np.ndarray:
    """A self-drawn palm ROI: ``person`` fixes the lines, ``sample`` moves them a little and adds noise."""
    rng = np.random.default_rng(person)
    canvas = np.full((160, 160), 150, np.uint8)
    for _ in range(14):
        center = tuple(int(v) for v in rng.integers(0, 160, 2))
        axes = tuple(int(v) for v in rng.integers(20, 100, 2))
        cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, float(rng.uniform(60, 200)), 70,
                    int(rng.integers(1, 4)))
    noise_rng = np.random.default_rng([person, sample, 5])
    dx, dy = (0, 0) if sample == 0 else noise_rng.integers(-3, 4, 2)
    angle = 0.0 if sample == 0 else float(noise_rng.uniform(-3, 3))
    matrix = cv2.getRotationMatrix2D((79.5, 79.5), angle, 1.0)
    matrix[:, 2] += (dx, dy)
    moved = cv2.warpAffine(canvas, matrix, (160, 160), borderMode=cv2.BORDER_REFLECT)[16:144, 16:144]
    moved = cv2.GaussianBlur(moved, (3, 3), 0).astype(np.float32) + noise_rng.normal(0, 3, (128, 128))
    return np.clip(moved, 0, 255).astype(np.uint8)


GABOR_DIR = ASSETS_DIR / "palm-gabor-1"  # these tests are about palm codes: the palm-code model, active or not


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(Embedder.load(GABOR_DIR))


def features(recognizer, person, sample) -> Features:
    return recognizer.features_from_roi(palm_roi(person, sample), np.linspace(0.1, 1, 23, dtype=np.float32))


def template(recognizer, person) -> bytes:
    return recognizer.enroll_features([features(recognizer, person, 0)]).template


@pytest.fixture(scope="module")
def gallery(recognizer) -> Gallery:
    return Gallery.from_templates({f"emp-{p}": template(recognizer, p) for p in range(1, 6)})


# --- templates ----------------------------------------------------------------
def test_template_is_small_and_round_trips(recognizer):
    f = features(recognizer, 1, 0)
    data = recognizer.enroll_features([f]).template
    assert len(data) <= MAX_TEMPLATE_BYTES
    parsed = Template.from_bytes(data)
    assert np.array_equal(parsed.code, f.codes[0])
    assert np.array_equal(parsed.valid, f.valid[0])
    assert np.allclose(parsed.geometry, f.geometry, atol=1e-3)
    assert parsed.images_used == 1 and parsed.feature_id == recognizer.feature_id


def test_truncated_template_is_refused(recognizer):
    data = template(recognizer, 1)
    with pytest.raises(RecognitionError, match=r"truncated \(100 bytes"):
        Template.from_bytes(data[:100])
    with pytest.raises(RecognitionError, match="truncated"):
        Template.from_bytes(data[:5])


def test_template_with_another_version_is_refused(recognizer):
    data = bytearray(template(recognizer, 1))
    data[4] = TEMPLATE_VERSION + 2
    body = bytes(data[:-4])
    data = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(RecognitionError, match=f"version {TEMPLATE_VERSION + 2} is not supported"):
        Template.from_bytes(data)


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"XXXX" + d[4:], "not a palm template"),
    (lambda d: d[:200] + bytes([d[200] ^ 1]) + d[201:], "checksum mismatch"),
    (lambda d: d + b"\0", "trailing bytes"),
    (lambda d: "text", "expected bytes"),
])
def test_damaged_template_is_refused(recognizer, damage, message):
    with pytest.raises(RecognitionError, match=message):
        Template.from_bytes(damage(template(recognizer, 1)))


def test_gallery_names_the_employee_with_a_bad_template(recognizer):
    with pytest.raises(RecognitionError, match="template of emp-9: truncated"):
        Gallery.from_templates({"emp-1": template(recognizer, 1), "emp-9": b"VNPT\x01"})


def test_gallery_add_replace_remove(recognizer):
    g = Gallery.from_templates({"a": template(recognizer, 1)})
    g.add("b", template(recognizer, 2))
    g.add("a", template(recognizer, 3))  # replaces
    assert len(g) == 2 and sorted(g.ids) == ["a", "b"]
    g.remove("a")
    assert g.ids == ["b"] and len(g.codes.planes) == len(g.codes.masks) == 1
    with pytest.raises(KeyError):
        g.remove("nobody")


def test_templates_from_other_filters_are_refused(recognizer):
    t = Template.from_bytes(template(recognizer, 1))
    foreign = Template(t.code, t.valid, t.geometry, 1, recognizer.feature_id ^ 1).to_bytes()
    with pytest.raises(RecognitionError, match="another model's filters: re-enroll"):
        recognizer.identify(features(recognizer, 1, 1), Gallery.from_templates({"x": foreign}))


# --- matching -------------------------------------------------------------------
def test_score_matrix_separates_people(recognizer, gallery):
    probes = [features(recognizer, p, 1) for p in range(1, 6)]
    scores = recognizer.score_matrix(probes, gallery)
    assert scores.shape == (5, 5)
    genuine = np.diag(scores)
    impostor = scores[~np.eye(5, dtype=bool)]
    assert genuine.min() > impostor.max() + 0.1
    assert np.allclose(recognizer.scores(probes[0], [template(recognizer, p) for p in range(1, 6)]), scores[0])


def test_identify_matches_the_enrolled_person(recognizer, gallery):
    for person in range(1, 6):
        match = recognizer.identify(features(recognizer, person, 2), gallery)
        assert (match.employee_id, match.reason) == (f"emp-{person}", "match")
        assert match.score >= recognizer.threshold and match.score - match.runner_up >= recognizer.margin


def test_unknown_person_is_refused(recognizer, gallery):
    match = recognizer.identify(features(recognizer, 42, 1), gallery)
    assert match.employee_id is None and match.reason == "unknown"
    assert match.score < recognizer.threshold


def test_threshold_decides(recognizer, gallery):
    probe = features(recognizer, 3, 1)
    score = recognizer.identify(probe, gallery).score
    strict = Recognizer(recognizer.embedder, threshold=min(1.0, score + 0.01), margin=0.0)
    assert strict.identify(probe, gallery).reason == "unknown"
    lenient = Recognizer(recognizer.embedder, threshold=score - 0.01, margin=0.0)
    assert lenient.identify(probe, gallery).employee_id == "emp-3"


def test_margin_over_the_runner_up_decides(recognizer):
    pair = Gallery.from_templates({"emp-3": template(recognizer, 3), "emp-4": template(recognizer, 4)})
    probe = features(recognizer, 3, 1)
    first = recognizer.identify(probe, pair)
    gap = first.score - first.runner_up
    wide = Recognizer(recognizer.embedder, threshold=recognizer.threshold, margin=gap + 0.01)
    assert wide.identify(probe, pair) == recognition.Match(None, first.score, first.runner_up, "ambiguous")
    narrow = Recognizer(recognizer.embedder, threshold=recognizer.threshold, margin=gap - 0.01)
    assert narrow.identify(probe, pair).employee_id == "emp-3"


def test_a_tie_is_never_a_payer(recognizer):
    same = template(recognizer, 3)
    twins = Gallery.from_templates({"emp-3": same, "emp-3-again": same, "emp-4": template(recognizer, 4)})
    no_margin = Recognizer(recognizer.embedder, threshold=recognizer.threshold, margin=0.0)
    match = no_margin.identify(features(recognizer, 3, 1), twins)
    assert match.employee_id is None and match.reason == "ambiguous"
    assert match.score == pytest.approx(match.runner_up)


def test_empty_gallery_is_unknown(recognizer):
    assert recognizer.identify(features(recognizer, 1, 1), Gallery()).reason == "unknown"


def test_identify_searches_a_large_gallery(recognizer, gallery):
    """The coarse pass keeps only a few candidates: the right one must survive among many others."""
    big = Gallery.from_templates({f"emp-{p}": template(recognizer, p) for p in range(1, 41)})
    match = recognizer.identify(features(recognizer, 17, 1), big)
    assert match.employee_id == "emp-17"


# --- enrollment -----------------------------------------------------------------
def test_enroll_keeps_consistent_images_and_masks_unstable_cells(recognizer):
    found = [features(recognizer, 7, s) for s in range(4)] + [features(recognizer, 8, 0)]
    enrollment = recognizer.enroll_features(found)
    assert enrollment.used == [0, 1, 2, 3]
    assert enrollment.rejected == [(4, "inconsistent")]
    parsed = Template.from_bytes(enrollment.template)
    assert parsed.images_used == 4 and len(enrollment.template) <= MAX_TEMPLATE_BYTES
    single = Template.from_bytes(recognizer.enroll_features([found[0]]).template)
    assert parsed.valid.sum() <= single.valid.sum()


def test_enrolling_a_palm_that_cannot_match_is_refused(recognizer, monkeypatch):
    roi = palm_roi(5, 0)
    roi[:, 24:] = 128  # most of the ROI is background fill: too few cells could ever be compared
    flat = recognizer.features_from_roi(roi)
    monkeypatch.setattr(recognizer, "features", lambda image: flat)
    with pytest.raises(HandRejected, match="Too little of your palm") as caught:
        recognizer.enroll([np.zeros((480, 640), np.uint8)])
    assert caught.value.reason == "too_little_palm"
    assert recognizer.enroll_features([flat]).template  # evaluation still gets a (useless) template


def test_enroll_counts(recognizer):
    with pytest.raises(RecognitionError, match="1 to 5 images, got 0"):
        recognizer.enroll([])
    with pytest.raises(RecognitionError, match="1 to 5 images, got 6"):
        recognizer.enroll_features([features(recognizer, 1, 0)] * 6)


def test_enroll_from_frames_reports_rejected_images(recognizer):
    synthetic = pytest.importorskip("vendor_node.sim.drawn_hands")
    frames = [synthetic.draw_hand(11, s) for s in range(3)] + [synthetic.blank_frame()]
    enrollment = recognizer.enroll(frames)
    assert (3, "no_hand") in enrollment.rejected
    assert 0 < len(enrollment.used) <= 3
    with pytest.raises(HandRejected, match="none of the 1 enrollment images"):
        recognizer.enroll([synthetic.blank_frame()])
    gallery = Gallery.from_templates({"eleven": enrollment.template,
                                      "twelve": recognizer.enroll([synthetic.draw_hand(12, 0)]).template})
    match = recognizer.identify(synthetic.draw_hand(11, 7), gallery)
    assert match.score > recognizer.identify(synthetic.draw_hand(13, 7), gallery).score


# --- configuration and loading ------------------------------------------------------
def test_model_is_loaded_once(monkeypatch):
    loads = []
    real_load = Embedder.load.__func__

    def counting_load(cls, assets_dir):
        loads.append(assets_dir)
        return real_load(cls, assets_dir)

    monkeypatch.setattr(Embedder, "load", classmethod(counting_load))
    r = Recognizer.from_config(Config())
    assert len(loads) == len(model_set(ASSETS_DIR).all)  # each shipped model once
    g = Gallery.from_templates({"a": r.enroll_features([r.features_from_roi(palm_roi(1, 0))]).template})
    for sample in range(3):
        r.identify(r.features_from_roi(palm_roi(1, sample)), g)
    assert len(loads) == len(model_set(ASSETS_DIR).all)


def test_threshold_and_margin_come_from_config_or_manifest(recognizer):
    assert recognizer.threshold == recognizer.embedder.manifest["decision"]["threshold"]
    assert recognizer.margin == recognizer.embedder.manifest["decision"]["margin"]
    cfg = Config().replace(recognition={"threshold": 0.9, "margin": 0.05})
    r = Recognizer(recognizer.embedder, cfg.recognition.threshold, cfg.recognition.margin)
    assert (r.threshold, r.margin) == (0.9, 0.05)


def test_popcount_fallback_for_numpy_1_agrees():
    from vendor_node.hand import bit_search, palmcode

    words = np.random.default_rng(0).integers(0, 2**63, (7, 16), dtype=np.uint64) | np.uint64(1 << 63)
    want = np.array([[bin(int(w)).count("1") for w in row] for row in words])
    assert np.array_equal(bit_search.popcount_by_table(words), want)
    assert np.array_equal(bit_search.popcount(words), want)


@pytest.mark.handdata
def test_held_out_real_palms_are_told_apart(recognizer, handdata):
    """Six people the model never trained on: each second photo must pick its own first photo."""
    import csv

    held = recognizer.embedder.manifest["training"]["held_out_subjects"]["coep_dev"]
    with open(handdata / "coep_dev" / "manifest.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    by_subject: dict[str, list[str]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row["path"])
    people = [s for s in held if len(by_subject.get(s, [])) >= 2][:6]
    assert len(people) >= 4

    def frame(path):
        return cv2.imread(str(handdata / "coep_dev" / path), cv2.IMREAD_GRAYSCALE)

    gallery = Gallery.from_templates({s: recognizer.enroll([frame(by_subject[s][0])]).template for s in people})
    right = sum(recognizer.identify(frame(by_subject[s][1]), gallery).employee_id == s for s in people)
    assert right >= len(people) - 1


def test_johnson_codes_measure_angular_distance():
    from vendor_node.hand import bit_search, palmcode

    codes = np.arange(6, dtype=np.uint8).reshape(1, 6)
    planes = palmcode.johnson_planes(codes)
    assert np.array_equal(palmcode.planes_to_code(planes), codes)
    for a in range(6):
        for b in range(6):
            hamming = int(np.sum(planes[:, 0, a] != planes[:, 0, b]))
            assert hamming == min(abs(a - b), 6 - abs(a - b))


def test_probe_variants_are_shifted_codes():
    from vendor_node.hand import bit_search, palmcode

    rng = np.random.default_rng(2)
    codes = rng.integers(0, 6, (2, 8, 8)).astype(np.uint8)
    valid = rng.random((2, 8, 8)) > 0.2
    offsets = palmcode.shifts(2)
    planes, masks, what = palmcode.probe_variants(codes, valid, offsets, 2)
    assert len(what) == len(planes) == 2 * len(offsets) and what[0] == (0, 0, 0)
    for v, (r, dy, dx) in enumerate(what):
        want_planes = palmcode.shift_cells(palmcode.johnson_planes(codes[r]), dy, dx, False)
        want_mask = palmcode.shift_cells(valid[r], dy, dx, False)
        assert np.array_equal(planes[v], palmcode.pack_cells(want_planes))
        assert np.array_equal(masks[v], palmcode.pack_cells(want_mask))
    # A code matches its own shifted copy perfectly at the right shift, and a small overlap counts as no match.
    g_planes = palmcode.pack_cells(palmcode.johnson_planes(palmcode.shift_cells(codes[0], 1, -2, 0))[None])
    g_masks = palmcode.pack_cells(palmcode.shift_cells(valid[0], 1, -2, False)[None])
    d = bit_search.variant_distances(planes, masks, g_planes, g_masks, min_bits=10)[:, 0]
    assert d[what.index((0, 1, -2))] == 0.0
    assert bit_search.distances(planes, masks, g_planes, g_masks, min_bits=10_000)[0] == 1.0


def test_enrollment_replaces_refused_and_disagreeing_presentations(recognizer):
    """One bad frame cannot spoil a template: a refused frame and a frame of another hand are each replaced
    by a new presentation, and the template is built from frames that all agree."""
    from vendor_node.hand.enrollment import enroll_presentations
    synthetic = pytest.importorskip("vendor_node.sim.drawn_hands")

    frames = iter([synthetic.draw_hand(21, 0), synthetic.blank_frame(), synthetic.draw_hand(22, 0),
                   synthetic.draw_hand(21, 1), synthetic.draw_hand(21, 2), synthetic.draw_hand(21, 3)])
    told = []
    checked = enroll_presentations(recognizer, lambda: next(frames), wanted=3, max_presentations=6, tell=told.append)
    assert checked.used == [0, 3, 4]
    assert checked.replaced == [(1, "no_hand"), (2, "disagrees")]
    assert checked.agreement >= recognizer.threshold
    assert len(told) == 2 and told[0].endswith(".")
    gallery = Gallery.from_templates({"21": checked.template,
                                      "22": recognizer.enroll([synthetic.draw_hand(22, 1)]).template})
    assert recognizer.identify(synthetic.draw_hand(21, 5), gallery).employee_id == "21"


def test_enrollment_gives_up_when_the_presentations_never_agree(recognizer):
    from vendor_node.hand.enrollment import enroll_presentations
    synthetic = pytest.importorskip("vendor_node.sim.drawn_hands")

    people = iter(range(30, 40))
    with pytest.raises(HandRejected) as refused:
        enroll_presentations(recognizer, lambda: synthetic.draw_hand(next(people), 0), wanted=2, max_presentations=4)
    assert refused.value.reason == "inconsistent"
