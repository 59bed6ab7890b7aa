#!/usr/bin/env python3
"""Measure the palm finding of issue 8: the classical path against the shipped one (landmark model first, the
classical path where it sees no hand: hand/palm_finder.py), on the people never used for tuning; and fit the
landmark square, on the tuning people only, writing the landmark model's folder.

Not part of the unit. The model comes from the mediapipe wheel (the unit never imports mediapipe):
    pip download mediapipe==0.10.18 --no-deps -d /tmp/mp && unzip -o /tmp/mp/mediapipe-*.whl \\
        'mediapipe/modules/hand_landmark/*.tflite' 'mediapipe-0.10.18.dist-info/*' -d /tmp/mp
Fit the square and write the folder the unit loads (sha256, licence, the people the fit used):
    PYTHONPATH=. python scripts/measure_landmarks.py --model /tmp/mp/mediapipe/modules/hand_landmark/hand_landmark_lite.tflite \\
        --write firmware_assets/hand-landmark --report /tmp/fit.json
Measure (one thread, CPU time per frame of the palm finding alone; figures on preprocessing.measured_on people):
    PYTHONPATH=. python scripts/measure_landmarks.py --landmarks firmware_assets/hand-landmark --report /tmp/lm.json \\
        [--refine always|unsure|never] [--mirror] [--robustness turned+30 nearer1.5 ...]

The square's side and drop below the index/little knuckles are medians over the tuning people's photos where the
classical path placed the square from all three finger valleys, so both paths cut the same square.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from vendor_node.config import load_config
from vendor_node.errors import HandRejected
from vendor_node.hand.dataset import Dataset, load_dataset, trained_subjects, tuned_subjects
from vendor_node.hand.evaluation import evaluate
from vendor_node.hand.landmarks import (INDEX_KNUCKLE, LITTLE_KNUCKLE, THUMB_BASE, LandmarkFinder, LandmarkModel,
                                        SquareFit, square_from_landmarks)
from vendor_node.hand.palm_finder import PalmFinder
from vendor_node.hand.preprocess import extract_hand
from vendor_node.hand.recognition import Recognizer
from vendor_node.hand.robustness import robustness_rows
from vendor_node.images import read_grey

SETS = ["nir_dev", "coep_dev", "webcam_hand2", "11k_full"]
FIT_SETS = ["nir_dev", "coep_dev", "webcam_hand2"]  # palm-side views, as the unit sees (11k_full shows the back)
SAME_PERSON = {"coep_dev": [("076", "163"), ("077", "153"), ("080", "155")]}
OUTPUTS = {"points": "Identity", "presence": "Identity_1", "right": "Identity_2"}


class TimedRecognizer:
    """The unit's recognizer with its palm finder timed (CPU time of finding the palm, one thread)."""

    def __init__(self, recognizer: Recognizer, finder: PalmFinder):
        self.recognizer, self.finder = recognizer, finder
        self.cpu: list[float] = []
        self.paths: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(self.recognizer, name)

    def features(self, image):
        start = time.process_time()
        try:
            hand = self.finder.find(image)
        finally:
            self.cpu.append(time.process_time() - start)
        self.paths[hand.alignment] = self.paths.get(hand.alignment, 0) + 1
        return self.recognizer.features_from_hand(hand)


def _subset(dataset, keep) -> Dataset:
    return Dataset([s for s in dataset if keep(s.subject)], dataset.problems, dataset.has_captured)


def fit_square(finder: LandmarkFinder, samples) -> tuple[SquareFit, int]:
    """Turn, side and drop of the classical palm square relative to the knuckles (medians), over the photos
    where the classical path placed it from all three finger valleys. (The mean of per-set medians was tried
    too: it moved coep_dev's squares 0.18 sides off the classical ones and cost 3 of 62 rank-1 there.)"""
    fit = _fit_one(finder, samples)
    if fit is None:
        raise SystemExit("no photo to fit the square on")
    return fit


def _fit_one(finder: LandmarkFinder, samples) -> tuple[SquareFit, int] | None:
    found = []
    for sample in samples:
        grey = read_grey(sample.path)
        try:
            hand = extract_hand(grey)
        except HandRejected:
            continue
        if hand.alignment != "valleys":
            continue
        top = (hand.square[0] + hand.square[1]) / 2 - (hand.square[2] + hand.square[3]) / 2
        finder.remember_up(float(np.arctan2(top[0], -top[1])))
        reading = finder.find(grey)
        if reading is not None:
            found.append((reading.points, hand.square, top / np.linalg.norm(top)))
    if not found:
        return None
    turns = []
    for points, _, up_c in found:
        _, axis_x, _ = square_from_landmarks(points, SquareFit(1.0, 0.0))
        up_k = np.array([axis_x[1], -axis_x[0]])
        sign = 1.0 if float((points[THUMB_BASE] - (points[INDEX_KNUCKLE] + points[LITTLE_KNUCKLE]) / 2) @ axis_x) > 0 else -1.0
        turns.append(sign * float(np.degrees(np.arctan2(up_k[0] * up_c[1] - up_k[1] * up_c[0], up_k @ up_c))))
    turn = float(np.median(turns))
    sides, drops = [], []
    for points, square, _ in found:
        middle, axis_x, _ = square_from_landmarks(points, SquareFit(1.0, 0.0, turn))
        up = np.array([axis_x[1], -axis_x[0]])
        span = float(np.linalg.norm(points[LITTLE_KNUCKLE] - points[INDEX_KNUCKLE]))
        sides.append(float(np.linalg.norm(square[1] - square[0])) / span)
        drops.append(float((middle - square.mean(axis=0)) @ up) / span)
    return SquareFit(float(np.median(sides)), float(np.median(drops)), turn), len(found)


def write_folder(args, cfg) -> dict:
    """Fit the square on the tuning people of every set and write the landmark model's folder."""
    folder: Path = args.write
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.model, folder / args.model.name)
    wheel_info = args.model.parents[3] / "mediapipe-0.10.18.dist-info" / "LICENSE"
    if wheel_info.is_file():
        shutil.copyfile(wheel_info, folder / "LICENSE")
    (folder / "NOTICE").write_text(
        f"{args.model.name}: MediaPipe Hands hand-landmark model, Copyright The MediaPipe Authors (Google LLC),\n"
        "licensed under the Apache License 2.0 (LICENSE, copied from the mediapipe 0.10.18 wheel's dist-info).\n"
        "Copied unchanged from the wheel's mediapipe/modules/hand_landmark/; its sha256 is in manifest.json.\n"
        "vendor_node runs it with LiteRT; mediapipe itself is not used or shipped.\n")
    data = (folder / args.model.name).read_bytes()
    manifest = {
        "format": 1, "kind": "hand_landmark", "model_file": args.model.name, "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data), "source": "mediapipe 0.10.18 wheel (PyPI), mediapipe/modules/hand_landmark/"
        + args.model.name + ": Google's MediaPipe Hands landmark model, float16 weights; no palm detector is shipped",
        "version": "mediapipe 0.10.18", "licence": "Apache-2.0 (LICENSE beside it, from the wheel's dist-info)",
        "outputs": OUTPUTS, "presence_threshold": 0.5, "sure": 0.9, "refine": args.refine, "order": args.order,
        "square": {"side_per_span": 1.0, "drop_per_span": 0.5},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    model = LandmarkModel.load(folder)
    finder = LandmarkFinder(model, model.fit, refine=args.refine)
    samples, people = [], {}
    for name in args.fit_sets:
        root = args.data / name
        tuned = tuned_subjects(cfg.unit.assets_dir, root)
        chosen = [s for s in load_dataset(root) if s.subject in tuned][::2]
        samples += chosen
        people[name] = sorted({s.subject for s in chosen})
    fit, photos = fit_square(finder, samples)
    manifest["square"] = {"side_per_span": round(fit.side_per_span, 4), "drop_per_span": round(fit.drop_per_span, 4),
                          "turn_deg": round(fit.turn_deg, 2), "photos": photos, "fitted_on": people,
                          "how": "medians over every second photo of the palm-side sets' tuning people (preprocessing.tuned_on of the "
                                 "active model) where the classical path placed the square from all three valleys"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="the .tflite to fit the square for (with --write)")
    parser.add_argument("--write", type=Path, help="write the landmark model's folder (model, LICENSE, manifest)")
    parser.add_argument("--landmarks", type=Path, help="the landmark model's folder to measure")
    parser.add_argument("--refine", choices=("always", "unsure", "never"), default=None)
    parser.add_argument("--order", choices=("landmarks_first", "classical_first"), default="classical_first",
                        help="with --write: the order the unit tries the two paths in")
    parser.add_argument("--mirror", action="store_true", help="mirror hands the model tells left")
    parser.add_argument("--data", type=Path, default=Path("../shared/handdata"))
    parser.add_argument("--sets", nargs="+", default=SETS)
    parser.add_argument("--fit-sets", nargs="+", default=FIT_SETS, help="sets whose tuning people fit the square")
    parser.add_argument("--ways", nargs="+", default=["classical", "shipped"], choices=("classical", "shipped", "landmarks_first", "classical_first"))
    parser.add_argument("--robustness", nargs="*", default=[], help="transform names of eval --robustness")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    cfg = load_config()
    if args.write:
        args.refine = args.refine or "unsure"
        manifest = write_folder(args, cfg)
        args.report.write_text(json.dumps(manifest, indent=2) + "\n")
        print(json.dumps(manifest["square"]))
        return 0
    recognizer = Recognizer.from_config(cfg)
    finder = LandmarkFinder.load(args.landmarks)
    finder_order = json.loads((args.landmarks / "manifest.json").read_text()).get("order", "landmarks_first")
    if args.refine:
        finder.refine = args.refine
    results = {"landmarks": str(args.landmarks), "refine": finder.refine, "mirror": args.mirror, "sets": {}}
    for name in args.sets:
        root = args.data / name
        dataset = load_dataset(root)
        exclude = trained_subjects(cfg.unit.assets_dir, root) | tuned_subjects(cfg.unit.assets_dir, root)
        measured = _subset(dataset, lambda s: s not in exclude)
        pairs = {frozenset(p) for p in SAME_PERSON.get(name, [])}
        out = {"people": sorted({s.subject for s in measured}), "ways": {}}
        for way in args.ways:
            finder.turn, finder.runs = 0, 0  # as a unit's first frame
            order = way if way.endswith("_first") else finder_order
            timed = TimedRecognizer(recognizer, PalmFinder(None if way == "classical" else finder, args.mirror, order))
            report = evaluate(timed, measured, 1, not_impostors=pairs)
            ident, verification = report["identification"], report["verification"]
            figures = {"failed": len(report.get("failed_images", [])), "images": report.get("images"),
                       "rank1_counting_fta": ident["rank1_counting_fta"], "mated_probes": ident["mated_probes"],
                       "eer": verification.get("eer"), "genuine": verification["genuine"],
                       "impostor": verification["impostor"], "paths": timed.paths,
                       "model_runs_per_frame": round(finder.runs / max(1, len(timed.cpu)), 2) if way != "classical" else 0,
                       "find_cpu_p50_ms": round(float(np.percentile(timed.cpu, 50)) * 1000, 1),
                       "find_cpu_p95_ms": round(float(np.percentile(timed.cpu, 95)) * 1000, 1)}
            if args.robustness:
                rows = robustness_rows(evaluate, timed, measured, 1, pairs, names=args.robustness)
                figures["robustness"] = {r["probes"]: {k: r[k] for k in ("failed_to_acquire", "rank1_counting_fta",
                                                                         "mated_probes", "eer")} for r in rows}
            out["ways"][way] = figures
            print(name, way, json.dumps(figures), flush=True)
        results["sets"][name] = out
        args.report.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
