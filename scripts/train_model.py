#!/usr/bin/env python3
"""Train, export, calibrate and measure the learned int8 palm embedding (firmware_assets/palm-embed-N/).

Steps, each on its own people (Tongji palms split by PERSON: palms 2i and 2i+1 together; seeded):
  1. pretrain on synthetic palms (Bezier creases, scripts/palm_data.py) and the simulator's drawn hands,
  2. train on the TRAINING palms (both sessions; each palm mirrored is one more identity), CosFace margin loss,
     with the augmentation the unit needs (shift, rotation +-15 deg, scale 0.9-1.1, blur, contrast, gamma, noise),
  3. export a full-integer int8 TFLite model (int8 in and out, representative data from training palms only),
     check its op versions and run it under tflite-runtime 2.14 when that side venv exists,
  4. calibrate the threshold per false-match rate on the CALIBRATION palms' impostor scores (never trained on),
  5. measure the TEST palms only (enroll 1 from session 1, probe session 2), with counts and 95% upper bounds,
  6. write palm_embed_int8.tflite and a format-2 manifest.json that says all of the above.

    /work/venv-model/bin/python scripts/train_model.py --data ../shared/handdata --seed 7

Variants are chosen on the CALIBRATION palms only: every --evaluate-every steps the float network's session
protocol on them (EER, FNMR at FMR 1e-3) is logged and the network kept as <work>/checkpoint-<step>.npz;
--init-from starts phase 2 from another run's checkpoint (one pretraining shared by several phase-2 variants).

Needs the ``train`` extra (tensorflow-cpu, tqdm, ai-edge-litert). Resumable: a checkpoint is written to --work
every 100 steps and a rerun with the same arguments continues from it. About 30-40 minutes on 2 busy cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from palm_data import augment, hard_negative_batch, load_tongji, split_palms, synthetic_palm  # noqa: E402
from train_gabor import check_tflite_214, io_quantization  # noqa: E402
from training_metrics import all_pairs, fmr_points, session_protocol, template_scores, threshold_at  # noqa: E402
from vendor_node.hand.evaluation_embedding import rate, unit_levels  # noqa: E402
from vendor_node.hand.evaluation_metrics import eer, fnmr_at_fmr  # noqa: E402
from vendor_node.hand.model import Embedder, embedding_template, model_ops  # noqa: E402

MODEL_ID = "palm-embed-2"
MODEL_FILE = "palm_embed_int8.tflite"
DEFAULT_GALLERY = 1000  # employees the decision.threshold is set for: FMR = max_wrong_payer (1e-3) / 1000
MAX_WRONG_PAYER = 1e-3


def drawn_hand_rois(people: int, samples: int, progress) -> tuple[list[np.ndarray], list[int]]:
    """Palm ROIs the unit's preprocessing cuts from the simulator's drawn hands (legitimate for the demo only)."""
    from vendor_node.errors import HandRejected
    from vendor_node.hand.preprocess import extract_hand
    from vendor_node.sim.drawn_hands import draw_hand

    rois, labels = [], []
    for p in progress(range(people), desc="drawn hands"):
        for k in range(samples):
            try:
                rois.append(extract_hand(draw_hand(5000 + p, k)).roi)
                labels.append(p)
            except HandRejected:
                continue
    return rois, labels


def make_batches(args, synthetic: np.ndarray, synth_labels: np.ndarray, train_rois: np.ndarray,
                 train_labels: np.ndarray, train_palms: list[str] | None = None):
    """batches(phase, step): a seeded batch of augmented ROIs and class labels (mirrored palm = new class)."""
    from palm_net import to_input
    classes, synth_classes = int(train_labels.max()) + 1, int(synth_labels.max()) + 1
    by_class = {c: np.flatnonzero(train_labels == c) for c in range(classes)}

    def batches(phase: int, step: int):
        """Phase 0: synthetic only; phase 1: training palms, a --mix-synthetic share of synthetic ones after them
        (classes: palms, mirrored palms, synthetic, mirrored synthetic); with --hard-negatives whole people
        (both hands, as they are and mirrored: palm_data.hard_negative_batch)."""
        rng = np.random.default_rng([args.seed, step])
        x, y = [], []
        if phase == 1 and args.hard_negatives:
            per_class = args.hard_negatives
            for i, flip in hard_negative_batch(train_palms, by_class, rng, args.batch // (4 * per_class), per_class):
                roi = np.ascontiguousarray(train_rois[i][:, ::-1] if flip else train_rois[i])
                x.append(unit_levels(augment(roi, rng, session=args.session_aug)))
                y.append(int(train_labels[i]) + (classes if flip else 0))
            return to_input(np.stack(x)), np.array(y, np.int32)
        for _ in range(args.batch):
            synthetic_one = phase == 0 or rng.random() < args.mix_synthetic
            pool, labels, offset, n = ((synthetic, synth_labels, 0 if phase == 0 else 2 * classes, synth_classes)
                                       if synthetic_one else (train_rois, train_labels, 0, classes))
            i = int(rng.integers(0, len(pool)))
            flip = bool(rng.random() < 0.5)
            roi = pool[i][:, ::-1] if flip else pool[i]
            roi = augment(np.ascontiguousarray(roi), rng, session=args.session_aug)
            x.append(unit_levels(roi))  # the levels the unit's ROIs have
            y.append(offset + int(labels[i]) + (n if flip else 0))
        return to_input(np.stack(x)), np.array(y, np.int32)
    return batches


def calibration_figures(model, palms, calibrate: list[str]):
    """evaluate() for Trainer.run: the float network's session protocol on the CALIBRATION palms (enroll the
    first session-1 image, probe session 2): what variants and training lengths are chosen on, never test palms."""
    from palm_net import to_input
    names = [(p, s) for p in calibrate for s in sorted(palms[p]) for _ in palms[p][s]]
    x = to_input(np.stack([unit_levels(r) for p in calibrate for s in sorted(palms[p]) for r in palms[p][s]]))

    def evaluate() -> dict:
        e = np.concatenate([model(x[i:i + 100], training=False).numpy() for i in range(0, len(x), 100)])
        templates = np.stack([embedding_template(v) for v in e])
        run = session_protocol(templates, [n[0] for n in names], [n[1] for n in names], 2.0, 0.0)
        g, i = run["genuine"], run["impostor"]
        return {"eer": round(eer(g, i), 5), "fnmr_at_fmr_1e-3": round(fnmr_at_fmr(g, i, 1e-3)[0], 5),
                "fnmr_at_fmr_1e-4": round(fnmr_at_fmr(g, i, 1e-4)[0], 5), "rank1_misses": run["rank1_misses"],
                "genuine": int(g.size), "impostor": int(i.size)}
    return evaluate


def embed_all(embedder: Embedder, rois, progress, desc: str) -> np.ndarray:
    return np.stack([embedding_template(embedder.embed(r)) for r in progress(rois, desc=desc)])


def measure_test(templates, palms, sessions, decision) -> dict:
    """The issue's protocol on TEST palms: enroll 1 from session 1, probe session 2; plus all-pairs impostors."""
    threshold, margin = decision["threshold"], decision["margin"]
    run = session_protocol(templates, palms, sessions, threshold, margin)
    g, i = run["genuine"], run["impostor"]
    out = {"palms": len(set(palms)), "images": len(palms), "enrolled": run["enrolled"], "probes": run["probes"],
           "genuine": int(g.size), "impostor": int(i.size), "eer": round(eer(g, i), 6),
           "rank1": round(run["rank1"], 6), "rank1_misses": rate(run["rank1_misses"], run["probes"])}
    for k in range(3, 7):
        value, reliable = fnmr_at_fmr(g, i, 10.0 ** -k)
        out[f"fnmr_at_fmr_1e-0{k}"] = round(value, 6)
        out[f"fnmr_at_fmr_1e-0{k}_reliable"] = reliable
    _, pairs_impostor = all_pairs(templates, palms)
    accepted = run["accepted_right"]
    out["operating_point"] = {
        "threshold": threshold, "margin": margin, "gallery": run["enrolled"],
        "genuine_accepted_as_right_palm": {"count": accepted, "of": run["probes"],
                                           "rate": round(accepted / max(1, run["probes"]), 6)},
        "refused_or_wrong": rate(run["probes"] - accepted, run["probes"]),
        "wrong_palm_accepted": rate(run["accepted_wrong"], run["probes"]),
        "false_matches_all_test_pairs": rate(int(np.sum(pairs_impostor >= threshold)), pairs_impostor.size),
        "how": "probe session 2 against the session-1 gallery of all test palms: accepted when the best score "
               ">= threshold, beats the runner-up by the margin and is the right palm; false matches counted over "
               "every impostor pair of test images (both sessions)"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "handdata", help="handdata root")
    parser.add_argument("--model-id", default=MODEL_ID, help="the manifest's model_id (a new id for every new model)")
    parser.add_argument("--out", type=Path, help="default firmware_assets/<model-id>")
    parser.add_argument("--work", type=Path, help="checkpoints; default build/train-<model-id>")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--calibrate-palms", type=int, default=60)
    parser.add_argument("--test-palms", type=int, default=90)
    parser.add_argument("--synthetic-ids", type=int, default=4000)
    parser.add_argument("--synthetic-samples", type=int, default=4)
    parser.add_argument("--generator", type=int, choices=(1, 2), default=2, help="palm_data.synthetic_palm version")
    parser.add_argument("--drawn-people", type=int, default=60, help="simulator hands in pretraining (demo only)")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--head", choices=("flatten", "gdc"), default="flatten", help="see palm_net.build_embedder")
    parser.add_argument("--pretrain-margin", type=float, default=0.3,
                        help="CosFace margin of phase 1 (a smaller one escapes the start's plateau on many classes)")
    parser.add_argument("--margin", type=float, default=0.3, help="CosFace margin of phase 2")
    parser.add_argument("--dim", type=int, default=128, help="embedding size (template bytes)")
    parser.add_argument("--dropout", type=float, help="before the embedding; default the head's own")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay (0: Adam)")
    parser.add_argument("--session-aug", type=float, default=0.0,
                        help="share of samples given a session change (elastic warp, uneven light)")
    parser.add_argument("--hard-negatives", type=int, default=0, metavar="K",
                        help="phase-2 batches of whole people (both hands, mirrored too), K images per identity "
                             "(0: uniform batches)")
    parser.add_argument("--pair-weight", type=float, default=0.0,
                        help="weight of a batch-hard triplet loss (cosine margin --pair-margin) added in phase 2")
    parser.add_argument("--pair-margin", type=float, default=0.3)
    parser.add_argument("--init-from", type=Path, help="phase 2 starts from this checkpoint's network")
    parser.add_argument("--export-snapshot", type=Path,
                        help="no training: export, calibrate and measure this <work>/checkpoint-<step>.npz network "
                             "(the training length chosen on the calibration palms' figures)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads (the machine is shared)")
    parser.add_argument("--evaluate-every", type=int, default=500, help="calibration figures every N steps")
    parser.add_argument("--mix-synthetic", type=float, default=0.0,
                        help="share of synthetic palms in phase-2 batches (keeps the features general)")
    parser.add_argument("--unit-calibrate", default="coep_dev",
                        help="whole-hand sets whose people are split: half calibrate the threshold through the unit's "
                             "own preprocessing (its palm regions differ from Tongji's), half stay for testing")
    parser.add_argument("--recalibrate", action="store_true",
                        help="no training: calibrate and measure the model already in --out again")
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "firmware_assets" / args.model_id
    args.work = args.work or REPO / "build" / f"train-{args.model_id}"
    if args.dim * 1 > 256:
        parser.error(f"--dim {args.dim}: a template is at most 256 bytes")
    tongji = args.data / "tongji_dev"
    if not (tongji / "manifest.csv").is_file():
        parser.error(f"--data {args.data}: no tongji_dev/manifest.csv")
    import tensorflow as tf
    from tqdm import tqdm

    import palm_net

    def progress(items=None, **kw):
        return tqdm(items, leave=False, file=sys.stderr, **kw)

    started = time.time()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(args.seed)
    palms = load_tongji(tongji)
    split = split_palms(sorted(palms), args.seed, args.calibrate_palms, args.test_palms)
    if args.recalibrate:
        old = json.loads((args.out / "manifest.json").read_text())
        model_bytes = (args.out / MODEL_FILE).read_bytes()
        return finish(args, model_bytes, old["training"], palms, split, progress, started)
    train_rois, train_labels = [], []
    for c, palm in enumerate(split["train"]):
        for session in sorted(palms[palm]):
            train_rois += palms[palm][session]
            train_labels += [c] * len(palms[palm][session])
    train_rois, train_labels = np.stack(train_rois), np.array(train_labels)
    synthetic = [synthetic_palm(i, k, args.seed, args.generator)
                 for i in progress(range(args.synthetic_ids), desc="synthetic palms")
                 for k in range(args.synthetic_samples)]
    synth_labels = [i for i in range(args.synthetic_ids) for _ in range(args.synthetic_samples)]
    drawn, drawn_labels = drawn_hand_rois(args.drawn_people, 4, progress) if args.drawn_people else ([], [])
    synthetic = np.stack(synthetic + drawn)
    synth_labels = np.array(synth_labels + [args.synthetic_ids + d for d in drawn_labels])

    model = palm_net.build_embedder(dim=args.dim, head=args.head, dropout=args.dropout)
    synth_classes = 2 * (int(synth_labels.max()) + 1)
    heads = [palm_net.CosFaceHead(args.dim, synth_classes, args.seed, margin=args.pretrain_margin),
             palm_net.CosFaceHead(args.dim, 2 * len(split["train"]) + (synth_classes if args.mix_synthetic else 0),
                                  args.seed + 1, margin=args.margin, pair_weight=args.pair_weight,
                                  pair_margin=args.pair_margin)]
    args.work.mkdir(parents=True, exist_ok=True)
    trainer = palm_net.Trainer(model, heads, [args.pretrain_steps, args.steps], args.lr, args.work / "checkpoint.npz",
                               args.weight_decay)
    resumed = trainer.restore()
    if args.export_snapshot:
        trainer.start_from(args.export_snapshot)
        trainer.step = sum(trainer.steps)
    elif not resumed and args.init_from:
        trainer.start_from(args.init_from)
    log = trainer.run(make_batches(args, synthetic, synth_labels, train_rois, train_labels, split["train"]),
                      progress=lambda **kw: tqdm(file=sys.stderr, **kw),
                      evaluate=calibration_figures(model, palms, split["calibrate"]),
                      evaluate_every=args.evaluate_every)
    train_seconds = time.time() - started

    rng = np.random.default_rng(args.seed)
    representative = [unit_levels(augment(train_rois[i], rng, 0.5)) for i in rng.permutation(len(train_rois))[:300]]
    model_bytes = palm_net.export_int8(model, representative)
    training = {
        "what": "oriented filters (Gabor-initialised, 9x9 stride 2, 12 orientations) + softmax competition across "
                f"orientations, depthwise-separable trunk to 8x8, head {args.head!r}, dropout {args.dropout}, "
                f"{args.dim}-d embedding; CosFace loss (s 32, m {args.margin}); "
                f"{'AdamW weight decay %g' % args.weight_decay if args.weight_decay else 'Adam'} "
                "with cosine learning rate; phase 1 synthetic palms (generator version "
                f"{args.generator}) + simulator drawn hands, phase 2 Tongji training palms (mirrored palm = extra "
                "identity) with a --mix-synthetic share of synthetic",
        "pretrain_margin": args.pretrain_margin, "margin": args.margin, "dim": args.dim, "dropout": args.dropout,
        "weight_decay": args.weight_decay, "generator": args.generator,
        "session_aug": args.session_aug,
        "exported_snapshot": str(args.export_snapshot) if args.export_snapshot else None,
        "init_from": str(args.init_from) if args.init_from else None,
        "steps": [args.pretrain_steps, args.steps], "batch": args.batch, "lr": args.lr, "head": args.head,
        "mix_synthetic": args.mix_synthetic, "hard_negatives_per_identity": args.hard_negatives,
        "pair_loss": {"weight": args.pair_weight, "margin": args.pair_margin},
        "epochs_phase2": round(args.steps * args.batch / len(train_rois), 1),
        "data": {"tongji_train_palms": len(split["train"]), "tongji_train_images": int(len(train_rois)),
                 "synthetic_ids": args.synthetic_ids, "synthetic_samples": args.synthetic_samples,
                 "drawn_hand_people": args.drawn_people},
        "augmentation": "shift N(0,4 px), rotation +-15 deg, scale 0.9-1.1, Gaussian blur sigma 0.3-1.5 (half), "
                        "contrast 0.7-1.3, brightness N(0,12), gamma 0.75-1.33, noise 0-4 grey levels; with "
                        "probability session_aug first an elastic warp (0.5-2 px smooth field) and uneven light "
                        "(up to 16 grey levels); then the unit's grey levels (mean 128, sd 40, as "
                        "palm_square.cut_roi) for every ROI, trained or measured",
        "seed": args.seed, "resumed_from_checkpoint": resumed, "loss_log": log,
        "seconds_training": round(train_seconds, 1),
        "command": "scripts/train_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": "2 cores shared with other work",
    }
    return finish(args, model_bytes, training, palms, split, progress, started)


def unit_path_calibration(args, embedder, progress) -> tuple[dict, dict]:
    """Per --unit-calibrate set: half its people (seeded, people labelled twice together) calibrate through the
    unit's own preprocessing; returns ({set: fmr curve}, {set: {"calibrate": [...], "test": [...]}})."""
    from train_gabor import load_set, split_subjects
    from training_metrics import SAME_PERSON

    curves, people = {}, {}
    for name in [n for n in args.unit_calibrate.split(",") if n]:
        samples = load_set(args.data, name, lambda rows, desc: progress(rows, desc=desc))
        test, calibrate = split_subjects(samples, 0.5, args.seed)
        people[name] = {"calibrate": calibrate, "test": test}
        chosen = [s for s in samples if s.subject in set(calibrate) and s.hand is not None]
        templates = embed_all(embedder, [s.hand.roi for s in chosen], progress, f"int8 {name} calibrate")
        scores = template_scores(templates, templates)
        upper = np.triu_indices(len(chosen), 1)
        twins = {frozenset(pair) for pair in SAME_PERSON.get(name, [])}
        impostor = [scores[i, j] for i, j in zip(*upper) if chosen[i].subject != chosen[j].subject
                    and frozenset((chosen[i].subject, chosen[j].subject)) not in twins]
        curves[name] = fmr_points(np.array(impostor))
    return curves, people


def finish(args, model_bytes: bytes, training: dict, palms, split, progress, started) -> int:
    """Calibrate on the calibration people, measure the test palms, write the model and its manifest."""
    import palm_net

    q_in, q_out = io_quantization(model_bytes)
    dim = int(training.get("dim", 128))
    manifest = {
        "format": 2, "model_id": args.model_id, "kind": "embedding", "model_file": MODEL_FILE,
        "sha256": hashlib.sha256(model_bytes).hexdigest(), "size_bytes": len(model_bytes),
        "input": {"shape": [1, 128, 128, 1], "dtype": "int8", **q_in,
                  "pixel_offset": palm_net.PIXEL_OFFSET, "pixel_divisor": palm_net.PIXEL_DIVISOR},
        "output": {"shape": [1, dim], "dtype": "int8", **q_out},
        "embedding": {"dim": dim, "template": "int8 of 127*e/|e|", "score": "cosine of the int8 templates"},
        "decision": {"threshold": 0.5, "margin": 0.0, "min_threshold": 0.0, "min_margin": 0.0,
                     "fmr_points": [[1e-3, 0.5]]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MODEL_FILE).write_bytes(model_bytes)
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest))
        embedder = Embedder.load(tmp)
        sides = {}
        for side in ("calibrate", "test"):
            names = [(p, s) for p in split[side] for s in sorted(palms[p]) for _ in palms[p][s]]
            rois = [unit_levels(roi) for p in split[side] for s in sorted(palms[p]) for roi in palms[p][s]]
            sides[side] = (embed_all(embedder, rois, progress, f"int8 {side}"), [n[0] for n in names],
                           [n[1] for n in names])
        timing = []
        for roi in rois[:300]:
            t0 = time.perf_counter()
            embedder.embed(roi)
            timing.append(time.perf_counter() - t0)
        unit_curves, unit_people = unit_path_calibration(args, embedder, progress)

    # Calibration: impostor scores of the calibration people only, per domain; the threshold at each FMR is the
    # highest any domain needs (Tongji's regions and the unit's own differ: one domain's threshold can fail the other).
    cal_t, cal_palms, cal_sessions = sides["calibrate"]
    cal_genuine, cal_impostor = all_pairs(cal_t, cal_palms)
    domains = {"tongji_dev": fmr_points(cal_impostor), **unit_curves}
    curve = {"fmr_points": [[p[0], max(d["fmr_points"][k][1] for d in domains.values())]
                            for k, p in enumerate(domains["tongji_dev"]["fmr_points"])]}
    curve["fmr_point_sources"] = [
        max(((d["fmr_points"][k][1], f"{name}: {d['fmr_point_sources'][k]}") for name, d in domains.items()))[1]
        for k in range(len(curve["fmr_points"]))]
    curve["measured_down_to"] = domains["tongji_dev"]["measured_down_to"]
    curve["calibration_impostors"] = {name: d["calibration_impostors"] for name, d in domains.items()}
    curve["domains"] = domains
    cal_run = session_protocol(cal_t, cal_palms, cal_sessions, -1.0, 0.0)
    gallery_fmr = MAX_WRONG_PAYER / DEFAULT_GALLERY
    threshold = round(threshold_at(curve["fmr_points"], gallery_fmr), 5)
    if threshold > 1.0:  # a cosine never exceeds 1: the unit would refuse the manifest (hand/model.read_manifest)
        needs = ", ".join(f"{name} {threshold_at(d['fmr_points'], gallery_fmr):.3f}" for name, d in domains.items())
        raise SystemExit(f"decision.threshold {threshold}: at FMR {gallery_fmr:g} the calibration people's impostor "
                         f"scores need a cosine above 1 ({needs}): this network cannot hold that false-match rate on "
                         f"them; no model written (its checkpoints stay in {args.work})")
    gaps = cal_run["gaps"][cal_run["genuine"] >= threshold]
    margin = round(float(min(0.05, max(0.01, np.quantile(gaps, 0.005)))) if gaps.size else 0.03, 4)
    manifest["decision"] = {
        "threshold": threshold, "margin": margin,
        "min_threshold": round(threshold_at(curve["fmr_points"], 1e-4), 5), "min_margin": 0.01,
        "default_gallery": DEFAULT_GALLERY, "max_wrong_payer": MAX_WRONG_PAYER, **curve,
        "calibration_genuine": int(cal_genuine.size),
        "how": f"fmr_points: at each FMR the highest threshold of two domains: every impostor pair of the "
               f"{len(split['calibrate'])} Tongji calibration palms' images (both sessions), and every impostor pair "
               f"of the --unit-calibrate people ({args.unit_calibrate}) through the unit's own preprocessing; none of "
               "them trained on or tested; counted where there are >= 3/fmr scores, an exponential tail fit beyond "
               "(fmr_point_sources says which domain and how; measured_down_to is Tongji's); threshold = the point at "
               f"fmr = max_wrong_payer / {DEFAULT_GALLERY} enrolled, log10-interpolated; min_threshold = the point "
               "at fmr 1e-4; margin = the 0.5% quantile of the calibration palms' genuine-over-runner-up gaps "
               "(session 1 enrolled, session 2 probed) among scores above the threshold, clipped to 0.01..0.05"}
    g, i = cal_run["genuine"], cal_run["impostor"]
    manifest["calibration_palms"] = {
        "eer": round(eer(g, i), 6), "rank1_misses": rate(cal_run["rank1_misses"], cal_run["probes"]),
        **{f"fnmr_at_fmr_1e-0{k}": round(fnmr_at_fmr(g, i, 10.0 ** -k)[0], 6) for k in (3, 4)},
        "genuine": int(g.size), "impostor": int(i.size),
        "how": "the int8 model on the Tongji CALIBRATION palms (enroll the first session-1 image, probe session 2): "
               "what a new model is compared on before any test palm is looked at"}
    held_out = measure_test(*sides["test"], manifest["decision"])
    held_out["model_alone_ms"] = {"p50": round(1e3 * float(np.percentile(timing, 50)), 3),
                                  "p95": round(1e3 * float(np.percentile(timing, 95)), 3),
                                  "how": "Embedder.embed on 300 test ROIs, one thread, machine shared (busy)"}
    manifest["split"] = {**split, "seed": args.seed, "set": "tongji_dev", "unit_path": unit_people,
                         "how": "Tongji palms by person (palms 2i and 2i+1 together), seeded permutation of people: "
                                "train on 'train', calibrate the threshold on 'calibrate', report only 'test'; "
                                "unit_path: whole-hand sets whose 'calibrate' people also set the threshold (through "
                                "the unit's preprocessing), their 'test' people measured by vendor-node eval "
                                "--exclude-trained"}
    manifest["held_out"] = {"tongji_dev_test": held_out}
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / MODEL_FILE
    model_path.write_bytes(model_bytes)
    manifest["ops"] = [{"name": op.name, "version": op.version} for op in model_ops(model_bytes)]
    manifest["tflite_runtime_2_14"] = check_tflite_214(model_path)
    manifest["training"] = training
    if args.recalibrate:
        training["recalibrated"] = "scripts/train_model.py " + " ".join(sys.argv[1:])
    training["seconds_total"] = round(time.time() - started, 1)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({"held_out": held_out, "decision": {k: v for k, v in manifest["decision"].items() if k != "how"},
                      "size_bytes": len(model_bytes), "tflite_2_14": manifest["tflite_runtime_2_14"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
