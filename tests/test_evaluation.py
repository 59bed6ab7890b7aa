"""`vendor-node eval`: the metric maths on known score lists, folder reading, and whole runs on drawn hands."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vendor_node.sim import drawn_hands as synthetic
from vendor_node.errors import DatasetError
from vendor_node.hand.evaluation import evaluate, format_table, load_dataset
from vendor_node.hand.evaluation_metrics import decide, det_points, eer, fnmr_at_fmr, open_set_rates
from vendor_node.hand.preprocess import extract_hand


# --- metric maths ---------------------------------------------------------------
def test_eer_of_separated_scores_is_zero():
    assert eer([0.8, 0.9, 0.95], [0.1, 0.2, 0.3]) == 0.0


def test_eer_of_identical_distributions_is_one_half():
    scores = np.linspace(0, 1, 101)
    assert eer(scores, scores) == pytest.approx(0.5, abs=0.01)


def test_eer_with_one_overlap():
    # 10 genuine, 10 impostor; one impostor above one genuine: at the crossing both rates are 10%.
    genuine = [0.5] + [0.9] * 9
    impostor = [0.1] * 9 + [0.6]
    assert eer(genuine, impostor) == pytest.approx(0.1)


def test_eer_matches_gaussian_theory():
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(2, 1, 20000), rng.normal(-2, 1, 20000)
    assert eer(genuine, impostor) == pytest.approx(0.02275, abs=0.003)  # Phi(-2)


def test_fnmr_at_fmr_picks_the_threshold_that_keeps_fmr_under_target():
    impostor = np.arange(1000) / 1000.0  # FMR(t) = share >= t
    genuine = np.array([0.9985, 0.9995, 0.5, 0.9999])
    fnmr, reliable = fnmr_at_fmr(genuine, impostor, 1e-3)
    assert fnmr == pytest.approx(0.25)  # only 0.5 falls below the 0.999 threshold
    assert not reliable  # 1000 impostors cannot show 1e-3 (need 3000)
    _, reliable = fnmr_at_fmr(genuine, np.zeros(3000), 1e-3)
    assert reliable


def test_det_points_run_from_all_accepted_to_all_rejected():
    fmr, fnmr = det_points([0.7, 0.8], [0.1, 0.75])
    assert fmr[0] == 1.0 and fnmr[0] == 0.0 and fmr[-1] == 0.0 and fnmr[-1] == 1.0
    assert np.all(np.diff(fmr) <= 0) and np.all(np.diff(fnmr) >= 0)


def test_decide_applies_threshold_and_margin():
    assert decide(np.array([0.9, 0.5]), 0.8, 0.1) == 0
    assert decide(np.array([0.7, 0.5]), 0.8, 0.1) == -1  # unknown
    assert decide(np.array([0.9, 0.85]), 0.8, 0.1) == -1  # ambiguous
    assert decide(np.array([0.9]), 0.8, 0.1) == 0


def test_open_set_rates():
    mated = [(np.array([0.9, 0.1]), 0), (np.array([0.95, 0.2]), 1), (np.array([0.5, 0.4]), 0)]
    nonmated = [np.array([0.1]), np.array([0.95]), np.array([0.3])]
    rates = open_set_rates(mated, nonmated, 0.8, 0.1)
    assert rates["fnir"] == pytest.approx(2 / 3) and rates["wrong_subject"] == pytest.approx(1 / 3)
    assert rates["fpir"] == pytest.approx(1 / 3)


# --- reading folders -----------------------------------------------------------
def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(tmp_path / "nowhere")


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path)


def test_problems_are_reported_and_reading_goes_on(tmp_path):
    _write(tmp_path / "alice" / "1.png", synthetic.draw_hand(1, 0, (120, 160)))
    _write(tmp_path / "alice" / "2.png", synthetic.draw_hand(1, 1, (120, 160)))
    _write(tmp_path / "bob" / "1.png", synthetic.draw_hand(2, 0, (120, 160)))
    (tmp_path / "alice" / "notes.txt").write_text("not a hand")
    _write(tmp_path / "loose.png", synthetic.blank_frame((64, 64)))
    dataset = load_dataset(tmp_path)
    assert [(s.subject, s.path.name) for s in dataset] == [("alice", "1.png"), ("alice", "2.png"), ("bob", "1.png")]
    text = "\n".join(dataset.problems)
    assert "notes.txt: not an image" in text and "loose.png: not inside a subject folder" in text
    assert "subject bob has a single image" in text


def test_manifest_groups_and_capture_days(tmp_path):
    for name in ("a/1.png", "a/2.png", "b/1.png"):
        _write(tmp_path / name, synthetic.blank_frame((64, 64)))
    (tmp_path / "manifest.csv").write_text(
        "path,subject,extra,captured\n"
        "a/1.png,a,palmar,2010:11:26 12:11:32\n"
        "a/2.png,a,palmar,\n"
        "b/1.png,b,dorsal,2010-11-27 09:00:00\n"
        "c/9.png,c,palmar,\n"
    )
    dataset = load_dataset(tmp_path)
    assert dataset.has_captured
    assert [(s.subject, s.extra, s.captured is not None) for s in dataset] == [
        ("a", "palmar", True), ("a", "palmar", False), ("b", "dorsal", True)]
    assert any("c/9.png does not exist" in p for p in dataset.problems)


def test_manifest_without_subject_column_is_refused(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,who\nx.png,a\n")
    with pytest.raises(DatasetError, match="missing column.*subject"):
        load_dataset(tmp_path)


# --- whole runs ----------------------------------------------------------------
class _CorrelationRecognizer:
    """A simple, honest matcher for testing the bookkeeping: correlation of blurred palm ROIs."""

    threshold, margin = 0.5, 0.05

    def features(self, image):
        roi = extract_hand(image).roi
        small = cv2.resize(cv2.GaussianBlur(roi, (0, 0), 2), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        small -= small.mean()
        return small.ravel() / np.linalg.norm(small)

    def enroll_features(self, found):
        class Enrollment:
            template = np.mean(found, axis=0)
        return Enrollment

    def score_matrix(self, probes, gallery):
        return np.array([[float(p @ t) for t in gallery.values()] for p in probes])

    def identify(self, features, gallery):
        return self.score_matrix([features], gallery)[0]


def _drawn_dataset(root, people=4, samples=3, size=(240, 320)):
    for person in range(people):
        for sample in range(samples):
            _write(root / f"p{person}" / f"{sample}.png", synthetic.draw_hand(person, sample, size))


def test_evaluate_on_drawn_hands(tmp_path):
    _drawn_dataset(tmp_path)
    _write(tmp_path / "p0" / "9_blank.png", synthetic.blank_frame((240, 320)))  # a probe that fails to acquire
    (tmp_path / "p1" / "9_broken.png").write_bytes(b"not really a png")
    report = evaluate(_CorrelationRecognizer(), load_dataset(tmp_path), enroll_n=1, make_gallery=dict)
    v, ident = report["verification"], report["identification"]
    assert v["genuine"] == 4 * 2 and v["impostor"] == 4 * 2 * 3
    assert report["failure_reasons"] == {"no_hand": 1}
    assert report["failure_to_acquire"] == pytest.approx(1 / 13, abs=1e-4)
    assert any("9_broken.png: not readable" in p for p in report["problems"])
    assert ident["mated_probes"] == 9 and ident["rank1"] == 1.0
    assert ident["rank1_counting_fta"] == pytest.approx(8 / 9, abs=1e-4)
    assert v["eer"] < 0.2
    assert report["latency_ms"]["features"]["count"] == 12
    table = format_table(report)
    assert "EER" in table and "failure to acquire" in table


def test_evaluate_enrolls_the_first_images_and_counts_by_capture_day(tmp_path):
    _drawn_dataset(tmp_path, people=3, samples=3)
    rows = ["path,subject,extra,captured"]
    for person in range(3):
        for sample in range(3):
            day = 1 if sample < 2 else 2
            rows.append(f"p{person}/{sample}.png,p{person},palmar,2024:01:0{day} 10:00:00")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    report = evaluate(_CorrelationRecognizer(), load_dataset(tmp_path), enroll_n=2, make_gallery=dict)
    assert report["verification"]["genuine"] == 3  # one probe per person: the third image, a day later
    days = report["by_capture_day"]
    assert days["different_days"]["genuine"] == 3 and days["same_day"]["genuine"] == 0
    report = evaluate(_CorrelationRecognizer(), load_dataset(tmp_path), enroll_n=1, make_gallery=dict)
    days = report["by_capture_day"]
    assert days["same_day"]["genuine"] == 3 and days["different_days"]["genuine"] == 3


def _model_present() -> bool:
    from vendor_node.config import ASSETS_DIR

    from vendor_node.assets import active_manifest_path
    from vendor_node.errors import ModelError

    try:
        return active_manifest_path(ASSETS_DIR).is_file()
    except ModelError:
        return False


@pytest.mark.skipif(not _model_present(), reason="no model in firmware_assets yet")
def test_eval_command_end_to_end(tmp_path, capsys):
    from vendor_node.cli import main

    data = tmp_path / "hands"
    _drawn_dataset(data, people=4, samples=2, size=(480, 640))
    report_path = tmp_path / "out" / "report.json"
    assert main(["eval", "--dataset", str(data), "--enroll", "1", "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["verification"]["genuine"] == 4 and report["identification"]["rank1"] is not None
    assert (tmp_path / "out" / "report.det.png").is_file()
    assert "EER" in capsys.readouterr().out


def test_eval_command_on_a_missing_folder_fails_clearly(tmp_path, capsys):
    from vendor_node.cli import main

    assert main(["eval", "--dataset", str(tmp_path / "nope"), "--report", str(tmp_path / "r.json")]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_policy_projection_grows_with_the_number_enrolled():
    from vendor_node.hand.evaluation_metrics import policy_projection

    rng = np.random.default_rng(1)
    genuine, impostor = rng.normal(0.85, 0.03, 500), rng.normal(0.6, 0.03, 5000)
    p = policy_projection(genuine, impostor, threshold=0.72)
    assert p["fmr_counted"] == 0.0 and 0 < p["fmr_gaussian_fit"] < 1e-4  # 4 sd: about 3e-5
    assert p["stranger_accepted_of_1000"] > p["stranger_accepted_of_100"] > 0
    assert p["false_refusal_after_second_try"] == pytest.approx(p["fnmr"] ** 2)


@pytest.mark.skipif(not _model_present(), reason="no model in firmware_assets yet")
def test_eval_without_matplotlib_keeps_the_report_and_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    from vendor_node.cli import main

    data = tmp_path / "hands"
    _drawn_dataset(data, people=2, samples=2, size=(480, 640))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    report_path = tmp_path / "report.json"
    assert main(["eval", "--dataset", str(data), "--report", str(report_path)]) == 1
    assert "pip install 'vendor-node[eval]'" in capsys.readouterr().err
    assert json.loads(report_path.read_text())["verification"]["genuine"] == 2


def test_eval_refuses_more_enrollment_images_than_the_unit_takes(tmp_path, capsys):
    from vendor_node.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--dataset", str(tmp_path), "--enroll", "9", "--report", str(tmp_path / "r.json")])
    assert exit_.value.code == 2 and "--enroll must be 1 to" in capsys.readouterr().err


@pytest.mark.handdata
@pytest.mark.skipif(not _model_present(), reason="no model in firmware_assets yet")
def test_eval_on_real_palm_photos(handdata, tmp_path):
    """Regression guard on the peg-guided palm set (loose bounds: the measured figures are in the report)."""
    from vendor_node.cli import main

    report_path = tmp_path / "coep.json"
    assert main(["eval", "--dataset", str(handdata / "coep_dev"), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["failure_to_acquire"] <= 0.03
    assert report["verification"]["eer"] < 0.05 and report["identification"]["rank1"] > 0.9


@pytest.mark.skipif(not _model_present(), reason="no model in firmware_assets yet")
def test_eval_robustness_prints_one_line_per_probe_change(tmp_path, capsys):
    from vendor_node.cli import main
    from vendor_node.hand.robustness import TRANSFORMS

    data = tmp_path / "hands"
    _drawn_dataset(data, people=3, samples=2, size=(480, 640))
    report_path = tmp_path / "robust.json"
    assert main(["eval", "--dataset", str(data), "--robustness", "--report", str(report_path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(report_path.read_text())["robustness"]
    assert [row["probes"] for row in rows] == list(TRANSFORMS)
    for row in rows:
        assert row["mated_probes"] == 3 and 0 <= row["failed_to_acquire"] <= 3
        assert row["probes"] in out
    plain = rows[0]
    assert plain["failed_to_acquire"] == 0 and plain["rank1_counting_fta"] == 1.0


def test_robustness_changes_only_the_probes_and_keeps_the_frame_size():
    from vendor_node.hand.robustness import TRANSFORMS

    frame = synthetic.draw_hand(2, 0, (480, 640))
    for name, change in TRANSFORMS.items():
        if change is None:
            continue
        changed = change(frame, None)
        assert changed.dtype == np.uint8 and changed.ndim == 2, name
        if not name.startswith("close-up"):
            assert changed.shape == frame.shape, name
    # Zooming in crops the photo itself: the middle of a 1.3x probe is the photo's middle, enlarged.
    zoomed = TRANSFORMS["scaled 1.3"](frame, None)
    middle = cv2.resize(frame[240 - 185:240 + 185, 320 - 246:320 + 246], (640, 480))
    assert np.abs(zoomed.astype(int) - middle.astype(int)).mean() < 3


@pytest.mark.skipif(not _model_present(), reason="no model in firmware_assets yet")
def test_eval_debug_dir_draws_every_frame_and_names_refusals(tmp_path, capsys):
    from vendor_node.cli import main

    data = tmp_path / "hands"
    _drawn_dataset(data, people=2, samples=2, size=(480, 640))
    _write(data / "p0" / "9_blank.png", synthetic.blank_frame((480, 640)))
    debug = tmp_path / "debug"
    assert main(["eval", "--dataset", str(data), "--report", str(tmp_path / "r.json"), "--debug-dir", str(debug)]) == 0
    drawn = sorted(p.relative_to(debug).as_posix() for p in debug.rglob("*.png"))
    assert drawn == ["p0/0.png", "p0/1.png", "p0/9_blank.refused-no_hand.png", "p1/0.png", "p1/1.png"]
    picture = cv2.imread(str(debug / "p0" / "0.png"))
    assert picture.shape == (480, 640, 3)
    red = (picture[:, :, 2] > 200) & (picture[:, :, 1] < 60) & (picture[:, :, 0] < 60)
    assert red.sum() > 200  # the palm square is drawn


def test_exclude_tuned_leaves_out_the_people_the_hand_finding_was_tuned_on(tmp_path):
    from vendor_node.hand.dataset import tuned_subjects

    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "manifest.json").write_text(json.dumps({"preprocessing": {"tuned_on": {"hands": ["p0", "p2"]}}}))
    assert tuned_subjects(assets, tmp_path / "hands") == {"p0", "p2"}
    assert tuned_subjects(assets, tmp_path / "other") == set()
    (assets / "manifest.json").write_text(json.dumps({"training": {}}))
    with pytest.raises(DatasetError, match="preprocessing.tuned_on"):
        tuned_subjects(assets, tmp_path / "hands")
