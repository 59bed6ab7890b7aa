#!/usr/bin/env python3
"""The first (format-1) model: a fixed Gabor bank for palm codes; write firmware_assets/<model>.tflite + manifest.json.

What "training" means here, and why: the identity is in the palm lines, and a
bank of oriented filters followed by a winner-take-all code (competitive code)
is what measures best on real palms with the few dozen people we have; a learned
CNN would overfit them. So the script (1) preprocesses every photo with the
unit's own preprocess.extract_hand, (2) splits people into training and held-out
subjects per set (seeded; the manifest lists both), (3) picks the filter bank
(Gabor size, scale, wavelength) that measures best on the TRAINING people, with
augmented (rotated, shifted, re-lit) copies of their ROIs and synthetic hands,
(4) bakes the bank into a Keras model (2x2 average pool + one strided conv),
(5) converts it to a full-integer int8 TFLite model with a representative
dataset, (6) picks the matcher settings (shift/rotation/zoom search, geometry
weight) and calibrates the decision threshold and margin on the training
people through the int8 model, and (7) measures the held-out people only.
``--fold 1`` swaps the halves, so two runs cross-validate by subject.

    .venv/bin/python scripts/train_gabor.py --data ../shared/handdata --out firmware_assets --seed 7

Needs the ``train`` extra (tensorflow-cpu, tqdm). About one minute on 2 cores; the same
seed gives the same model bytes.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vendor_node.hand import palmcode  # noqa: E402
from vendor_node.errors import HandRejected  # noqa: E402
from vendor_node.hand.model import Embedder, model_ops  # noqa: E402
from vendor_node.hand.preprocess import ROI_SIZE, extract_hand  # noqa: E402
from vendor_node.hand.recognition import Recognizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from palm_net import int8_convert  # noqa: E402  (one full-integer int8 converter set-up)
from training_metrics import (SAME_PERSON, Sample, attach_features, calibrate, d_prime,  # noqa: E402
                              measure, public, typical_geometry_distance)

MODEL_FILE = "palm_gabor_int8.tflite"
PALM_SETS = ("coep_dev", "webcam_hand2", "11k_full", "11k_small")
BANK_CANDIDATES = [  # (kernel size, sigma, wavelength) on the 64x64 pooled ROI
    (13, 2.0, 6.0), (17, 2.8, 8.0), (17, 2.8, 6.5), (21, 3.5, 10.0), (21, 3.5, 8.0),
]
CODE_CANDIDATES = [  # matcher settings tried on the training people through the int8 model
    {}, {"max_shift": 2, "rotations_deg": [0.0, -8.0, 8.0], "fragile_fraction": 0.25},
    {"fragile_fraction": 0.3, "min_overlap": 0.3}, {"max_shift": 4},
    {"geometry_weight": 1.0}, {"geometry_weight": 2.0}, {"geometry_weight": 4.0},
    {"zooms": [0.92, 1.08]}, {"zooms": [0.9, 0.95, 1.05, 1.1]},
    {"zooms": [0.9, 0.95, 1.05, 1.1], "geometry_weight": 1.0},
]
PIXEL_OFFSET, PIXEL_DIVISOR = 128.0, 128.0


# --- data -------------------------------------------------------------------
def load_set(root: Path, name: str, progress) -> list[Sample]:
    """Every image of one set, preprocessed by the unit's own extract_hand (refusals kept as FTA)."""
    with open(root / name / "manifest.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    samples = []
    for row in progress(rows, desc=f"preprocess {name}"):
        s = Sample(name, row["path"], row["subject"], row.get("extra", ""), row.get("captured", "") or "")
        image = cv2.imread(str(root / name / row["path"]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            s.reason = "unreadable"
        else:
            try:
                s.hand = extract_hand(image)
            except HandRejected as exc:
                s.reason = exc.reason
        samples.append(s)
    return samples


def synthetic_set(people: int, per_person: int, progress) -> list[Sample]:
    from vendor_node.sim.drawn_hands import draw_hand

    samples = []
    for p in progress(range(people), desc="synthetic hands"):
        for k in range(per_person):
            s = Sample("synthetic", f"{1000 + p}/{k}", str(1000 + p), "", "")
            try:
                s.hand = extract_hand(draw_hand(1000 + p, k))
            except HandRejected as exc:
                s.reason = exc.reason
            samples.append(s)
    return samples


def split_subjects(samples: list[Sample], held_out_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of a set's people; people labelled twice stay together."""
    subjects = sorted({s.subject for s in samples})
    if not samples:
        return [], []
    groups: dict[str, list[str]] = {s: [s] for s in subjects}
    for a, b in SAME_PERSON.get(samples[0].set, []):
        if a in groups and b in groups:
            groups[a] += groups.pop(b)
    keys = sorted(groups)
    rng = np.random.default_rng([seed, int(hashlib.sha256(samples[0].set.encode()).hexdigest()[:8], 16)])
    order = rng.permutation(len(keys))
    n_held = int(round(held_out_fraction * len(keys)))
    held = sorted(s for i in order[:n_held] for s in groups[keys[i]])
    train = sorted(s for i in order[n_held:] for s in groups[keys[i]])
    return train, held


def augmented_rois(samples: list[Sample], seed: int, copies: int) -> list[tuple[str, str, np.ndarray]]:
    """Training ROIs plus re-posed, re-lit copies (what the next presentation of the same palm looks like)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        if s.hand is None:
            continue
        out.append((s.subject, s.extra, s.hand.roi))
        for _ in range(copies):
            roi = s.hand.roi
            angle, dx, dy = rng.normal(0, 4), rng.normal(0, 3), rng.normal(0, 3)
            matrix = cv2.getRotationMatrix2D(((ROI_SIZE - 1) / 2, (ROI_SIZE - 1) / 2), angle, rng.uniform(0.95, 1.05))
            matrix[:, 2] += (dx, dy)
            moved = cv2.warpAffine(roi, matrix, roi.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            lit = np.clip((moved.astype(np.float32) - 128) * rng.uniform(0.85, 1.15) + 128 + rng.normal(0, 2, roi.shape), 1, 255)
            lit[roi == palmcode.BACKGROUND] = palmcode.BACKGROUND
            out.append((s.subject + "~aug", s.extra, lit.astype(np.uint8)))
    return out


# --- the filter bank and its float twin --------------------------------------
def gabor_bank(size: int, sigma: float, wavelength: float, orientations: int = 6) -> np.ndarray:
    """Even (cosine) Gabor filters, zero mean, unit L1: float32 (size, size, 1, orientations)."""
    kernels = []
    for j in range(orientations):
        k = cv2.getGaborKernel((size, size), sigma, np.pi * j / orientations, wavelength, 1.0, 0, ktype=cv2.CV_32F)
        k -= k.mean()
        kernels.append(k / np.abs(k).sum())
    return np.stack(kernels, -1)[:, :, None, :].astype(np.float32)


class FloatEmbedder:
    """The model's maths in OpenCV float, for choosing the bank before anything is quantized."""

    def __init__(self, bank: np.ndarray, manifest: dict):
        self.bank = bank
        self.manifest = manifest
        self.output_shape = tuple(manifest["output"]["shape"][1:])

    def responses(self, roi: np.ndarray) -> np.ndarray:
        x = (roi.astype(np.float32) - PIXEL_OFFSET) / PIXEL_DIVISOR
        x = cv2.resize(x, (ROI_SIZE // 2, ROI_SIZE // 2), interpolation=cv2.INTER_AREA)
        maps = [cv2.filter2D(x, -1, self.bank[:, :, 0, j], borderType=cv2.BORDER_CONSTANT)[1::2, 1::2]
                for j in range(self.bank.shape[-1])]
        return np.stack(maps, -1)


def base_manifest(filters: dict, code: palmcode.CodeParams, threshold=0.6, margin=0.02) -> dict:
    grid = ROI_SIZE // 4
    return {
        "format": 1, "model_file": MODEL_FILE, "sha256": "0" * 64,
        "input": {"shape": [1, ROI_SIZE, ROI_SIZE, 1], "dtype": "int8", "scale": 1.0 / PIXEL_DIVISOR, "zero_point": 0,
                  "pixel_offset": PIXEL_OFFSET, "pixel_divisor": PIXEL_DIVISOR},
        "output": {"shape": [1, grid, grid, filters["orientations"]], "dtype": "int8", "scale": 1.0, "zero_point": 0},
        "filters": filters, "code": code.to_manifest(), "decision": {"threshold": threshold, "margin": margin},
    }


# --- Keras model, int8 conversion, runtime checks ----------------------------
def convert(bank: np.ndarray, representative: list[np.ndarray], seed: int) -> bytes:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((ROI_SIZE, ROI_SIZE, 1), batch_size=1, dtype=tf.float32)
    x = tf.keras.layers.AveragePooling2D(2, name="pool")(inputs)
    x = tf.keras.layers.Conv2D(bank.shape[-1], bank.shape[0], strides=2, padding="same", use_bias=False,
                               name="oriented_filters")(x)
    model = tf.keras.Model(inputs, x)
    model.get_layer("oriented_filters").set_weights([bank])

    def data():
        for roi in representative:
            yield [((roi.astype(np.float32) - PIXEL_OFFSET) / PIXEL_DIVISOR)[None, :, :, None]]

    return int8_convert(tf.lite.TFLiteConverter.from_keras_model(model), data)


def io_quantization(model_bytes: bytes) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes, num_threads=1)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return ({"scale": float(i["quantization"][0]), "zero_point": int(i["quantization"][1])},
            {"scale": float(o["quantization"][0]), "zero_point": int(o["quantization"][1])})


def check_tflite_214(model_path: Path) -> str:
    """Run the model under tflite-runtime 2.14 when its side venv exists (scripts/dev.sh test makes it)."""
    python = os.environ.get("VENDOR_NODE_TFLITE214_PYTHON") or str(REPO / ".venv-tflite214" / "bin" / "python")
    if not Path(python).exists():
        return "not checked (no tflite-runtime 2.14 venv)"
    code = ("import sys, numpy as np; from tflite_runtime.interpreter import Interpreter; "
            "it = Interpreter(model_path=sys.argv[1], num_threads=1); it.allocate_tensors(); "
            "i = it.get_input_details()[0]; it.set_tensor(i['index'], np.zeros(i['shape'], np.int8)); it.invoke(); "
            "import tflite_runtime; print(tflite_runtime.__version__)")
    run = subprocess.run([python, "-c", code, str(model_path)], capture_output=True, text=True, timeout=120)
    return f"ok ({run.stdout.strip()})" if run.returncode == 0 else f"FAILED: {run.stderr.strip()[-300:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "handdata", help="handdata root")
    parser.add_argument("--out", type=Path, default=REPO / "firmware_assets", help="where the model and manifest go")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--held-out", type=float, default=0.5, help="fraction of each set's people held out")
    parser.add_argument("--sets", default=",".join(PALM_SETS), help="comma-separated sets under --data")
    parser.add_argument("--fold", type=int, choices=(0, 1), default=0,
                        help="1 swaps the training and held-out people (second fold of a 2-fold cross-validation)")
    parser.add_argument("--augment", type=int, default=1, help="augmented copies of each training ROI")
    parser.add_argument("--synthetic-people", type=int, default=30)
    parser.add_argument("--calibrate-on", default="coep_dev,webcam_hand2",
                        help="sets whose training people set the threshold (the unit sees palms, not backs of hands)")
    args = parser.parse_args(argv)
    if not (args.data / "README.md").is_file():
        parser.error(f"--data {args.data}: not a handdata folder (no README.md)")
    if not 0 < args.held_out < 1:
        parser.error("--held-out must be between 0 and 1")
    cv2.setNumThreads(1)
    from tqdm import tqdm

    def progress(items, desc):
        return tqdm(items, desc=desc, leave=False, file=sys.stderr)

    started = time.time()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    missing = [name for name in sets if not (args.data / name / "manifest.csv").is_file()]
    if not sets or missing:
        parser.error(f"--sets: no {args.data}/<set>/manifest.csv for {', '.join(missing) or 'any set'}")
    if not set(args.calibrate_on.split(",")) & set(sets):
        parser.error(f"--calibrate-on {args.calibrate_on}: none of these is among --sets {args.sets}")
    data = {name: load_set(args.data, name, progress) for name in sets}
    if args.synthetic_people:
        data["synthetic"] = synthetic_set(args.synthetic_people, 3, progress)
    train, held, split = {}, {}, {}
    for name, samples in data.items():
        t_subj, h_subj = split_subjects(samples, args.held_out, args.seed)
        if args.fold == 1:  # the other half: with --held-out 0.5, two runs cross-validate by subject
            t_subj, h_subj = h_subj, t_subj
        split[name] = {"train": t_subj, "held_out": h_subj}
        train[name] = [s for s in samples if s.subject in set(t_subj)]
        held[name] = [s for s in samples if s.subject in set(h_subj)]

    # (3) choose the bank on the training people only (augmented copies join as extra probes).
    code = palmcode.CodeParams()
    selection = []
    for size, sigma, wavelength in BANK_CANDIDATES:
        filters = {"kind": "gabor_even", "size": size, "sigma": sigma, "wavelength": wavelength,
                   "orientations": 6, "pool": 2, "stride": 2}
        bank = gabor_bank(size, sigma, wavelength)
        recognizer = Recognizer(FloatEmbedder(bank, base_manifest(filters, code)))
        eers = {}
        for name, samples in train.items():
            if name == "synthetic":
                continue
            aug = augmented_rois(samples, args.seed, args.augment)
            pseudo = [Sample(name, f"{subj}/{i:05d}", subj.split("~")[0], extra, "") for i, (subj, extra, _) in enumerate(aug)]
            for p, (_, _, roi) in zip(pseudo, aug):
                p.features = recognizer.features_from_roi(roi)
            eers[name] = measure(recognizer, pseudo)["eer"]
        mean = float(np.mean([e for e in eers.values() if e is not None]))
        selection.append({"size": size, "sigma": sigma, "wavelength": wavelength, "train_eer": eers, "mean": round(mean, 4)})
        print(f"bank size {size} sigma {sigma} wavelength {wavelength}: training EER {eers} mean {mean:.4f}", file=sys.stderr)
    best = min(selection, key=lambda r: r["mean"])
    filters = {"kind": "gabor_even", "size": best["size"], "sigma": best["sigma"], "wavelength": best["wavelength"],
               "orientations": 6, "pool": 2, "stride": 2}
    bank = gabor_bank(best["size"], best["sigma"], best["wavelength"])

    # (4, 5) int8 model from the training ROIs (and augmented copies) as the representative dataset.
    rng = np.random.default_rng(args.seed)
    rep_pool = [roi for name in train for _, _, roi in augmented_rois(train[name], args.seed + 1, 1)]
    representative = [rep_pool[i] for i in rng.permutation(len(rep_pool))[:300]]
    model_bytes = convert(bank, representative, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        q_in, q_out = io_quantization(model_bytes)
        manifest = base_manifest(filters, code)
        manifest["input"].update(q_in)
        manifest["output"].update(q_out)
        manifest["sha256"] = hashlib.sha256(model_bytes).hexdigest()
        (Path(tmp) / MODEL_FILE).write_bytes(model_bytes)
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest))
        embedder = Embedder.load(tmp)
        embedder.model_path = args.out / MODEL_FILE
        calibration_sets = [n for n in args.calibrate_on.split(",") if n in train]
        if not calibration_sets:
            parser.error(f"--calibrate-on {args.calibrate_on}: none of these sets was loaded")
        # (6a) matcher settings: the one that measures best on the training palms.
        code_selection = []
        fill = typical_geometry_distance([s for n in calibration_sets for s in train[n]])
        for overrides in CODE_CANDIDATES:
            params = palmcode.CodeParams.from_manifest({**palmcode.CodeParams().to_manifest(),
                                                        "geometry_fill": fill, **overrides})
            recognizer = Recognizer(embedder, params=params)
            eers, fnmrs, separations = [], [], []
            for name in calibration_sets:
                attach_features(recognizer, train[name], progress, f"code {overrides} {name}")
                m = measure(recognizer, train[name])
                eers.append(m["eer"])
                fnmrs.append(1.0 if m["fnmr_at_fmr_1e-3"] is None else m["fnmr_at_fmr_1e-3"])
                separations.append(d_prime(np.array(m["_genuine"]), np.array(m["_impostor"])))
            # Objective: EER and FNMR at FMR 1e-3 count equally (the unit lives at low FMR); when the few
            # training people leave no errors to count, the wider genuine/impostor separation (d') wins.
            code_selection.append({"code": params.to_manifest(), "train_eer": dict(zip(calibration_sets, eers)),
                                   "train_fnmr_at_fmr_1e-3": dict(zip(calibration_sets, fnmrs)),
                                   "train_d_prime": dict(zip(calibration_sets, separations)),
                                   "mean": round(float(np.mean(eers) + np.mean(fnmrs)) / 2, 4),
                                   "mean_d_prime": round(float(np.mean(separations)), 3)})
        chosen = min(code_selection, key=lambda r: (r["mean"], -r["mean_d_prime"]))
        code = palmcode.CodeParams.from_manifest(chosen["code"])
        manifest["code"] = code.to_manifest()
        embedder.manifest = manifest
        recognizer = Recognizer(embedder, params=code)
        # (6b) decision policy from the training people through the int8 model.
        train_metrics = {}
        for name, samples in train.items():
            attach_features(recognizer, samples, progress, f"int8 features {name} (train)")
            train_metrics[name] = measure(recognizer, samples)
        decision = calibrate({n: train_metrics[n] for n in calibration_sets})
        decision["calibrated_on"] = calibration_sets
        manifest["decision"] = decision
        recognizer = Recognizer(embedder, decision["threshold"], decision["margin"], params=code)
        # (7) held-out people only.
        held_metrics = {}
        for name, samples in held.items():
            attach_features(recognizer, samples, progress, f"int8 features {name} (held out)")
            held_metrics[name] = public(measure(recognizer, samples))
            for n in (2, 3):
                if name in ("coep_dev", "webcam_hand2"):
                    held_metrics[name][f"enroll_{n}"] = {k: v for k, v in public(measure(recognizer, samples, n)).items()
                                                         if k in ("eer", "fnmr_at_fmr_1e-3", "rank1_with_fta_as_miss", "genuine")}
        # Agreement of the int8 codes with the float filters (quantization damage).
        float_rec = Recognizer(FloatEmbedder(bank, manifest))
        agree = [float(np.mean(float_rec.features_from_hand(s.hand).codes[0] == s.features.codes[0]))
                 for s in held[sets[0]] if s.hand is not None][:50]

    model_path = args.out / MODEL_FILE
    model_path.write_bytes(model_bytes)
    manifest["size_bytes"] = len(model_bytes)
    manifest["ops"] = [{"name": op.name, "version": op.version} for op in model_ops(model_bytes)]
    manifest["tflite_runtime_2_14"] = check_tflite_214(model_path)
    manifest["training"] = {
        "command": "scripts/train_gabor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "fold": args.fold, "data": str(args.data), "held_out_fraction": args.held_out,
        "subjects": {name: s["train"] for name, s in split.items()},
        "same_person_labelled_twice": {name: [list(pair) for pair in pairs] for name, pairs in SAME_PERSON.items()},
        "held_out_subjects": {name: s["held_out"] for name, s in split.items()},
        "augmentation": f"{args.augment} copies per training ROI: rotation N(0,4 deg), shift N(0,3 px), scale 0.95-1.05, "
                        "gain 0.85-1.15, noise 2 grey levels",
        "synthetic_people": args.synthetic_people,
        "bank_selection": selection, "chosen": filters, "code_selection": code_selection,
        "int8_vs_float_code_agreement": round(float(np.mean(agree)), 4) if agree else None,
        "seconds": round(time.time() - started, 1),
    }
    manifest["metrics"] = {"held_out_enroll_1": held_metrics,
                           "training_people_enroll_1": {k: {a: b for a, b in public(v).items() if a != "operating_point"}
                                                        for k, v in train_metrics.items()}}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"held_out": held_metrics, "decision": decision, "bank": filters,
                      "size_bytes": len(model_bytes), "tflite_2_14": manifest["tflite_runtime_2_14"],
                      "seconds": manifest["training"]["seconds"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
