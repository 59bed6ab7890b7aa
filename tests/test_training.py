"""The learned model's training helpers: synthetic palms, person splits, calibration maths, the int8 export.

No TensorFlow needed except for the export test, which skips without it (the suite's venv has none).
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from vendor_node.config import ASSETS_DIR
from vendor_node.hand.model import embedding_scores, embedding_template

SCRIPTS = ASSETS_DIR.parent / "scripts"


def _load(name):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def palm_data():
    return _load("palm_data")


@pytest.fixture(scope="module")
def metrics():
    return _load("training_metrics")


def test_synthetic_palms_are_deterministic_and_identities_differ(palm_data):
    a = palm_data.synthetic_palm(3, 0, seed=1)
    assert a.shape == (128, 128) and a.dtype == np.uint8
    assert np.array_equal(a, palm_data.synthetic_palm(3, 0, seed=1))
    assert not np.array_equal(a, palm_data.synthetic_palm(3, 0, seed=2))
    same = palm_data.synthetic_palm(3, 1, seed=1).astype(float)
    other = palm_data.synthetic_palm(4, 0, seed=1).astype(float)
    corr = lambda x, y: float(np.corrcoef(x.ravel(), y.ravel())[0, 1])  # noqa: E731
    assert corr(a, same) > corr(a, other) + 0.2  # a sample's jitter is smaller than another identity


def test_augmentation_is_seeded_and_keeps_the_roi_shape(palm_data):
    roi = palm_data.synthetic_palm(0, 0)
    one = palm_data.augment(roi, np.random.default_rng(5))
    assert one.shape == roi.shape and one.dtype == np.uint8
    assert np.array_equal(one, palm_data.augment(roi, np.random.default_rng(5)))
    assert not np.array_equal(one, roi)


def test_person_split_keeps_both_hands_of_a_person_together(palm_data):
    palms = [f"{i:03d}" for i in range(300)]
    split = palm_data.split_palms(palms, seed=7, calibrate=60, test=90)
    assert split == palm_data.split_palms(palms, seed=7, calibrate=60, test=90)
    assert split != palm_data.split_palms(palms, seed=8, calibrate=60, test=90)
    assert (len(split["test"]), len(split["calibrate"]), len(split["train"])) == (90, 60, 150)
    assert sorted(split["train"] + split["calibrate"] + split["test"]) == palms
    side = {p: name for name, members in split.items() for p in members}
    for i in range(150):
        assert side[f"{2 * i:03d}"] == side[f"{2 * i + 1:03d}"]
    with pytest.raises(ValueError, match="cannot give"):
        palm_data.split_palms(palms[:10], seed=1, calibrate=6, test=6)


def test_training_scores_are_the_units_scores(metrics):
    rng = np.random.default_rng(1)
    templates = np.stack([embedding_template(v) for v in rng.normal(size=(20, 128))])
    matrix = metrics.template_scores(templates, templates)
    for i in (0, 7):
        assert np.allclose(matrix[i], embedding_scores(templates[i], templates), atol=1e-6)


def test_fmr_points_are_counted_where_measured_then_a_tail_fit(metrics):
    impostor = np.random.default_rng(2).normal(0, 0.1, 400_000)
    curve = metrics.fmr_points(impostor)
    assert curve["measured_down_to"] == 1e-5 and curve["calibration_impostors"] == 400_000
    assert curve["fmr_point_sources"][:4] == ["measured"] * 4 and set(curve["fmr_point_sources"][4:]) == {"tail fit"}
    thresholds = [t for _, t in curve["fmr_points"]]
    assert thresholds == sorted(thresholds)  # a lower FMR never needs a lower threshold
    for fmr, threshold in curve["fmr_points"][:4]:
        assert np.mean(impostor >= threshold) <= fmr
        assert np.mean(impostor >= threshold - 2e-3) > fmr * 0.5  # and not far above what is needed
    assert metrics.threshold_at(curve["fmr_points"], 10 ** -3.5) == pytest.approx(
        (thresholds[1] + thresholds[2]) / 2, abs=1e-6)


def test_session_protocol_enrolls_session_one_and_probes_session_two(metrics):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 128))
    palms, sessions, vectors = [], [], []
    for p in range(3):
        for s in (1, 2):
            for _ in range(2):
                palms.append(str(p))
                sessions.append(s)
                vectors.append(embedding_template(centres[p] + rng.normal(0, 0.3, 128)))
    run = metrics.session_protocol(np.stack(vectors), palms, sessions, threshold=0.5, margin=0.05)
    assert run["enrolled"] == 3 and run["probes"] == 6
    assert run["genuine"].size == 6 and run["impostor"].size == 12
    assert run["rank1"] == 1.0 and run["accepted_right"] == 6 and run["accepted_wrong"] == 0


def test_int8_export_has_int8_io_and_the_ops_tflite_214_runs():
    pytest.importorskip("tensorflow")
    palm_net = _load("palm_net")
    from vendor_node.hand.model import model_ops

    model = palm_net.build_embedder()
    data = palm_net.export_int8(model, [np.full((128, 128), v, np.uint8) for v in (40, 120, 200)])
    names = {op.name for op in model_ops(data)}
    assert names <= {"CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX", "RESHAPE", "FULLY_CONNECTED", "MAX_POOL_2D"}
    assert len(data) <= 1024 * 1024


def test_version_1_palms_are_still_palm_embed_1s_and_version_2_differs(palm_data):
    """palm-embed-1's manifest names its command: its generator must still draw the same pixels."""
    import hashlib
    drawn = b"".join(palm_data.synthetic_palm(i, k, 7).tobytes() for i in (0, 5) for k in (0, 3))
    assert hashlib.sha256(drawn).hexdigest() == "a83502a4e9b85b7701113810780fba80d3db19c459bf0bef4578376af1f92ec7"
    two = palm_data.synthetic_palm(5, 3, 7, version=2)
    assert two.shape == (128, 128) and two.dtype == np.uint8
    assert np.array_equal(two, palm_data.synthetic_palm(5, 3, 7, version=2))
    assert not np.array_equal(two, palm_data.synthetic_palm(5, 3, 7))


def test_version_2_samples_of_one_identity_are_closer_than_two_identities(palm_data):
    corr = lambda x, y: float(np.corrcoef(x.ravel(), y.ravel())[0, 1])  # noqa: E731
    same = [corr(palm_data.synthetic_palm(i, 0, 1, 2), palm_data.synthetic_palm(i, 1, 1, 2)) for i in range(6)]
    other = [corr(palm_data.synthetic_palm(i, 0, 1, 2), palm_data.synthetic_palm(i + 6, 0, 1, 2)) for i in range(6)]
    assert min(same) > max(other)


def test_session_augmentation_warps_smoothly_and_is_seeded(palm_data):
    roi = palm_data.synthetic_palm(2, 0, 3, 2)
    plain = palm_data.augment(roi, np.random.default_rng(9))
    warped = palm_data.augment(roi, np.random.default_rng(9), session=1.0)
    assert np.array_equal(warped, palm_data.augment(roi, np.random.default_rng(9), session=1.0))
    assert warped.shape == roi.shape and warped.dtype == np.uint8 and not np.array_equal(plain, warped)
    moved = palm_data.elastic(roi.astype(np.float32), np.random.default_rng(1), 2.0)
    assert 0 < float(np.abs(moved - roi).mean()) < 20  # a few pixels of stretch, not another palm


def test_a_phase_2_variant_starts_from_a_shared_pretraining(tmp_path):
    pytest.importorskip("tensorflow")
    palm_net = _load("palm_net")
    heads = lambda: [palm_net.CosFaceHead(16, 4, 1), palm_net.CosFaceHead(16, 6, 2)]  # noqa: E731
    model = palm_net.build_embedder(dim=16, dropout=0.5)
    first = palm_net.Trainer(model, heads(), [2, 2], 1e-3, tmp_path / "a.npz", weight_decay=0.01)
    rng = np.random.default_rng(0)
    batches = lambda phase, step: (rng.normal(0, 0.5, (4, 128, 128, 1)).astype(np.float32),  # noqa: E731
                                   np.array([0, 1, 2, 3], np.int32))
    log = first.run(batches, every=2, evaluate=lambda: {"eer": 0.5}, evaluate_every=2)
    assert [entry["calibration"] for entry in log] == [{"eer": 0.5}] * 2
    assert (tmp_path / "a-2.npz").is_file() and (tmp_path / "a-4.npz").is_file()
    other = palm_net.build_embedder(dim=16, dropout=0.5)
    second = palm_net.Trainer(other, heads(), [2, 2], 1e-3, tmp_path / "b.npz")
    second.start_from(tmp_path / "a-2.npz")
    assert second.step == 2
    pretrained = np.load(tmp_path / "a-2.npz")
    assert all(np.array_equal(v.numpy(), pretrained[f"arr_{i}"]) for i, v in enumerate(other.variables))
    with pytest.raises(SystemExit, match="another network"):
        palm_net.Trainer(palm_net.build_embedder(dim=32), heads(), [2, 2], 1e-3, tmp_path / "c.npz").start_from(
            tmp_path / "a-2.npz")


def test_hard_negative_batches_hold_whole_people_as_they_are_and_mirrored(palm_data):
    palms = ["010", "011", "040", "041", "100", "101"]  # three people, both hands each
    labels = np.repeat(np.arange(6), 20)
    by_class = {c: np.flatnonzero(labels == c) for c in range(6)}
    batch = palm_data.hard_negative_batch(palms, by_class, np.random.default_rng(3), people=2, per_class=3)
    assert batch == palm_data.hard_negative_batch(palms, by_class, np.random.default_rng(3), people=2, per_class=3)
    assert len(batch) == 2 * 2 * 2 * 3  # people x hands x (as is, mirrored) x images
    identities = {(int(labels[i]), mirrored) for i, mirrored in batch}
    people = {int(palms[c]) // 2 for c, _ in identities}
    assert len(people) == 2 and len(identities) == 8  # each person's two palms, both ways round
    for c, mirrored in identities:
        assert sum(1 for i, m in batch if labels[i] == c and m == mirrored) == 3


def test_batch_hard_loss_weighs_the_hardest_pairs_only():
    pytest.importorskip("tensorflow")
    palm_net = _load("palm_net")
    import tensorflow as tf
    labels = tf.constant([0, 0, 1, 1])
    apart = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(palm_net.batch_hard(apart, labels, 0.3)) == pytest.approx(0.0)  # cos 1 vs 0: beyond the margin
    close = tf.math.l2_normalize(tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, 1.0]]), axis=1)
    # every sample's other-class neighbour is nearer than its class mate: hardest negative - positive + margin
    c = float(close[2, 0])  # cos of (1, 0.1) with (1, 0); its cos with (0, 1) is sqrt(1 - c^2)
    s = (1 - c * c) ** 0.5
    expected = np.mean([c - 0 + 0.3, 1 - 0 + 0.3, c - s + 0.3, 1 - s + 0.3])
    assert float(palm_net.batch_hard(close, labels, 0.3)) == pytest.approx(expected, abs=1e-5)
    alone = tf.constant([0, 1, 2, 3])  # no same-class pair in the batch: nothing to weigh
    assert float(palm_net.batch_hard(apart, alone, 0.3)) == 0.0
