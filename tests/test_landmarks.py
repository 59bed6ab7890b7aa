"""The landmark path of palm finding: the square from landmark points, the model's hash check, the finder's
turns and refinement, and the choice between the landmark and the classical path (a fake reader)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vendor_node.assets import model_set
from vendor_node.errors import HandRejected, ModelError
from vendor_node.hand import palm_square
from vendor_node.hand.landmarks import (INPUT, QUARTER_TURNS, LandmarkFinder, LandmarkModel, Reading, SquareFit,
                                        read_landmark_manifest, square_from_landmarks, up_angle)
from vendor_node.hand.palm_finder import PalmFinder
from vendor_node.hand.preprocess import REASONS, extract_hand
from vendor_node.sim import drawn_hands

ASSETS = Path(__file__).resolve().parents[1] / "firmware_assets"
FOLDER = ASSETS / "hand-landmark"
FIT = SquareFit(1.0, 0.5)

# An upright right palm (fingers up) as the model reports it, in crop pixels: wrist, thumb, then each finger's
# knuckle and joints; only the wrist, the knuckles (5, 9, 13, 17) and the thumb's base matter to the square.
UPRIGHT = np.array([[112, 190], [140, 175], [155, 150], [165, 130], [172, 112],
                    [135, 110], [137, 80], [138, 60], [139, 45],
                    [112, 105], [112, 72], [112, 50], [112, 35],
                    [90, 108], [88, 78], [87, 58], [86, 44],
                    [70, 116], [65, 95], [62, 80], [60, 68]], dtype=np.float64)


def _turned(points: np.ndarray, degrees: float, scale: float, shift) -> np.ndarray:
    a = np.radians(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - 112.0) @ rotation.T * scale + np.asarray(shift, float)


# --- the square from landmark points ------------------------------------------
def test_square_lies_below_the_knuckles_with_its_top_towards_the_fingers():
    center, axis_x, side = square_from_landmarks(UPRIGHT, FIT)
    span = np.linalg.norm(UPRIGHT[17] - UPRIGHT[5])
    assert side == pytest.approx(span)
    knuckles_mid = (UPRIGHT[5] + UPRIGHT[17]) / 2
    assert center[1] > knuckles_mid[1]  # below the knuckles, towards the wrist (image y grows downwards)
    corners = palm_square.square_corners(center, axis_x, side)
    top, bottom = corners[:2].mean(axis=0), corners[2:].mean(axis=0)
    assert np.linalg.norm(top - knuckles_mid) < np.linalg.norm(bottom - knuckles_mid)


@pytest.mark.parametrize("degrees, scale", [(0, 1.0), (30, 1.0), (-30, 1.3), (90, 0.7), (180, 1.5)])
def test_square_follows_the_hand_turned_and_scaled(degrees, scale):
    base_center, base_axis, base_side = square_from_landmarks(UPRIGHT, FIT)
    moved = _turned(UPRIGHT, degrees, scale, (320, 240))
    center, axis_x, side = square_from_landmarks(moved, FIT)
    assert side == pytest.approx(base_side * scale, rel=1e-6)
    assert np.allclose(center, _turned(base_center[None], degrees, scale, (320, 240))[0], atol=1e-6)
    want = np.degrees(np.arctan2(base_axis[1], base_axis[0])) + degrees
    got = np.degrees(np.arctan2(axis_x[1], axis_x[0]))
    assert abs((got - want + 180) % 360 - 180) < 1e-6
    assert abs((np.degrees(up_angle(moved)) - degrees + 180) % 360 - 180) < 1e-6


def test_the_square_turns_towards_the_thumb_and_mirrored_for_a_left_hand():
    straight_center, straight_axis, _ = square_from_landmarks(UPRIGHT, FIT)
    _, right_axis, _ = square_from_landmarks(UPRIGHT, SquareFit(1.0, 0.5, 10.0))
    left = UPRIGHT.copy()
    left[:, 0] = 224 - left[:, 0]  # the same hand mirrored: a left palm
    _, left_axis, _ = square_from_landmarks(left, SquareFit(1.0, 0.5, 10.0))
    turn = lambda a, b: np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b))  # noqa: E731
    assert turn(straight_axis, right_axis) == pytest.approx(10.0)
    _, left_straight, _ = square_from_landmarks(left, FIT)
    assert turn(left_straight, left_axis) == pytest.approx(-10.0)


# --- the shipped model: manifest, hash check, interpreter ----------------------------------
def test_shipped_folder_is_hash_checked_and_names_its_licence_and_tuning_people():
    manifest = read_landmark_manifest(FOLDER)
    assert manifest["sha256"] == hashlib.sha256((FOLDER / manifest["model_file"]).read_bytes()).hexdigest()
    assert "Apache" in manifest["licence"] and (FOLDER / "LICENSE").is_file() and (FOLDER / "NOTICE").is_file()
    assert manifest["square"]["fitted_on"]  # the people the fit was tuned on, kept out of the figures


def test_models_json_landmarks_entry_turns_the_landmark_path_on(tmp_path):
    pytest.importorskip("ai_edge_litert")
    for name in ("palm-gabor-1", "hand-landmark"):
        shutil.copytree(ASSETS / name, tmp_path / name)
    (tmp_path / "models.json").write_text(json.dumps({"active": "palm-gabor-1", "landmarks": "hand-landmark"}))
    models = model_set(tmp_path)
    assert models.landmarks == tmp_path / "hand-landmark" and models.landmarks not in models.all
    finder = PalmFinder.from_assets(tmp_path)
    assert finder.landmarks is not None and finder.order == read_landmark_manifest(FOLDER).get("order")
    (tmp_path / "models.json").write_text(json.dumps({"active": "palm-gabor-1"}))
    assert PalmFinder.from_assets(tmp_path).landmarks is None  # no entry: the classical path alone


@pytest.fixture
def landmark_copy(tmp_path):
    copy = tmp_path / "hand-landmark"
    shutil.copytree(FOLDER, copy)
    return copy


def test_changed_model_file_is_refused(landmark_copy):
    manifest = read_landmark_manifest(landmark_copy)
    path = landmark_copy / manifest["model_file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* does not match .*refusing to run an unmeasured landmark model"):
        LandmarkModel.load(landmark_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: {k: v for k, v in m.items() if k != "square"}, "missing key 'square'"),
    (lambda m: {**m, "kind": "palm_code"}, "expected kind 'hand_landmark'"),
    (lambda m: {**m, "square": {"side_per_span": "wide", "drop_per_span": 0.5}}, "square.side_per_span"),
    (lambda m: {**m, "sure": 0.2, "presence_threshold": 0.5}, "presence_threshold <= sure"),
    (lambda m: {**m, "model_file": "../x.tflite"}, "model_file must be a file name"),
])
def test_malformed_landmark_manifest_is_refused(landmark_copy, change, message):
    path = landmark_copy / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(ModelError, match=message):
        LandmarkModel.load(landmark_copy)


def test_models_json_landmarks_entry_is_checked(tmp_path):
    for name in ("palm-gabor-1",):
        shutil.copytree(ASSETS / name, tmp_path / name)
    (tmp_path / "models.json").write_text(json.dumps({"active": "palm-gabor-1", "landmarks": "nowhere"}))
    with pytest.raises(ModelError, match="landmarks: no manifest.json"):
        model_set(tmp_path)
    (tmp_path / "models.json").write_text(json.dumps({"active": "palm-gabor-1", "landmarks": "palm-gabor-1"}))
    with pytest.raises(ModelError, match="is a matching model"):
        model_set(tmp_path)
    (tmp_path / "models.json").write_text(json.dumps({"active": "palm-gabor-1"}))
    assert model_set(tmp_path).landmarks is None


def test_real_model_reads_a_crop_with_one_thread():
    pytest.importorskip("ai_edge_litert")
    model = LandmarkModel.load(FOLDER)
    reading = model.read(np.full((INPUT, INPUT), 30, np.uint8))
    assert reading.points.shape == (21, 2) and 0.0 <= reading.presence <= 1.0 and 0.0 <= reading.right <= 1.0
    assert reading.presence < 0.5  # a blank frame holds no hand
    with pytest.raises(ModelError, match="expected a uint8 crop"):
        model.read(np.zeros((100, 100), np.uint8))


# --- the finder and the choice between the paths, through a fake reader ----------------
class FakeReader:
    """Sees an upright hand (UPRIGHT) with the given presence for each quarter turn index, in the order read."""

    def __init__(self, presences):
        self.presences = list(presences)
        self.crops: list[np.ndarray] = []

    def read(self, crop):
        assert crop.shape == (INPUT, INPUT) and crop.dtype == np.uint8
        self.crops.append(crop)
        presence = self.presences.pop(0) if self.presences else 0.0
        return Reading(UPRIGHT.copy(), presence, 0.9)


def test_finder_reads_once_when_sure_and_refines_when_not():
    frame = drawn_hands.draw_hand(3, 0)
    sure = LandmarkFinder(FakeReader([0.95]), FIT, refine="unsure")
    assert sure.find(frame) is not None and sure.runs == 1
    unsure = LandmarkFinder(FakeReader([0.7, 0.8]), FIT, refine="unsure")
    assert unsure.find(frame).presence == 0.8 and unsure.runs == 2
    always = LandmarkFinder(FakeReader([0.95, 0.95]), FIT, refine="always")
    always.find(frame)
    assert always.runs == 2
    with pytest.raises(ModelError, match="refine"):
        LandmarkFinder(FakeReader([]), FIT, refine="sometimes")


def test_finder_tries_other_turns_only_when_asked_and_remembers_the_one_that_found_a_hand():
    frame = drawn_hands.draw_hand(3, 0)
    finder = LandmarkFinder(FakeReader([0.1, 0.2, 0.95]), FIT, refine="never")
    assert finder.find(frame) is None and finder.runs == 1
    assert finder.find(frame, other_turns=True) is not None and finder.runs == 3
    assert finder.turn == 2  # the second of the other turns (1, 2, 3) found it: tried first from now on
    finder.remember_up(np.radians(-80))
    assert QUARTER_TURNS[finder.turn] == pytest.approx(-np.pi / 2)


def test_landmarks_first_when_the_model_is_sure():
    finder = LandmarkFinder(FakeReader([0.95]), FIT, refine="unsure")
    trace: dict = {}
    hand = PalmFinder(finder).find(drawn_hands.draw_hand(3, 0), trace)
    assert hand.alignment == "landmarks" and finder.runs == 1
    assert trace["method"] == "landmarks" and trace["roi_square"].shape == (4, 2)
    assert hand.side == "right" and hand.roi.shape == (palm_square.ROI_SIZE, palm_square.ROI_SIZE)


def test_classical_path_takes_a_frame_the_model_sees_no_hand_on_and_sets_the_turn():
    frame = drawn_hands.draw_hand(3, 0, rotation=88.0)
    finder = LandmarkFinder(FakeReader([0.1]), FIT)
    hand = PalmFinder(finder).find(frame)
    classical = extract_hand(frame)
    assert hand.alignment == classical.alignment == "valleys" and np.array_equal(hand.roi, classical.roi)
    assert finder.runs == 1  # the other turns are not tried for a frame the classical path found
    top = (hand.square[0] + hand.square[1]) / 2 - (hand.square[2] + hand.square[3]) / 2
    assert QUARTER_TURNS[finder.turn] == pytest.approx(QUARTER_TURNS[int(np.argmin(
        [abs(np.angle(np.exp(1j * (np.arctan2(top[0], -top[1]) - t)))) for t in QUARTER_TURNS]))])


def test_a_square_the_frame_cuts_falls_back_to_the_classical_path():
    class FarOff(FakeReader):
        def read(self, crop):
            reading = super().read(crop)
            return Reading(reading.points * 0.2 - 200, reading.presence, reading.right)  # far outside the crop
    finder = LandmarkFinder(FarOff([0.95]), FIT)
    assert PalmFinder(finder).find(drawn_hands.draw_hand(3, 0)).alignment == "valleys"


def test_a_frame_both_refuse_tells_the_classical_reason_after_the_other_turns():
    finder = LandmarkFinder(FakeReader([0.0] * 4), FIT)
    with pytest.raises(HandRejected) as caught:
        PalmFinder(finder).find(drawn_hands.blank_frame())
    assert caught.value.reason == "no_hand" and str(caught.value) == REASONS["no_hand"]
    assert finder.runs == 4  # the remembered turn, then the three others


def test_a_left_hand_is_mirrored_only_when_asked():
    class Left(FakeReader):
        def read(self, crop):
            reading = super().read(crop)
            return Reading(reading.points, reading.presence, 0.1)
    frame = drawn_hands.draw_hand(3, 0)
    plain = PalmFinder(LandmarkFinder(Left([0.95]), FIT)).find(frame)
    mirrored = PalmFinder(LandmarkFinder(Left([0.95]), FIT), mirror_left=True).find(frame)
    assert plain.side == mirrored.side == "left"
    assert np.array_equal(mirrored.roi, plain.roi[:, ::-1])


# --- classical first: the landmarks only where the classical path has no finger valleys --------------
def test_classical_first_reads_no_landmarks_when_the_valleys_place_the_square():
    finder = LandmarkFinder(FakeReader([0.95]), FIT)
    hand = PalmFinder(finder, order="classical_first").find(drawn_hands.draw_hand(3, 0))
    assert hand.alignment == "valleys" and finder.runs == 0


def test_classical_first_takes_the_landmarks_where_the_fingers_are_together():
    frame = drawn_hands.draw_fingers_together(3)
    assert extract_hand(frame).alignment == "axis"
    finder = LandmarkFinder(FakeReader([0.95]), FIT)
    assert PalmFinder(finder, order="classical_first").find(frame).alignment == "landmarks" and finder.runs == 1
    unsure = LandmarkFinder(FakeReader([0.1]), FIT)
    assert PalmFinder(unsure, order="classical_first").find(frame).alignment == "axis"
    assert unsure.runs == 1  # the classical square stands: no other turns for a frame it placed


def test_classical_first_tries_every_turn_on_a_refused_frame_then_tells_the_refusal():
    finder = LandmarkFinder(FakeReader([0.0] * 4), FIT)
    with pytest.raises(HandRejected) as caught:
        PalmFinder(finder, order="classical_first").find(drawn_hands.blank_frame())
    assert caught.value.reason == "no_hand" and finder.runs == 4
    with pytest.raises(ModelError, match="order"):
        PalmFinder(finder, order="whichever")


# --- real photos (skipped where ../shared/handdata is absent) -------------------------------
HANDDATA = Path(__file__).resolve().parents[1].parent / "shared" / "handdata"


@pytest.mark.skipif(not (HANDDATA / "coep_dev").is_dir(), reason="../shared/handdata is absent")
def test_real_palms_get_the_square_where_the_valleys_put_it():
    """On the tuning people's photos (manifest square.fitted_on) the landmark square lands on the classical
    one: the fit is what lets templates made by either path match each other."""
    pytest.importorskip("ai_edge_litert")
    from vendor_node.hand.dataset import load_dataset
    from vendor_node.images import read_grey

    finder = PalmFinder(LandmarkFinder.load(FOLDER))
    fitted = read_landmark_manifest(FOLDER)["square"]["fitted_on"]["coep_dev"]
    samples = [s for s in load_dataset(HANDDATA / "coep_dev") if s.subject in fitted][:12]
    offsets, turns = [], []
    for sample in samples:
        grey = read_grey(sample.path)
        classical = extract_hand(grey)
        reading = finder.landmarks.find(grey) or finder.landmarks.find(grey, other_turns=True)
        assert reading is not None and reading.presence >= 0.5
        hand = finder.hand_from(grey, reading)
        side = np.linalg.norm(classical.square[1] - classical.square[0])
        offsets.append(np.linalg.norm(hand.square.mean(axis=0) - classical.square.mean(axis=0)) / side)
        a, b = hand.square[1] - hand.square[0], classical.square[1] - classical.square[0]
        turns.append(abs(np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b))))
    assert np.median(offsets) < 0.15 and np.median(turns) < 8.0
    assert finder.landmarks.runs <= 2 * len(samples) + 3  # the remembered turn: about one read per photo
