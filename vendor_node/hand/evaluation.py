"""`vendor-node eval`: how well the recognizer picks people from a folder of hand photos.

Enroll the first N images of each subject (sorted by path; with a ``session`` column: of its first
session, probing only the later sessions), probe with the rest, score every probe against every enrolled
template of its comparison group, and report genuine/impostor counts, EER, FNMR at FMR 1e-3 .. 1e-6 (each
with a ``_reliable`` flag), rank-1, FPIR and FNIR at the unit's operating policy (threshold + margin), an
open-set run (half the people enrolled, half strangers), failure to acquire, and per-image latency.
``--roi``: the images are already-aligned palm regions (hand finding skipped). ``--model DIR``: another
model folder; a learned embedding (format-2 manifest) is measured through ``evaluation_embedding``. The metric maths lives in ``evaluation_metrics`` so it
can be tested on plain score lists.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ImageFileError, HandRejected, UsageError
from .evaluation_embedding import FUSED, RoiInput, fusion_folder, open_set, rate, recognizer_for
from .evaluation_metrics import det_points, eer, fnmr_at_fmr, open_set_rates, policy_projection
from .dataset import Dataset, Sample, load_dataset, trained_subjects, tuned_subjects
from .evaluation_output import format_table, plot_det

__all__ = ["Sample", "Dataset", "load_dataset", "run_eval", "evaluate", "format_table", "trained_subjects"]

log = logging.getLogger(__name__)

# --- running the recognizer ---------------------------------------------------
@dataclass
class _Probe:
    sample: Sample
    features: object = None  # None when not acquired
    reason: str | None = None  # HandRejected reason or "unreadable"
    seconds: float = 0.0  # preprocess + model
    match_seconds: float | None = None  # 1:N identify against its gallery


@dataclass
class _Enrolled:
    subject: str
    template: bytes
    captured: list[datetime | None] = field(default_factory=list)


def _read_grey(path: Path):
    """The photo, or None (counted as "unreadable") with a warning naming what is wrong with the file."""
    from ..images import read_grey

    try:
        return read_grey(path)
    except ImageFileError as exc:
        log.warning("%s", exc)
        return None


def _progress(items, label: str):
    """A tqdm bar on stderr for long runs, when tqdm is installed (eval extra)."""
    if len(items) < 50 or not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=label, unit="img", file=sys.stderr, leave=False)


def run_eval(args, cfg) -> int:
    """The `vendor-node eval` command: measure, write the JSON report and DET plot, print a table."""
    import cv2

    from .recognition import MAX_ENROLL_IMAGES, Recognizer

    cv2.setNumThreads(1)  # latency is reported for one thread, as on the unit
    enroll_n = int(args.enroll)
    if not 1 <= enroll_n <= MAX_ENROLL_IMAGES:
        raise UsageError(f"--enroll must be 1 to {MAX_ENROLL_IMAGES} (the unit enrolls at most that many), got {enroll_n}")
    dataset = load_dataset(args.dataset)
    excluded: set[str] = set()
    if getattr(args, "exclude_trained", False) or getattr(args, "exclude_tuned", False):
        model_dir = getattr(args, "model", None) or cfg.unit.assets_dir
        models = [cfg.unit.assets_dir, fusion_folder(cfg.unit.assets_dir)] if str(model_dir) == FUSED else [model_dir]
        excluded = (set().union(*(trained_subjects(d, args.dataset) for d in models))
                    if getattr(args, "exclude_trained", False) else set())
        if getattr(args, "exclude_tuned", False):
            excluded |= tuned_subjects(cfg.unit.assets_dir, args.dataset)
        before = len(dataset)
        dataset = Dataset([s for s in dataset if s.subject not in excluded], dataset.problems, dataset.has_captured,
                          dataset.has_session)
        if not excluded:
            log.info("the manifest names no subject of %s as trained or tuned on: nothing excluded", args.dataset)
        log.info("excluded %d images of %d subjects the model was trained on or the preprocessing tuned on",
                 before - len(dataset), len(excluded))
        if not dataset:
            raise DatasetError(f"{args.dataset}: every subject was used to train the model or tune the "
                               "preprocessing; nothing is held out")
    for problem in dataset.problems[:10]:
        log.warning("%s", problem)
    if len(dataset.problems) > 10:
        log.warning("... and %d more problems (listed in the report)", len(dataset.problems) - 10)
    recognizer = recognizer_for(getattr(args, "model", None), cfg, Recognizer)
    if getattr(args, "roi", False):
        recognizer = RoiInput(recognizer)
    pairs = {frozenset(pair) for pair in (getattr(args, "same_person", None) or [])}
    debug_dir = getattr(args, "debug_dir", None)
    if getattr(args, "robustness", False):
        return _run_robustness(args, recognizer, dataset, enroll_n, pairs, excluded, debug_dir)
    on_image = _debug_writer(Path(debug_dir)) if debug_dir else None
    report = evaluate(recognizer, dataset, enroll_n, not_impostors=pairs, on_image=on_image)
    manifest = getattr(getattr(recognizer, "embedder", None), "manifest", {}) or {}
    report["model"] = {"file": manifest.get("model_file"), "sha256": manifest.get("sha256"),
                       "model_id": manifest.get("model_id"), "kind": manifest.get("kind", "palm_code")}
    report["roi_input"] = bool(getattr(args, "roi", False))
    report["not_compared"] = sorted(sorted(pair) for pair in pairs)
    report["dataset"] = str(args.dataset)
    report["excluded_trained_subjects"] = sorted(excluded)
    curves = report.pop("_curves")
    report_path = Path(args.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    det_path = report_path.with_suffix(".det.png")
    report["det_png"] = None
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")  # kept even if plotting fails
    print(format_table(report))
    try:
        report["det_png"] = plot_det(curves, report, det_path, title=f"{Path(args.dataset).name}, enroll {enroll_n}")
    except ImportError:
        print(f"report: {report_path}")
        raise DatasetError("drawing the DET curve needs matplotlib: pip install 'vendor-node[eval]' "
                           f"(the figures are in {report_path})") from None
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report: {report_path}" + (f"   DET: {det_path}" if report["det_png"] else ""))
    return 0


def _run_robustness(args, recognizer, dataset, enroll_n, pairs, excluded, debug_dir) -> int:
    from .robustness import format_robustness, robustness_rows

    writer = _debug_writer(Path(debug_dir)) if debug_dir else None
    on_image = None
    if writer is not None:
        on_image = lambda name, sample, image, probe: writer(sample, image, probe, name)  # noqa: E731
    rows = robustness_rows(evaluate, recognizer, dataset, enroll_n, pairs, on_image=on_image)
    report = {"created": datetime.now().isoformat(timespec="seconds"), "dataset": str(args.dataset),
              "enroll": enroll_n, "excluded_trained_subjects": sorted(excluded), "robustness": rows}
    report_path = Path(args.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(format_robustness(rows))
    print(f"report: {report_path}")
    return 0


def _debug_writer(folder: Path):
    """Writes each presented frame with what preprocessing found on it (debug_view) under ``folder``:
    ``[<probes>/]<subject>/<image>.png``, refused frames as ``<image>.refused-<reason>.png``."""
    from .debug_view import traced_extract, write_debug_image

    def write(sample: Sample, image, probe: _Probe, probes: str = "") -> None:
        _, trace, refusal = traced_extract(image)
        where = folder / probes.replace(" ", "_").replace("(", "").replace(")", "") if probes else folder
        name = Path(sample.path).stem + (f".refused-{refusal.reason}" if refusal else "") + ".png"
        write_debug_image(where / sample.subject / name, image, trace, f"{sample.subject} {Path(sample.path).name}")

    return write


def evaluate(recognizer, dataset: Dataset, enroll_n: int, make_gallery=None, not_impostors=(),
             probe_transform=None, acquired: dict | None = None, on_image=None) -> dict:
    """All figures for one dataset, as a JSON-ready dict (plus ``_curves`` for plotting).

    ``recognizer`` is a recognition.Recognizer: features(image), enroll_features([features]),
    score_matrix(probes, gallery), identify(features, gallery), threshold, margin;
    ``make_gallery`` turns {subject: template} into its gallery (Gallery.from_templates);
    ``not_impostors`` holds subject pairs (frozensets) that may be one person labelled twice;
    ``probe_transform(image, sample)`` changes probe images only (enrollment stays as photographed);
    ``acquired`` caches untransformed results by path between runs; ``on_image(sample, image, probe)``
    sees every image as it was presented (the debug view).
    """
    not_impostors = set(not_impostors)
    if make_gallery is None:
        from .recognition import Gallery

        make_gallery = getattr(recognizer, "make_gallery", None) or Gallery.from_templates

    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in dataset:
        groups[(sample.extra, sample.subject)].append(sample)
    split = {key: _enroll_and_probe(samples, enroll_n, dataset.has_session) for key, samples in groups.items()}
    enrolling_paths = {s.path for enrolling, _ in split.values() for s in enrolling}
    acquired = {} if acquired is None else acquired
    probes = {}
    in_use = enrolling_paths | {s.path for _, probing in split.values() for s in probing}
    for sample in _progress([s for s in dataset if s.path in in_use], "features"):
        transform = None if sample.path in enrolling_paths else probe_transform
        if transform is None and sample.path in acquired and on_image is None:
            probes[sample.path] = acquired[sample.path]
            continue
        probes[sample.path] = _acquire(recognizer, sample, transform, on_image)
        if transform is None:
            acquired[sample.path] = probes[sample.path]
    enrolled: dict[str, dict[str, _Enrolled]] = defaultdict(dict)  # extra -> subject -> template
    enroll_failures, probe_list = [], []
    for (extra, subject), (enrolling, probing) in sorted(split.items()):
        usable = [probes[s.path] for s in enrolling if probes[s.path].features is not None]
        if usable:
            template = recognizer.enroll_features([p.features for p in usable]).template
            enrolled[extra][subject] = _Enrolled(subject, template, [p.sample.captured for p in usable])
        else:
            enroll_failures.append(subject + (f" ({extra})" if extra else ""))
        probe_list += [probes[s.path] for s in probing]
    galleries = {extra: (list(members), make_gallery({k: e.template for k, e in members.items()}))
                 for extra, members in enrolled.items()}
    if hasattr(recognizer, "set_gallery_size"):  # an embedding's threshold follows the number enrolled
        recognizer.set_gallery_size(max((len(m) for m in enrolled.values()), default=1))
    genuine, impostor = [], []
    by_group: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    pairs: list[tuple[float, bool, str, str]] = []  # (score, genuine?, probe path, enrolled subject) for the report
    genuine_days: dict[str, list[float]] = {"same_day": [], "different_days": [], "unknown": []}
    mated_rows, nonmated_rows, match_seconds, open_rows = [], [], [], []
    for probe in _progress([p for p in probe_list if p.features is not None], "matching"):
        if probe.sample.extra not in galleries:
            continue
        subjects, gallery = galleries[probe.sample.extra]
        scores = np.asarray(recognizer.score_matrix([probe.features], gallery)[0], dtype=np.float64)
        start = time.perf_counter()
        recognizer.identify(probe.features, gallery)  # the unit's own 1:N path, timed
        probe.match_seconds = time.perf_counter() - start
        match_seconds.append(probe.match_seconds)
        if not_impostors:
            # Subjects declared possibly the same person: comparing them is neither genuine nor impostor.
            keep = [frozenset((probe.sample.subject, t)) not in not_impostors for t in subjects]
            scores = scores[keep]
            subjects = [t for t, k in zip(subjects, keep) if k]
        open_rows.append((scores, subjects, probe.sample.subject))
        mate = subjects.index(probe.sample.subject) if probe.sample.subject in subjects else -1
        for i, score in enumerate(scores):
            if i == mate:
                genuine.append(score)
                by_group[probe.sample.extra][0].append(score)
                pairs.append((float(score), True, str(probe.sample.path), subjects[i]))
                relation = _day_relation(probe.sample.captured, enrolled[probe.sample.extra][subjects[i]].captured)
                genuine_days[relation].append(score)
            else:
                impostor.append(score)
                by_group[probe.sample.extra][1].append(score)
                pairs.append((float(score), False, str(probe.sample.path), subjects[i]))
        if mate >= 0:
            mated_rows.append((scores, mate))
            nonmated_rows.append(np.delete(scores, mate))  # the same search with the mate not enrolled
        else:
            nonmated_rows.append(scores)
    report = _report(dataset, enroll_n, probes, probe_list, enroll_failures, genuine, impostor, genuine_days,
                     mated_rows, nonmated_rows, match_seconds, float(recognizer.threshold), float(recognizer.margin),
                     enrolled)
    threshold_for = getattr(recognizer, "threshold_for", lambda n: recognizer.threshold)
    report["open_set"] = open_set(open_rows, threshold_for, float(recognizer.margin))
    report["session_protocol"] = bool(dataset.has_session)
    # The pairs worth a look: genuine pairs scored lowest, impostor pairs scored highest.
    as_rows = lambda chosen: [{"probe": p, "enrolled": e, "score": round(v, 4)} for v, _, p, e in chosen]  # noqa: E731
    if len(by_group) > 1:  # e.g. the views of 11k_small: compared only within themselves
        report["by_group"] = {extra: _verification(g, i) for extra, (g, i) in sorted(by_group.items())}
    report["hardest_genuine"] = as_rows(sorted(x for x in pairs if x[1])[:10])
    report["closest_impostors"] = as_rows(sorted((x for x in pairs if not x[1]), reverse=True)[:10])
    return report


def _enroll_and_probe(samples: list[Sample], enroll_n: int, by_session: bool) -> tuple[list[Sample], list[Sample]]:
    """The first N images enroll (samples are sorted by path); with sessions: of the first session, and only
    the later sessions probe (the realistic case: the palm weeks after enrollment)."""
    if not by_session:
        return samples[:enroll_n], samples[enroll_n:]
    first = min(s.session for s in samples)
    return [s for s in samples if s.session == first][:enroll_n], [s for s in samples if s.session != first]


def _acquire(recognizer, sample: Sample, transform=None, on_image=None) -> _Probe:
    probe = _Probe(sample)
    image = _read_grey(sample.path)
    if image is None:
        probe.reason = "unreadable"
        return probe
    if transform is not None:
        image = transform(image, sample)
    start = time.perf_counter()
    try:
        probe.features = recognizer.features(image)
    except HandRejected as refusal:
        probe.reason = refusal.reason
    probe.seconds = time.perf_counter() - start
    if on_image is not None:
        on_image(sample, image, probe)
    return probe


def _day_relation(probe_time: datetime | None, enrolled_times: list[datetime | None]) -> str:
    if probe_time is None or not enrolled_times or any(t is None for t in enrolled_times):
        return "unknown"
    return "same_day" if any(t.date() == probe_time.date() for t in enrolled_times) else "different_days"


def _ms(values: list[float]) -> dict:
    if not values:
        return {"median": None, "p95": None, "count": 0}
    arr = np.asarray(values) * 1000.0
    return {"median": round(float(np.median(arr)), 2), "p95": round(float(np.percentile(arr, 95)), 2), "count": len(arr)}


def _verification(genuine, impostor) -> dict:
    g, i = np.asarray(genuine, float), np.asarray(impostor, float)
    out = {"genuine": int(g.size), "impostor": int(i.size)}
    if g.size and i.size:
        out["eer"] = round(eer(g, i), 5)
        for k in range(3, 7):
            value, reliable = fnmr_at_fmr(g, i, 10.0 ** -k)
            out[f"fnmr_at_fmr_1e-{k:02d}"] = round(value, 5)
            out[f"fnmr_at_fmr_1e-{k:02d}_reliable"] = reliable
    return out


def _report(dataset, enroll_n, probes, probe_list, enroll_failures, genuine, impostor, genuine_days,
            mated_rows, nonmated_rows, identify_seconds, threshold, margin, enrolled) -> dict:
    attempts = [p for p in probes.values() if p.reason != "unreadable"]
    failed = [p for p in attempts if p.features is None]
    reasons = Counter(p.reason for p in failed)
    unreadable = [str(p.sample.path) for p in probes.values() if p.reason == "unreadable"]
    mated_probes = [p for p in probe_list
                    if p.reason != "unreadable" and p.sample.subject in enrolled.get(p.sample.extra, {})]
    mated_failed = sum(1 for p in mated_probes if p.features is None)
    rank1_hits = sum(1 for scores, mate in mated_rows if int(np.argmax(scores)) == mate)
    rates = open_set_rates(mated_rows, nonmated_rows, threshold, margin)
    report = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "enroll": enroll_n,
        "images": len(probes),
        "subjects": len({(s.extra, s.subject) for s in dataset}),
        "groups": sorted({s.extra for s in dataset}),
        "enrolled_subjects": sum(len(g) for g in enrolled.values()),
        "problems": dataset.problems + [f"{p}: not readable as an image, skipped" for p in unreadable],
        "failure_to_acquire": round(len(failed) / len(attempts), 5) if attempts else None,
        "failure_reasons": dict(reasons.most_common()),
        "failed_images": [{"path": str(p.sample.path), "reason": p.reason} for p in failed],
        "failure_to_enroll": enroll_failures,
        # How the palm ROI was placed: "valleys" (fingers apart) or "axis" (fingers together).
        "alignment": dict(Counter(getattr(getattr(p.features, "hand", None), "alignment", "unknown")
                                  for p in attempts if p.features is not None)),
        "verification": _verification(genuine, impostor),
        "identification": {
            "mated_probes": len(mated_probes),
            "rank1": round(rank1_hits / len(mated_rows), 5) if mated_rows else None,
            "rank1_misses": rate(len(mated_rows) - rank1_hits, len(mated_rows)),
            "rank1_counting_fta": round(rank1_hits / len(mated_probes), 5) if mated_probes else None,
            "threshold": threshold,
            "margin": margin,
            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in rates.items()},
        },
        "latency_ms": {
            "features": _ms([p.seconds for p in attempts if p.features is not None]),
            "match": _ms(identify_seconds),
            "total": _ms([p.seconds + p.match_seconds for p in probe_list if p.match_seconds is not None]),
            "gallery_size": max((len(g) for g in enrolled.values()), default=0),
        },
    }
    if mated_probes:
        # Counting failures to acquire among mated probes as false negatives (what the employee sees).
        fnir = rates.get("fnir")
        if fnir is not None:
            acquired = len(mated_rows)
            report["identification"]["fnir_counting_fta"] = round((fnir * acquired + mated_failed) / len(mated_probes), 5)
    report["projection"] = {k: (float(f"{v:.4g}") if isinstance(v, float) else v)
                            for k, v in policy_projection(genuine, impostor, threshold).items()}
    if dataset.has_captured:
        report["by_capture_day"] = {k: _verification(v, impostor) for k, v in genuine_days.items()}
    report["_curves"] = {"all": det_points(genuine, impostor)}
    if dataset.has_captured and genuine_days["different_days"]:
        report["_curves"]["different days"] = det_points(genuine_days["different_days"], impostor)
    return report
