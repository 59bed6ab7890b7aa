"""`vendor-node bench recognition`: preprocess, model and 1:N latency, gallery memory, on one thread.

Probes for the end-to-end figure are hands the project draws (sim/drawn_hands.py), so no photos are
needed; the 1:N figures use galleries of 1,000 / 10,000 / 100,000 random int8 templates (1:N cost depends
on the gallery's size, not on who is in it), each probe a noisy copy of one enrolled row so every search
has a right answer. In the same run a plain brute-force numpy search (float32 matrix of the same vectors,
cosine to every row, full sort) is timed on the same probes: the ratio is what the int8 matrix and the
top-two pass buy. Memory is what building the gallery keeps, by tracemalloc, per 1,000 templates.
Targets (this 2-core machine, one thread): 1:N p95 <= 5 ms at 10,000 and <= 50 ms at 100,000; gallery
<= 1 MiB per 1,000 templates; preprocess + model + match against 1,000 <= 30 ms p95.
"""
from __future__ import annotations

import ctypes
import os
import resource
import time
import tracemalloc

import numpy as np

from .figures import record

TOTAL_TARGET_MS = 30.0
SEARCH_TARGETS_MS = {1_000: None, 10_000: 5.0, 100_000: 50.0}
MEMORY_TARGET_KIB = 1024.0  # per 1,000 templates
MAX_TEMPLATE_BYTES = 256
MAX_MODEL_BYTES = 1024 * 1024
SEARCH_PROBES = 200


def one_blas_thread() -> str:
    """Limit numpy's OpenBLAS to one thread (the unit's budget is one core); what was done, for the report."""
    paths = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                return f"OpenBLAS limited to 1 thread ({os.path.basename(path)})"
    return "BLAS threads not limited (no OpenBLAS found): set OPENBLAS_NUM_THREADS=1"


def _ms(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.median(arr)), float(np.percentile(arr, 95))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def brute_force_best(matrix: np.ndarray, probe: np.ndarray) -> tuple[int, float, float]:
    """The plain baseline: cosine of the probe with every row of a float32 matrix, then a full sort."""
    p = probe.astype(np.float32)
    scores = (matrix @ p) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(p))
    order = np.argsort(-scores)
    return int(order[0]), float(scores[order[0]]), float(scores[order[1]])


def bench_search(size: int, rng: np.random.Generator, dim: int = 128) -> dict:
    """Build a gallery of ``size`` random v2 templates (memory by tracemalloc), then time 1:N against brute force."""
    from ..hand.gallery import Gallery
    from ..hand.model import embedding_template
    from ..hand.templates import EmbeddingTemplate, model_tag

    tag = model_tag("bench")
    vectors = np.clip(np.round(rng.normal(0, 127 / np.sqrt(dim), (size, dim))), -127, 127).astype(np.int8)
    ids = [f"employee-{i:06d}" for i in range(size)]
    blobs = [EmbeddingTemplate(v, tag).to_bytes() for v in vectors]
    start = time.perf_counter()
    Gallery.from_rows(ids, blobs)
    build_s = time.perf_counter() - start
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    gallery = Gallery.from_rows(ids, blobs)
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    del blobs
    bank = gallery.embeddings[tag]
    targets = rng.integers(0, size, SEARCH_PROBES)
    probes = [embedding_template(vectors[t].astype(np.float32) + rng.normal(0, 5, dim)) for t in targets]  # cos ~0.9
    matrix = vectors.astype(np.float32)  # the baseline's own copy, made once (not timed)
    for probe in probes[:5]:  # warm-up
        bank.best_two(probe)
        brute_force_best(matrix, probe)
    ours, base, ours_cpu, base_cpu, agree, right = [], [], [], [], 0, 0
    for target, probe in zip(targets, probes):
        t0, c0 = time.perf_counter(), time.thread_time()
        row, best, _ = bank.best_two(probe)
        t1, c1 = time.perf_counter(), time.thread_time()
        brow, bbest, _ = brute_force_best(matrix, probe)
        t2, c2 = time.perf_counter(), time.thread_time()
        ours.append(t1 - t0)
        base.append(t2 - t1)
        ours_cpu.append(c1 - c0)  # this thread's CPU time: what a busy machine's preemption does not inflate
        base_cpu.append(c2 - c1)
        agree += bank.ids[row] == ids[brow] and abs(best - bbest) < 1e-5
        right += bank.ids[row] == ids[target]
    return {"size": size, "ours": _ms(ours), "brute": _ms(base), "ours_cpu": _ms(ours_cpu), "brute_cpu": _ms(base_cpu),
            "kib_per_1000": held / 1024 / (size / 1000),
            "build_ms": build_s * 1000, "agree": agree, "right": right, "probes": len(probes)}


def run(args, cfg) -> int:
    import cv2

    from ..sim import drawn_hands
    from ..hand.recognition import Gallery, Recognizer

    cv2.setNumThreads(1)
    threads = one_blas_thread()
    probes_n = int(getattr(args, "probes", 0) or 40)
    rss_start = _rss_mb()
    recognizer = Recognizer.from_config(cfg)
    model_bytes = recognizer.embedder.model_path.stat().st_size
    frames = [drawn_hands.draw_hand(person, 0) for person in range(probes_n)]
    own = {f"person-{p}": recognizer.enroll([drawn_hands.draw_hand(p, 1)]).template for p in range(probes_n)}
    for frame in frames[:3]:  # warm up caches and the interpreter
        recognizer.features(frame)
    pre_t, model_t, hands = [], [], []
    for frame in frames:
        start = time.perf_counter()
        hand = recognizer.palm_finder.find(frame)  # the unit's own palm finding (landmark model first, if shipped)
        mid = time.perf_counter()
        hands.append(recognizer.features_from_hand(hand))
        model_t.append(time.perf_counter() - mid)
        pre_t.append(mid - start)
    gallery = Gallery.from_templates({**own, **_fillers(recognizer, own, 1000 - len(own))})
    total_t, hits = [], 0
    for p, frame in enumerate(frames):
        start = time.perf_counter()
        match = recognizer.identify(recognizer.features(frame), gallery)
        total_t.append(time.perf_counter() - start)
        hits += match.employee_id == f"person-{p}"
    rss_model = _rss_mb()
    rng = np.random.default_rng(0)
    searches = [bench_search(size, rng) for size in SEARCH_TARGETS_MS]
    from ..hand.bit_search import KERNEL

    print(f"vendor-node bench recognition: model {recognizer.model_id}, {probes_n} drawn probes; one thread "
          f"(cv2 threads {cv2.getNumThreads()}; {threads}); palm-code 1:N kernel: {KERNEL}")
    rows = [("preprocess (640x480)", *_ms(pre_t), None), (f"model ({recognizer.model_id}) + template", *_ms(model_t), None),
            ("preprocess + model + match vs 1,000", *_ms(total_t), TOTAL_TARGET_MS)]
    print(f"{'stage':44} {'median ms':>10} {'p95 ms':>9} {'target':>8} {'p95/target':>11}")
    for name, median, p95, target in rows:
        record(name + ", p95", p95, "ms", target, median=median)
        print(f"{name:44} {median:10.2f} {p95:9.2f} {target or '-':>8} {p95 / target if target else '-':>11.4}")
    print(f"drawn probes found their own template among 1,000: {hits} of {probes_n}")
    by_landmarks = sum(getattr(getattr(h, "hand", None), "alignment", "") == "landmarks" for h in hands)
    print(f"palm found: {len(hands)} of {probes_n} frames, {by_landmarks} by the landmark model "
          f"({'named in models.json' if recognizer.palm_finder.landmarks else 'not named in models.json'}), the rest by the classical path")
    record("palm found by the landmark model", by_landmarks, "of", None, frames=len(hands))
    record("drawn probes found their own template vs 1,000", hits, "of", None, probes=probes_n)
    print()
    print(f"1:N search, {SEARCH_PROBES} probes each (int8 gallery vs plain numpy brute force, same vectors):")
    print(f"{'templates':>10} {'p50 ms':>8} {'p95 ms':>8} {'target':>7} {'brute p50':>10} {'brute p95':>10} "
          f"{'brute/ours p95':>15} {'KiB/1,000':>10} {'same answer':>12} {'build ms':>9} {'right':>8}")
    for s in searches:
        target = SEARCH_TARGETS_MS[s["size"]]
        ratio = s["brute"][1] / s["ours"][1]
        record(f"1:N p95 at {s['size']:,}", s["ours"][1], "ms", target, median=s["ours"][0],
               brute_force_p95_ms=s["brute"][1], brute_force_median_ms=s["brute"][0], speedup_p95=ratio,
               build_ms=s["build_ms"], found_right=s["right"], agree_with_brute_force=s["agree"], probes=s["probes"])
        record(f"1:N CPU time p95 at {s['size']:,}", s["ours_cpu"][1], "ms", target, median=s["ours_cpu"][0],
               brute_force_p95_ms=s["brute_cpu"][1], speedup_p95=s["brute_cpu"][1] / s["ours_cpu"][1])
        record(f"gallery memory per 1,000 at {s['size']:,}", s["kib_per_1000"], "KiB", MEMORY_TARGET_KIB)
        print(f"{s['size']:>10,} {s['ours'][0]:8.2f} {s['ours'][1]:8.2f} {target or '-':>7} {s['brute'][0]:10.2f} "
              f"{s['brute'][1]:10.2f} {ratio:15.1f} {s['kib_per_1000']:10.0f} {s['agree']:>7}/{s['probes']} "
              f"{s['build_ms']:9.0f} {s['right']:>4}/{s['probes']}")
    template_bytes = max(len(t) for t in own.values())
    record("template bytes", template_bytes, "B", MAX_TEMPLATE_BYTES if recognizer.active.kind == "embedding" else 1024)
    record("model file bytes", model_bytes, "B", MAX_MODEL_BYTES)
    record("peak RSS", _rss_mb(), "MiB", None, start=rss_start, after_model=rss_model)
    print(f"template {template_bytes} bytes; model file {model_bytes} bytes (limit {MAX_MODEL_BYTES}); "
          f"peak RSS {rss_start:.0f} MiB at start, {_rss_mb():.0f} MiB at the end (the baseline's float copies count)")
    print("the same searches in this thread's CPU time (what preemption on a busy machine does not inflate):")
    for s in searches:
        print(f"{s['size']:>10,} {s['ours_cpu'][0]:8.2f} {s['ours_cpu'][1]:8.2f} {SEARCH_TARGETS_MS[s['size']] or '-':>7} "
              f"{s['brute_cpu'][0]:10.2f} {s['brute_cpu'][1]:10.2f} {s['brute_cpu'][1] / s['ours_cpu'][1]:15.1f}")
    over = [s for s in searches if SEARCH_TARGETS_MS[s["size"]] and s["ours"][1] > SEARCH_TARGETS_MS[s["size"]]]
    over += [s for s in searches if s["kib_per_1000"] > MEMORY_TARGET_KIB]
    print("1:N and memory: " + ("OVER target at " + ", ".join(f"{s['size']:,}" for s in over) if over
                                else "within every target"))
    if recognizer.active.kind == "palm_code":
        from . import bit_kernel

        bit_kernel.run(recognizer, [recognizer.features(frame) for frame in frames], own,
                       lambda count: _fillers(recognizer, own, count))
    if getattr(recognizer, "shortlist", None) is not None:
        from . import cascade

        cascade.run(recognizer, frames, own)
    else:
        print("cascade: models.json names no shortlist model (the palm codes search every template)")
    total_p95 = rows[-1][2]
    print(f"preprocess + model + match vs 1,000: p95 {total_p95:.1f} ms, "
          f"{'within' if total_p95 <= TOTAL_TARGET_MS else 'OVER'} the {TOTAL_TARGET_MS:.0f} ms target")
    return 0 if not over and total_p95 <= TOTAL_TARGET_MS else 1


def _fillers(recognizer, own: dict, count: int) -> dict[str, bytes]:
    """Well-formed templates of the active model around the probes' own (random vectors or palm codes)."""
    from ..hand.templates import EmbeddingTemplate, Template, model_tag

    rng = np.random.default_rng(1)
    guard = recognizer.guard
    if getattr(recognizer, "shortlist", None) is not None and guard is None:
        from .cascade import fillers

        return fillers(recognizer, count, rng)  # both models' templates, as the cascade's enrollment makes
    out = {}
    for i in range(count):
        if recognizer.active.kind == "embedding":
            v = np.clip(np.round(rng.normal(0, 11, recognizer.active.dim)), -127, 127).astype(np.int8)
            t = EmbeddingTemplate(v, model_tag(recognizer.model_id)).to_bytes()
        else:
            h, w = recognizer.grid
            t = Template(rng.integers(0, 6, (h, w), dtype=np.uint8), rng.random((h, w)) < 0.8,
                         np.zeros(0, np.float32), 1, recognizer.feature_id).to_bytes()
        out[f"synthetic-{i:06d}"] = guard.protect(t) if guard else t
    return out
