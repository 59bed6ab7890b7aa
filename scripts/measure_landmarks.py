#!/usr/bin/env python3
"""Measure MediaPipe's hand-landmark model as a way to place the palm square, against the classical path.

Not part of the unit: the model is not shipped (see the report of issue 8). Get it once with
    pip download mediapipe==0.10.18 --no-deps -d /tmp/mp && unzip -o /tmp/mp/mediapipe-*.whl \
        'mediapipe/modules/hand_landmark/*.tflite' -d /tmp/mp
and run, one thread, on the people the model was not trained on:
    PYTHONPATH=. python scripts/measure_landmarks.py --model /tmp/mp/mediapipe/modules/hand_landmark/hand_landmark_full.tflite \
        --sets nir_dev coep_dev webcam_hand2 11k_full --report /tmp/landmarks.json

No detector is run (the unit has no time for one): the landmark model reads the whole frame letterboxed to
224x224 (turned by quarter turns until it is sure of a hand, as the model wants fingers up), then once more a
square around what it found, turned so the wrist is down (MediaPipe's own tracking step). The palm square is built from the index and little-finger knuckles (MCP 5 and 17): its top edge
parallel to their line, its side and its drop below them fitted (median) to where the classical path puts
the square on the photos where it found all three finger valleys (on the tuning people only), so the
squares cut follow the ROI contract. Four ways are measured per set, each with vendor-node's own
evaluation (enroll 1, FTA counted as a miss): "classical", "landmarks" alone, "fallback" (classical,
landmarks where the classical path refuses) and "landmarks_first" (the other way round). Never imported by the package; mediapipe is never imported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from vendor_node.config import load_config
from vendor_node.errors import HandRejected
from vendor_node.hand import palm_square
from vendor_node.hand.dataset import Dataset, load_dataset, trained_subjects, tuned_subjects
from vendor_node.hand.evaluation import evaluate
from vendor_node.hand.preprocess import extract_hand
from vendor_node.hand.recognition import Recognizer
from vendor_node.hand.robustness import TRANSFORMS, robustness_rows

INPUT = 224
PRESENCE = 0.5  # MediaPipe's own default for hand presence
WAYS = ("classical", "landmarks", "fallback", "landmarks_first")
TURNS = (0.0, np.pi / 2, -np.pi / 2, np.pi)  # first reading: the whole frame turned by each until a hand is sure
SAME_PERSON = {"coep_dev": [("076", "163"), ("077", "153"), ("080", "155")]}


class LandmarkModel:
    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self.points, self.presence, self.handedness = outputs["Identity"], outputs["Identity_1"], outputs["Identity_2"]

    def run(self, crop: np.ndarray) -> tuple[np.ndarray, float, float]:
        """21 (x, y) points in crop pixels, hand presence 0..1, right-hand score 0..1."""
        rgb = np.repeat(crop[:, :, None], 3, axis=2).astype(np.float32) / 255.0
        self.interpreter.set_tensor(self.input, rgb[None])
        self.interpreter.invoke()
        points = self.interpreter.get_tensor(self.points).reshape(21, 3)[:, :2].copy()
        presence = float(self.interpreter.get_tensor(self.presence).ravel()[0])
        right = float(self.interpreter.get_tensor(self.handedness).ravel()[0])
        return points, _probability(presence), _probability(right)


def _probability(value: float) -> float:
    return value if 0.0 <= value <= 1.0 else float(1.0 / (1.0 + np.exp(-value)))


def _crop(grey: np.ndarray, center, size: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """A INPUT x INPUT crop of ``size`` frame pixels about ``center``, turned by ``angle`` (radians, so
    that the frame's direction ``angle`` points up in the crop); and the crop->frame affine (2x3)."""
    k = size / INPUT
    c, s = np.cos(angle), np.sin(angle)
    # crop (u, v) -> frame: center + k * R @ (u - INPUT/2, v - INPUT/2)
    to_frame = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0]])
    to_frame[:, 2] = np.asarray(center) - to_frame[:, :2] @ np.array([INPUT / 2, INPUT / 2])
    border = int(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    crop = cv2.warpAffine(grey, to_frame, (INPUT, INPUT), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    return crop, to_frame


def find_landmarks(model: LandmarkModel, grey: np.ndarray):
    """Landmarks in frame pixels (21, 2), presence and right-hand score, from the whole frame then a turned
    square around the first reading (MediaPipe's tracking step: wrist down, 2x the knuckles' extent)."""
    h, w = grey.shape
    best = None
    for turn in TURNS:  # the model expects fingers up; without a detector, the four quarter turns are tried
        crop, to_frame = _crop(grey, (w / 2, h / 2), float(max(h, w)), turn)
        points, presence, right = model.run(crop)
        if best is None or presence > best[1]:
            best = (np.c_[points, np.ones(21)] @ to_frame.T, presence, right)
        if presence >= 0.9:
            break
    frame_points, presence, right = best
    if presence < PRESENCE:
        return frame_points, presence, right
    wrist, middle = frame_points[0], frame_points[9]
    direction = middle - wrist
    angle = float(np.arctan2(direction[0], -direction[1]))  # turn so the wrist->middle knuckle points up
    palm = frame_points[[0, 1, 2, 5, 9, 13, 17]]
    center = palm.mean(axis=0)
    extent = float(np.max(np.ptp(frame_points, axis=0)))
    crop, to_frame = _crop(grey, center, 1.6 * extent, angle)
    points, presence2, right2 = model.run(crop)
    return np.c_[points, np.ones(21)] @ to_frame.T, presence2, right2


def square_from_landmarks(points: np.ndarray, side_per_span: float, drop_per_span: float):
    """ROI centre, x axis and side (frame pixels) from the index (5) and little-finger (17) knuckles."""
    index, little, wrist = points[5], points[17], points[0]
    span = float(np.linalg.norm(little - index))
    line = (little - index) / (span + 1e-6)
    up = np.array([line[1], -line[0]])
    middle = (index + little) / 2
    if up @ (middle - wrist) < 0:
        up = -up  # towards the fingers
    axis_x = np.array([-up[1], up[0]])
    return middle - up * drop_per_span * span, axis_x, side_per_span * span


class LandmarkRecognizer:
    """vendor-node's recognizer with the palm square placed by the classical path, the landmark model, or
    one of them with the other where it refuses (see WAYS)."""

    def __init__(self, recognizer: Recognizer, model: LandmarkModel, fit: tuple[float, float], mode: str):
        self.recognizer, self.model, self.fit, self.mode = recognizer, model, fit, mode
        self.threshold, self.margin = recognizer.threshold, recognizer.margin
        self.seconds: list[float] = []
        self.presence: list[float] = []

    def __getattr__(self, name):
        return getattr(self.recognizer, name)

    def features(self, image):
        start = time.perf_counter()
        if self.mode in ("classical", "fallback"):
            try:
                hand = extract_hand(image)
                self.seconds.append(time.perf_counter() - start)
                return self.recognizer.features_from_hand(hand)
            except HandRejected:
                if self.mode == "classical":
                    self.seconds.append(time.perf_counter() - start)
                    raise
        try:
            roi = self.roi(image)
        except HandRejected:
            if self.mode != "landmarks_first":
                self.seconds.append(time.perf_counter() - start)
                raise
            try:
                hand = extract_hand(image)
            finally:
                self.seconds.append(time.perf_counter() - start)
            return self.recognizer.features_from_hand(hand)
        self.seconds.append(time.perf_counter() - start)  # finding the palm only, not coding it
        return self.recognizer.features_from_roi(roi)

    def roi(self, image) -> np.ndarray:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        points, presence, _ = find_landmarks(self.model, grey)
        self.presence.append(presence)
        if presence < PRESENCE:
            raise HandRejected("no_hand", "the landmark model sees no hand")
        center, axis_x, side = square_from_landmarks(points, *self.fit)
        if not palm_square.inside_frame(center, axis_x, side, grey.shape):
            raise HandRejected("cut_off", "the palm square leaves the frame")
        mask = np.full(grey.shape, 255, np.uint8)
        roi, _ = palm_square.cut_roi(grey, mask, 1.0, center, axis_x, side)
        return roi


def fit_square(model: LandmarkModel, samples) -> tuple[float, float, int]:
    """Side and drop of the classical palm square in units of the knuckle span (medians over photos where the
    classical path placed it from all three finger valleys)."""
    from vendor_node.images import read_grey

    sides, drops = [], []
    for sample in samples:
        grey = read_grey(sample.path)
        try:
            hand = extract_hand(grey)
        except HandRejected:
            continue
        if hand.alignment != "valleys":
            continue
        points, presence, _ = find_landmarks(model, grey)
        if presence < PRESENCE:
            continue
        span = float(np.linalg.norm(points[17] - points[5]))
        middle = (points[5] + points[17]) / 2
        corners = hand.square
        center = corners.mean(axis=0)
        up = corners[0] - corners[3]
        up = up / np.linalg.norm(up)
        sides.append(float(np.linalg.norm(corners[1] - corners[0])) / span)
        drops.append(float((middle - center) @ up) / span)
    if not sides:
        raise SystemExit("no photo to fit the square on")
    return float(np.median(sides)), float(np.median(drops)), len(sides)


def _subset(dataset, keep) -> Dataset:
    return Dataset([s for s in dataset if keep(s.subject)], dataset.problems, dataset.has_captured)


def _figures(report: dict) -> dict:
    ident, verification = report["identification"], report["verification"]
    probes = ident["mated_probes"]
    return {"fta": report.get("failure_to_acquire"), "failed": len(report.get("failed_images", [])),
            "images": report.get("images"), "rank1_counting_fta": ident["rank1_counting_fta"], "mated_probes": probes,
            "eer": verification.get("eer"), "genuine": verification["genuine"], "impostor": verification["impostor"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/handdata"))
    parser.add_argument("--sets", nargs="+", default=["nir_dev", "coep_dev", "webcam_hand2", "11k_full"])
    parser.add_argument("--robustness", nargs="*", default=[], help="transform names of eval --robustness")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    cfg = load_config()
    recognizer = Recognizer.from_config(cfg)
    model = LandmarkModel(args.model)
    results = {"model": str(args.model), "sets": {}}
    for name in args.sets:
        root = args.data / name
        dataset = load_dataset(root)
        tuned = tuned_subjects(cfg.unit.assets_dir, root)
        held = _subset(dataset, lambda s, ex=trained_subjects(cfg.unit.assets_dir, root): s not in ex)
        measured = _subset(held, lambda s: s not in tuned) if tuned and any(
            s.subject not in tuned for s in held) else held
        fit_on = _subset(dataset, lambda s: s in tuned) if tuned else dataset
        side, drop, fitted = fit_square(model, list(fit_on)[::2])
        pairs = {frozenset(p) for p in SAME_PERSON.get(name, [])}
        out = {"fit": {"side_per_span": side, "drop_per_span": drop, "photos": fitted},
               "people": sorted({s.subject for s in measured}), "ways": {}}
        for mode in args.ways:
            rec = LandmarkRecognizer(recognizer, model, (side, drop), mode)
            start = time.perf_counter()
            report = evaluate(rec, measured, 1, not_impostors=pairs)
            figures = _figures(report)
            figures["seconds"] = round(time.perf_counter() - start, 1)
            figures["presence_rate"] = float(np.mean(np.array(rec.presence) >= PRESENCE)) if rec.presence else None
            figures["landmark_runs"] = len(rec.presence)
            figures["preprocess_p95_ms"] = round(float(np.percentile(rec.seconds, 95) * 1000), 1) if rec.seconds else None
            if args.robustness:
                rows = robustness_rows(evaluate, rec, measured, 1, pairs, names=args.robustness)
                figures["robustness"] = {r["probes"]: {k: r[k] for k in ("failed_to_acquire", "rank1_counting_fta",
                                                                         "mated_probes", "eer")} for r in rows}
            out["ways"][mode] = figures
            print(name, mode, json.dumps(figures), flush=True)
        results["sets"][name] = out
        args.report.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
