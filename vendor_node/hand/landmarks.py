"""A learned hand-landmark model (MediaPipe's, Apache-2.0) placing the palm square, hash-checked like every model.

Why: the classical path (preprocess.py) needs the finger valleys or the palm's outline; a near hand, a turned one
or a hand on a busy background loses them, and the square lands in the wrong spot. The landmark model reads the
knuckles directly. No hand detector runs (no time for one on a Pi): the whole frame is read, turned by the
quarter turn that last found a hand (the unit's camera is mounted once, so hands arrive the same way up), and
(by default) only when that reading is not sure is a tighter crop around it read again (MediaPipe's own tracking step).

The palm square's top edge runs along the index and little-finger knuckles (points 5 and 17); its side and its
drop below them, in knuckle spans, were fitted to where the classical path puts the square (manifest
``square``), so templates made by either path match each other.

``firmware_assets/hand-landmark/manifest.json`` names the file and its sha256; a changed file is refused
(ModelError). LiteRT or tflite_runtime is imported only in :meth:`LandmarkModel.load`; mediapipe never.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..assets import MANIFEST_NAME
from ..errors import ModelError
from .model import read_checked_manifest

__all__ = ["LandmarkModel", "LandmarkReader", "LandmarkFinder", "Reading", "SquareFit", "square_from_landmarks",
           "INPUT"]

INPUT = 224  # the model's input side (pixels)
MAX_MODEL_BYTES = 8 * 1024 * 1024
KIND = "hand_landmark"
QUARTER_TURNS = (0.0, np.pi / 2, np.pi, -np.pi / 2)  # the frame direction shown as "up" to the model
THUMB_BASE = 2  # the thumb's MCP joint: which side of the palm the thumb is on
WRIST, INDEX_KNUCKLE, MIDDLE_KNUCKLE, LITTLE_KNUCKLE = 0, 5, 9, 17
PALM_POINTS = (0, 1, 2, 5, 9, 13, 17)
REFINE = ("always", "unsure", "never")  # when a tighter crop around the first reading is read again
KEYPOINT_NAMES = {0: "wrist", 5: "knuckle_index", 9: "knuckle_middle", 13: "knuckle_ring", 17: "knuckle_little"}


@dataclass(frozen=True)
class Reading:
    """One reading of the model: 21 (x, y) points, hand presence 0..1 and the right-hand score 0..1."""

    points: np.ndarray  # (21, 2) float, in the pixels of whatever was read (crop or frame)
    presence: float
    right: float


class LandmarkReader(Protocol):
    """What the finder needs of a model: one INPUT x INPUT greyscale crop in, one Reading (crop pixels) out."""

    def read(self, crop: np.ndarray) -> Reading: ...


@dataclass(frozen=True)
class SquareFit:
    """The palm square in knuckle spans: its side, and how far its centre lies below the knuckles' midpoint."""

    side_per_span: float
    drop_per_span: float
    turn_deg: float = 0.0  # the square turned from the knuckle line, towards the thumb's side (mirrored for a
    # left hand: the little finger's knuckle sits lower than the index's on either hand)


class LandmarkModel:
    """The landmark interpreter, built once, one thread (a float model: RGB 0..1 in, points in input pixels out)."""

    def __init__(self, interpreter, manifest: dict, model_path: Path):
        self._interpreter = interpreter
        self.manifest = manifest
        self.model_path = model_path
        self._input = interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        names = manifest["outputs"]
        try:
            self._points, self._presence, self._right = (outputs[names[k]] for k in ("points", "presence", "right"))
        except KeyError as exc:
            raise ModelError(f"{model_path}: no output tensor {exc} (outputs: {sorted(outputs)})") from None
        fit = manifest["square"]
        self.fit = SquareFit(float(fit["side_per_span"]), float(fit["drop_per_span"]), float(fit.get("turn_deg", 0.0)))

    @classmethod
    def load(cls, folder: Path | str) -> "LandmarkModel":
        """Check the manifest and the file's sha256, then build the interpreter; ModelError naming what is wrong."""
        from .model import _make_interpreter  # the same LiteRT / tflite_runtime choice as the palm models

        folder = Path(folder)
        manifest = read_landmark_manifest(folder)
        model_path = folder / manifest["model_file"]
        try:
            size = model_path.stat().st_size
            if size > MAX_MODEL_BYTES:
                raise ModelError(f"{model_path}: {size} bytes is over the {MAX_MODEL_BYTES} byte limit")
            data = model_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{model_path}: landmark model file not found (named by {MANIFEST_NAME})") from None
        except OSError as exc:
            raise ModelError(f"{model_path}: cannot read: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest["sha256"].lower():
            raise ModelError(f"{model_path}: sha256 {digest} does not match {manifest['sha256']} in "
                             f"{folder / MANIFEST_NAME}; refusing to run an unmeasured landmark model")
        interpreter = _make_interpreter(data, model_path)
        shape = list(interpreter.get_input_details()[0]["shape"])
        if shape != [1, INPUT, INPUT, 3]:
            raise ModelError(f"{model_path}: input shape {shape}, expected [1, {INPUT}, {INPUT}, 3]")
        return cls(interpreter, manifest, model_path)

    def read(self, crop: np.ndarray) -> Reading:
        if crop.shape != (INPUT, INPUT) or crop.dtype != np.uint8:
            raise ModelError(f"{self.model_path.name}: expected a uint8 crop {INPUT}x{INPUT}, got {crop.dtype} {crop.shape}")
        grey = crop.astype(np.float32) * (1.0 / 255.0)
        self._interpreter.set_tensor(self._input, np.repeat(grey[None, :, :, None], 3, axis=3))
        self._interpreter.invoke()
        points = self._interpreter.get_tensor(self._points).reshape(21, 3)[:, :2].astype(np.float64)
        presence = float(self._interpreter.get_tensor(self._presence).ravel()[0])
        right = float(self._interpreter.get_tensor(self._right).ravel()[0])
        return Reading(points, _probability(presence), _probability(right))


def _probability(value: float) -> float:
    """Scores already in 0..1 are kept; a logit is squashed (model versions differ)."""
    return value if 0.0 <= value <= 1.0 else float(1.0 / (1.0 + np.exp(-value)))


_REQUIRED = {"format": int, "kind": str, "model_file": str, "sha256": str, "outputs": dict, "square": dict,
             "presence_threshold": (int, float), "sure": (int, float)}


def read_landmark_manifest(folder: Path | str) -> dict:
    """The landmark model's manifest with the fields the unit relies on checked; ModelError naming the key."""
    path = Path(folder) / MANIFEST_NAME
    manifest = read_checked_manifest(path, "landmark model manifest", _REQUIRED)
    if manifest["kind"] != KIND or manifest["format"] != 1:
        raise ModelError(f"{path}: expected kind {KIND!r} format 1, got {manifest['kind']!r} format {manifest['format']}")
    for key in ("points", "presence", "right"):
        if not isinstance(manifest["outputs"].get(key), str):
            raise ModelError(f"{path}: outputs.{key}: expected the output tensor's name")
    for key in ("side_per_span", "drop_per_span"):
        value = manifest["square"].get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < abs(value) < 10:
            raise ModelError(f"{path}: square.{key}: expected a number of knuckle spans, got {value!r}")
    if manifest.get("refine", "unsure") not in REFINE:
        raise ModelError(f"{path}: refine: expected one of {REFINE}, got {manifest['refine']!r}")
    if manifest.get("order", "landmarks_first") not in ("landmarks_first", "classical_first"):
        raise ModelError(f"{path}: order: expected landmarks_first or classical_first, got {manifest['order']!r}")
    if not 0 < manifest["presence_threshold"] <= manifest["sure"] <= 1:
        raise ModelError(f"{path}: expected 0 < presence_threshold <= sure <= 1")
    return manifest


def is_landmark_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds a hand-landmark model (not a matching model), for code that walks every folder."""
    try:
        return json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


# --- geometry -------------------------------------------------------------------
def crop_transform(center, size: float, angle: float) -> np.ndarray:
    """The crop->frame affine (2x3) of an INPUT x INPUT crop of ``size`` frame pixels about ``center``, turned so
    that the frame direction ``angle`` (radians, 0 = the frame's up) points up in the crop."""
    k = size / INPUT
    c, s = np.cos(angle), np.sin(angle)
    to_frame = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0]])
    to_frame[:, 2] = np.asarray(center, float) - to_frame[:, :2] @ np.array([INPUT / 2, INPUT / 2])
    return to_frame


def cut_crop(grey: np.ndarray, to_frame: np.ndarray, border: int) -> np.ndarray:
    return cv2.warpAffine(grey, to_frame, (INPUT, INPUT), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def to_frame_points(points: np.ndarray, to_frame: np.ndarray) -> np.ndarray:
    return np.c_[points, np.ones(len(points))] @ to_frame.T


def up_angle(points: np.ndarray) -> float:
    """The frame direction from the wrist to the middle finger's knuckle (radians, 0 = the frame's up)."""
    direction = points[MIDDLE_KNUCKLE] - points[WRIST]
    return float(np.arctan2(direction[0], -direction[1]))


def nearest_turn(angle: float) -> int:
    """Index into QUARTER_TURNS of the quarter turn nearest to ``angle``."""
    return int(np.argmin([abs(np.angle(np.exp(1j * (angle - t)))) for t in QUARTER_TURNS]))


def square_from_landmarks(points: np.ndarray, fit: SquareFit) -> tuple[np.ndarray, np.ndarray, float]:
    """The palm square (centre, x axis, side; frame pixels) from the index (5) and little-finger (17) knuckles:
    top edge along their line turned by ``fit.turn_deg`` (signed by the thumb's side), facing the fingers (away
    from the wrist), its centre ``drop_per_span`` below their midpoint along the square's own up."""
    index, little, wrist = points[INDEX_KNUCKLE], points[LITTLE_KNUCKLE], points[WRIST]
    span = float(np.linalg.norm(little - index))
    line = (little - index) / (span + 1e-9)
    up = np.array([line[1], -line[0]])
    middle = (index + little) / 2
    if up @ (middle - wrist) < 0:
        up = -up
    if fit.turn_deg:
        axis_x = np.array([-up[1], up[0]])
        sign = 1.0 if float((points[THUMB_BASE] - middle) @ axis_x) > 0 else -1.0
        a = np.radians(fit.turn_deg) * sign
        up = np.array([np.cos(a) * up[0] - np.sin(a) * up[1], np.sin(a) * up[0] + np.cos(a) * up[1]])
    axis_x = np.array([-up[1], up[0]])
    return middle - up * fit.drop_per_span * span, axis_x, fit.side_per_span * span


# --- finding ----------------------------------------------------------------------
class LandmarkFinder:
    """Reads a frame with as few model runs as it can: the remembered quarter turn first; a tighter turned crop
    only when that reading is not sure; the other turns only when asked (``other_turns``, a frame the
    classical path refused too)."""

    def __init__(self, reader: LandmarkReader, fit: SquareFit, presence_threshold: float = 0.5, sure: float = 0.9,
                 refine: str = "unsure"):
        if refine not in REFINE:
            raise ModelError(f"refine: expected one of {REFINE}, got {refine!r}")
        self.reader, self.fit = reader, fit
        self.presence_threshold, self.sure, self.refine = presence_threshold, sure, refine
        self.turn = 0  # index into QUARTER_TURNS: the way up hands last arrived
        self.runs = 0  # model runs so far (for benches and tests)

    @classmethod
    def load(cls, folder: Path | str) -> "LandmarkFinder":
        model = LandmarkModel.load(folder)
        m = model.manifest
        return cls(model, model.fit, float(m["presence_threshold"]), float(m["sure"]), str(m.get("refine", "unsure")))

    def remember_up(self, angle: float) -> None:
        """Hands arrive this way up (the classical path found one): try that quarter turn first next time."""
        self.turn = nearest_turn(angle)

    def find(self, grey: np.ndarray, other_turns: bool = False) -> Reading | None:
        """Landmarks in frame pixels, or None when the model sees no hand: the whole frame turned by the
        remembered quarter turn, or (``other_turns``: after the classical path refused the frame too) by the
        other three (up to the first one sure of a hand), the most sure one being remembered."""
        h, w = grey.shape
        border = int(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
        turns = [t for t in range(len(QUARTER_TURNS)) if t != self.turn] if other_turns else [self.turn]
        best: Reading | None = None
        for turn in turns:
            to_frame = crop_transform((w / 2, h / 2), float(max(h, w)), QUARTER_TURNS[turn])
            reading = self._read(grey, to_frame, border)
            if best is None or reading.presence > best.presence:
                best, best_turn = reading, turn
            if reading.presence >= self.sure:  # a wrong way up can still pass the threshold: read on unless sure
                break
        if best is None or best.presence < self.presence_threshold:
            return None
        self.turn = best_turn
        if self.refine == "never" or (self.refine == "unsure" and best.presence >= self.sure):
            return best
        palm = best.points[list(PALM_POINTS)]
        extent = float(np.max(np.ptp(best.points, axis=0)))
        to_frame = crop_transform(palm.mean(axis=0), 1.6 * extent, up_angle(best.points))
        refined = self._read(grey, to_frame, border)
        return refined if refined.presence >= self.presence_threshold else best

    def _read(self, grey: np.ndarray, to_frame: np.ndarray, border: int) -> Reading:
        self.runs += 1
        reading = self.reader.read(cut_crop(grey, to_frame, border))
        return Reading(to_frame_points(reading.points, to_frame), reading.presence, reading.right)
