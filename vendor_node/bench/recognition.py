"""`vendor-node bench recognition`: preprocess, model and 1:N match latency, and memory, on one thread.

Probes are hands the project draws (sim/drawn_hands.py), so the figures need no photos;
galleries of 100, 1,000 and 10,000 are filled with random palm codes around the
probes' own templates (1:N cost depends on the gallery's size, not on who is in it).
Target: preprocess + model + match against 1,000 templates at most 30 ms p95 on the
2-core dev machine, one thread (the Pi 4 is several times slower; 300 ms budget there).
"""
from __future__ import annotations

import os
import resource
import time
import tracemalloc

import numpy as np

from .figures import record

TOTAL_TARGET_MS = 30.0
GALLERY_SIZES = (100, 1000, 10000)
MAX_TEMPLATE_BYTES = 1024
MAX_MODEL_BYTES = 1024 * 1024


def _ms(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.median(arr)), float(np.percentile(arr, 95))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _random_templates(recognizer, count: int, rng: np.random.Generator) -> dict[str, bytes]:
    """Well-formed templates with random codes and masks, as many as the gallery needs."""
    from ..hand.recognition import Template

    h, w = recognizer.grid
    out = {}
    for i in range(count):
        code = rng.integers(0, 6, size=(h, w), dtype=np.uint8)
        valid = rng.random((h, w)) < 0.8
        geometry = np.zeros(0, np.float32)
        out[f"synthetic-{i:05d}"] = Template(code, valid, geometry, 1, recognizer.feature_id).to_bytes()
    return out


def run(args, cfg) -> int:
    import cv2

    from ..sim import drawn_hands
    from ..hand.preprocess import extract_hand
    from ..hand.recognition import Gallery, Recognizer

    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    probes_n = int(getattr(args, "probes", 0) or 40)
    rss_start = _rss_mb()
    recognizer = Recognizer.from_config(cfg)
    model_bytes = recognizer.embedder.model_path.stat().st_size
    rss_model = _rss_mb()
    frames = [drawn_hands.draw_hand(person, 0) for person in range(probes_n)]
    enroll_frames = [drawn_hands.draw_hand(person, 1) for person in range(probes_n)]
    rss_frames = _rss_mb()
    own = {f"person-{p}": recognizer.enroll([frame]).template for p, frame in enumerate(enroll_frames)}
    for frame in frames[:3]:  # warm up caches and the interpreter
        recognizer.features(frame)

    pre_t, model_t, hands = [], [], []
    for frame in frames:
        start = time.perf_counter()
        hand = extract_hand(frame)
        mid = time.perf_counter()
        features = recognizer.features_from_hand(hand)
        end = time.perf_counter()
        pre_t.append(mid - start)
        model_t.append(end - mid)
        hands.append(features)

    rng = np.random.default_rng(0)
    rows = [("preprocess (640x480)", *_ms(pre_t), None), ("model + palm code", *_ms(model_t), None)]
    results = {}
    rss_gallery = {}
    for size in GALLERY_SIZES:
        templates = dict(own)
        templates.update(_random_templates(recognizer, size - len(own), rng))
        gallery = Gallery.from_templates(templates)
        match_t, hits = [], 0
        for p, features in enumerate(hands):
            start = time.perf_counter()
            result = recognizer.identify(features, gallery)
            match_t.append(time.perf_counter() - start)
            hits += result.employee_id == f"person-{p}"
        results[size] = (match_t, hits)
        rss_gallery[size] = _rss_mb()
        rows.append((f"1:N match vs {size:,}", *_ms(match_t), None))
        if size == 1000:
            total_t = []
            for frame in frames:
                start = time.perf_counter()
                recognizer.identify(recognizer.features(frame), gallery)
                total_t.append(time.perf_counter() - start)
            rows.append(("preprocess + model + match vs 1,000", *_ms(total_t), TOTAL_TARGET_MS))
        if size == GALLERY_SIZES[-1]:
            tracemalloc.start()
            recognizer.identify(hands[0], gallery)
            _, identify_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            gallery_bytes = gallery.planes.nbytes + gallery.masks.nbytes
        del gallery, templates

    print(f"vendor-node bench recognition: {probes_n} drawn probes, one thread (cv2 threads {cv2.getNumThreads()})")
    print(f"{'stage':40} {'median ms':>10} {'p95 ms':>9} {'target':>8} {'p95/target':>11}")
    for name, median, p95, target in rows:
        record(name + ", p95", p95, "ms", target or None, median=median)
        target_text = f"{target:.0f}" if target else "-"
        ratio = f"{p95 / target:.2f}" if target else "-"
        print(f"{name:40} {median:10.2f} {p95:9.2f} {target_text:>8} {ratio:>11}")
    template_bytes = max(len(t) for t in own.values())
    record("template bytes", template_bytes, "B", MAX_TEMPLATE_BYTES)
    record("model file bytes", model_bytes, "B", MAX_MODEL_BYTES)
    record("gallery arrays at 10,000", gallery_bytes / 2**20, "MiB")
    record("identify peak allocation at 10,000", identify_peak / 2**20, "MiB")
    for size in GALLERY_SIZES:
        record(f"peak RSS after {size:,} templates", rss_gallery[size], "MiB")
    for size, (_, hits) in results.items():
        record(f"probes found their own template vs {size:,}", hits, "of", None, probes=probes_n)
    print()
    print(f"{'size / memory':40} {'value':>10} {'limit':>9} {'ratio':>8}")
    print(f"{'template bytes':40} {template_bytes:10d} {MAX_TEMPLATE_BYTES:9d} {template_bytes / MAX_TEMPLATE_BYTES:8.2f}")
    print(f"{'model file bytes':40} {model_bytes:10d} {MAX_MODEL_BYTES:9d} {model_bytes / MAX_MODEL_BYTES:8.2f}")
    print(f"{'gallery arrays at 10,000 (MiB)':40} {gallery_bytes / 2**20:10.2f} {'-':>9} {'-':>8}")
    print(f"{'identify peak allocation at 10,000 (MiB)':40} {identify_peak / 2**20:10.2f} {'-':>9} {'-':>8}")
    sizes = " / ".join(f"{rss_gallery[size]:.0f}" for size in GALLERY_SIZES)
    print(f"{'peak RSS (MiB): start, model, drawn probes':40} {rss_start:.0f}, {rss_model:.0f}, {rss_frames:.0f}")
    print(f"{'peak RSS (MiB) after 100 / 1,000 / 10,000':40} {sizes}")
    for size, (_, hits) in results.items():
        print(f"{f'probes found their own template vs {size:,}':40} {hits:10d} of {probes_n}")
    total_p95 = next(p95 for name, _, p95, target in rows if target)
    verdict = "within" if total_p95 <= TOTAL_TARGET_MS else "OVER"
    print(f"preprocess + model + match vs 1,000: p95 {total_p95:.1f} ms, {verdict} the {TOTAL_TARGET_MS:.0f} ms target")
    return 0
