"""`vendor-node eval --roi` and the session protocol on tiny generated folders; the embedding adapter's policy."""
from __future__ import annotations

import importlib.util
import json
import sys

import cv2
import numpy as np
import pytest

from vendor_node.config import ASSETS_DIR
from vendor_node.errors import DatasetError
from vendor_node.hand.evaluation import evaluate, load_dataset
from vendor_node.hand.evaluation_embedding import RoiInput, open_set, threshold_for_gallery

EMBEDDING_DIR = ASSETS_DIR / "palm-embed-1"


@pytest.fixture(scope="module")
def palm_data():
    spec = importlib.util.spec_from_file_location("palm_data", ASSETS_DIR.parent / "scripts" / "palm_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("palm_data", module)
    spec.loader.exec_module(module)
    return module


def _roi_folder(root, palm_data, palms=4, per_session=2, sessions=(1, 2)):
    """Synthetic palm ROIs laid out like tongji_dev: <palm>/s<session>_<k>.png with a session column."""
    rows = ["path,subject,extra,session"]
    rng = np.random.default_rng(0)
    for palm in range(palms):
        for session in sessions:
            for k in range(per_session):
                roi = palm_data.augment(palm_data.synthetic_palm(palm, 10 * session + k, seed=3), rng, 0.3)
                rel = f"{palm:03d}/s{session}_{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), roi)
                rows.append(f"{rel},{palm:03d},palm_roi,{session}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


class _CorrelationOnRois:
    """An honest stand-in matcher on ROIs: correlation of blurred pixels (keeps these tests model-free)."""

    threshold, margin = 0.3, 0.02

    def features_from_roi(self, roi):
        small = cv2.resize(cv2.GaussianBlur(roi, (0, 0), 2), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        small -= small.mean()
        return small.ravel() / np.linalg.norm(small)

    def features(self, image):  # whole frames would need hand finding: --roi must never get here
        raise AssertionError("hand finding ran on a palm region")

    def enroll_features(self, found):
        class Enrollment:
            template = np.mean(found, axis=0)
        return Enrollment

    def score_matrix(self, probes, gallery):
        return np.array([[float(p @ t) for t in gallery.values()] for p in probes])

    def identify(self, features, gallery):
        return self.score_matrix([features], gallery)[0]


def test_roi_folder_enrolls_from_the_first_session_and_probes_the_later_one(tmp_path, palm_data):
    _roi_folder(tmp_path, palm_data)
    dataset = load_dataset(tmp_path)
    assert dataset.has_session and {s.session for s in dataset} == {1, 2}
    report = evaluate(RoiInput(_CorrelationOnRois()), dataset, enroll_n=1, make_gallery=dict)
    v = report["verification"]
    # 4 palms enrolled from session 1 (first image); the second session-1 image is not probed.
    assert v["genuine"] == 4 * 2 and v["impostor"] == 4 * 2 * 3
    assert report["session_protocol"] is True and report["failure_to_acquire"] == 0
    for k in range(3, 7):
        assert f"fnmr_at_fmr_1e-{k:02d}" in v and v[f"fnmr_at_fmr_1e-{k:02d}_reliable"] is False  # 24 impostors
    assert report["identification"]["rank1"] == 1.0
    misses = report["identification"]["rank1_misses"]
    assert misses["count"] == 0 and misses["upper_95"] == pytest.approx(1 - 0.05 ** (1 / 8), abs=1e-3)
    opened = report["open_set"]
    assert opened["enrolled"] == 2 and opened["strangers"] == 2
    assert opened["accepted_right"]["of"] == 4 and opened["wrong_payer_stranger"]["of"] == 4


def test_roi_input_refuses_a_region_that_is_not_square_and_resizes_others(tmp_path, palm_data):
    _roi_folder(tmp_path, palm_data, palms=3, per_session=1)
    cv2.imwrite(str(tmp_path / "000" / "s2_0.png"), np.full((100, 128), 120, np.uint8))  # not square
    cv2.imwrite(str(tmp_path / "001" / "s2_0.png"), cv2.resize(palm_data.synthetic_palm(1, 20, 3), (256, 256)))
    report = evaluate(RoiInput(_CorrelationOnRois()), load_dataset(tmp_path), enroll_n=1, make_gallery=dict)
    assert report["failure_reasons"] == {"roi_not_square": 1}
    assert report["verification"]["genuine"] == 2


def test_a_session_that_is_not_a_number_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "1.png"), np.zeros((128, 128), np.uint8))
    (tmp_path / "manifest.csv").write_text("path,subject,session\na/1.png,a,first\n")
    with pytest.raises(DatasetError, match="line 2: session must be a whole number"):
        load_dataset(tmp_path)


def test_eval_roi_command_on_a_folder_of_whole_photos_says_why(tmp_path, capsys):
    from vendor_node.cli import main

    (tmp_path / "x").mkdir()
    cv2.imwrite(str(tmp_path / "x" / "1.png"), np.zeros((480, 640), np.uint8))
    cv2.imwrite(str(tmp_path / "x" / "2.png"), np.zeros((480, 640), np.uint8))
    report = tmp_path / "r.json"
    assert main(["eval", "--roi", "--dataset", str(tmp_path), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["failure_reasons"] == {"roi_not_square": 2}


@pytest.mark.skipif(not (EMBEDDING_DIR / "manifest.json").is_file(), reason="no learned model shipped yet")
def test_eval_command_measures_the_learned_model_on_rois(tmp_path, palm_data, capsys):
    from vendor_node.cli import main

    _roi_folder(tmp_path / "rois", palm_data, palms=5)
    report_path = tmp_path / "out" / "report.json"
    assert main(["eval", "--roi", "--model", str(EMBEDDING_DIR), "--dataset", str(tmp_path / "rois"),
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["model"]["model_id"] == "palm-embed-1" and report["roi_input"] is True
    assert report["verification"]["genuine"] == 10 and report["verification"]["impostor"] == 40
    manifest = json.loads((EMBEDDING_DIR / "manifest.json").read_text())
    assert report["identification"]["threshold"] == pytest.approx(threshold_for_gallery(manifest["decision"], 5))
    assert "FNMR @ FMR 1e-6" in capsys.readouterr().out


# --- the decision policy by gallery size and the open-set bookkeeping --------------------
DECISION = {"fmr_points": [[1e-2, 0.3], [1e-3, 0.4], [1e-4, 0.5], [1e-5, 0.6], [1e-6, 0.7]], "min_threshold": 0.45,
            "threshold": 0.7, "margin": 0.05}  # a whole decision block, as read_manifest requires


def test_threshold_follows_the_gallery_size_and_never_drops_below_the_floor():
    assert threshold_for_gallery(DECISION, 1000) == pytest.approx(0.7)  # 1e-3 / 1000 = 1e-6
    assert threshold_for_gallery(DECISION, 100) == pytest.approx(0.6)
    assert threshold_for_gallery(DECISION, 316) == pytest.approx(0.65, abs=1e-3)  # log10-interpolated
    assert threshold_for_gallery(DECISION, 1) == pytest.approx(0.45)  # 1e-3 would be 0.4: the floor holds


def test_open_set_counts_strangers_accepted_and_enrolled_refused():
    subjects = ["a", "b", "c", "d"]
    rows = []
    for mate in subjects:
        scores = np.array([0.9 if s == mate else 0.1 for s in subjects])
        rows.append((scores, subjects, mate))
    rows.append((np.array([0.95, 0.95, 0.95, 0.95]), subjects, "a"))  # ambiguous: refused or stranger turned away
    result = open_set(rows, lambda n: 0.5, 0.05, seed=1)
    assert result["enrolled"] == 2 and result["strangers"] == 2
    assert result["wrong_payer_stranger"]["count"] == 0 and result["wrong_payer_enrolled"]["count"] == 0
    assert result["accepted_right"]["count"] + result["refused"]["count"] == result["accepted_right"]["of"]


def test_excluding_trained_subjects_keeps_the_session_protocol(tmp_path, palm_data, capsys):
    """--exclude-trained rebuilds the data set: the session column must survive it (session 1 never probed)."""
    from vendor_node.cli import main

    _roi_folder(tmp_path / "rois", palm_data, palms=4)
    model = tmp_path / "model"
    import shutil
    shutil.copytree(ASSETS_DIR / "palm-gabor-1", model)  # a model folder (firmware_assets/ holds one per model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["training"]["subjects"]["rois"] = ["000"]
    (model / "manifest.json").write_text(json.dumps(manifest))
    report_path = tmp_path / "r.json"
    assert main(["eval", "--roi", "--model", str(model), "--exclude-trained", "--dataset", str(tmp_path / "rois"),
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["session_protocol"] is True and report["excluded_trained_subjects"] == ["000"]
    assert report["verification"]["genuine"] == 3 * 2  # 3 palms left, their 2 session-2 images each
