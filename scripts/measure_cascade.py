"""Measure the cascade's shortlist on people the embedding never saw: recall@K and palm-code time for K vs all.

Tongji test palms (palm-embed-1 manifest ``split.test``): each palm enrolled from its first session-1 image,
probed with its ten session-2 images, in a gallery padded to ``--gallery`` by Tongji images of the other
(train/calibrate) palms, their mirror images and their 180-degree turns (each pad its own identity; a
mirror of a palm is not that palm). coep_dev/nir_dev: through the unit's preprocessing, first image of each
person enrolled, the others probed, the same pads. Prints recall@K (is the genuine template among the top K
embedding scores?) and, for the Tongji probes, whether the cascade's palm-code decision equals the full
palm-code search's. Never writes anything derived from the photos.

  PYTHONPATH=. python scripts/measure_cascade.py --data ../shared/handdata [--gallery 10000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vendor_node.hand.dataset import load_dataset
from vendor_node.hand.evaluation_embedding import unit_levels
from vendor_node.hand.evaluation_metrics import upper_bound_95
from vendor_node.hand.model import Embedder, embedding_scores
from vendor_node.hand.palm_matcher import PalmCodeMatcher
from vendor_node.hand.embed_matcher import EmbeddingMatcher
from vendor_node.images import read_grey

KS = (1, 8, 16, 32, 64, 100, 200, 500, 1000, 2000)
TIMED_KS = (32, 64, 100, 200, 500, 1000)


def grey(path: Path) -> np.ndarray:
    return read_grey(path)


def recall_table(name: str, genuine_rank: list[int], gallery: int) -> None:
    ranks = np.array(genuine_rank)
    print(f"\n{name}: {len(ranks)} probes, gallery {gallery}")
    for k in KS:
        out = int((ranks >= k).sum())
        print(f"  K={k:4d}  recall {1 - out / len(ranks):.4f}  genuine outside top K: {out}/{len(ranks)} "
              f"(95% upper bound {upper_bound_95(out, len(ranks)):.4f})")


def ranks_of(probe_vectors, genuine_rows, gallery_vectors) -> list[int]:
    ranks = []
    for vector, row in zip(probe_vectors, genuine_rows):
        scores = embedding_scores(vector, gallery_vectors)
        ranks.append(int((scores > scores[row]).sum()))
    return ranks


def drawn_pads(path: Path, tag: int) -> np.ndarray:
    """The shortlist embeddings of a cascade template cache's drawn employees."""
    from vendor_node.hand.gallery import parse_template
    from vendor_node.hand.templates import EmbeddingTemplate, TemplateSet
    from vendor_node.sim.template_cache import TemplateCache

    cache, out = TemplateCache.load(path), []
    for k in range(len(cache)):
        blob = cache.template(k)
        if blob:
            for member in TemplateSet.from_bytes(blob).members:
                t = parse_template(member)
                if isinstance(t, EmbeddingTemplate) and t.model_tag == tag:
                    out.append(t.vector)
    return np.array(out, np.int8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/handdata"))
    parser.add_argument("--assets", type=Path, default=Path("firmware_assets"))
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--decide", type=int, default=300, help="Tongji probes also decided by palm codes")
    parser.add_argument("--pad-cache", type=Path, help="a cascade template cache of drawn employees "
                        "(templates-*.npz made by simulate/bench loop with a shortlist): their embeddings pad the "
                        "coep_dev/nir_dev galleries (regions cut by the unit's own preprocessing, like theirs)")
    args = parser.parse_args()
    embedder = Embedder.load(args.assets / "palm-embed-1")
    shortlist = EmbeddingMatcher(embedder)
    coder = PalmCodeMatcher(Embedder.load(args.assets / "palm-gabor-1"))
    test = set(embedder.manifest["split"]["test"])
    tongji = load_dataset(args.data / "tongji_dev")

    def vec(roi):
        return shortlist.features_from_roi(roi, None, 1.0, None, False).vector

    enrolled, probes, pads = {}, [], []
    t0 = time.perf_counter()
    for sample in tongji:
        roi = unit_levels(grey(sample.path))
        if sample.subject in test:
            if sample.session == 1 and sample.subject not in enrolled:
                enrolled[sample.subject] = roi
            elif sample.session == 2:
                probes.append((sample.subject, roi))
        else:
            pads.append(vec(roi))
            pads.append(vec(roi[:, ::-1].copy()))
            pads.append(vec(roi[::-1, ::-1].copy()))
    print(f"embedded {len(tongji) + 2 * len(pads) // 3} regions in {time.perf_counter() - t0:.0f} s")
    names = sorted(enrolled)
    pad = np.array(pads[: args.gallery - len(names)], np.int8)
    gallery = np.concatenate([np.array([vec(enrolled[n]) for n in names], np.int8), pad])
    row = {n: i for i, n in enumerate(names)}
    probe_vectors = [vec(roi) for _, roi in probes]
    tongji_ranks = ranks_of(probe_vectors, [row[s] for s, _ in probes], gallery)
    recall_table(f"Tongji test palms ({len(names)} palms never trained or calibrated on)", tongji_ranks, len(gallery))

    # Palm-code time on K candidates vs the whole gallery (codes of the enrolled and of the pads' first images)
    from vendor_node.hand.gallery import PalmCodeBank

    bank = PalmCodeBank()
    templates = []
    for n in names:
        f = coder.features_from_roi(enrolled[n], np.zeros(0, np.float32), 1.0, None, False)
        templates.append(coder.enroll_features([f], 0.0, None).template)
    from vendor_node.hand.gallery import parse_template

    bank.extend(names, [parse_template(t) for t in templates])
    timing = PalmCodeBank()  # the enrolled codes repeated to the gallery's size: time depends on rows, not content
    parsed = [parse_template(t) for t in templates]
    size = len(gallery)
    timing.extend([f"{names[k % len(names)]}#{k}" for k in range(size)], [parsed[k % len(parsed)] for k in range(size)])
    rng = np.random.default_rng(0)
    picks = rng.choice(len(probes), min(args.decide, len(probes)), replace=False)
    same, tried, times_k, t_full = 0, 0, {k: [] for k in TIMED_KS}, []
    for n_try, i in enumerate(picks):
        subject, roi = probes[i]
        f = coder.features_from_roi(roi, np.zeros(0, np.float32), 1.0, None, False)
        full = coder.best_two(f, bank, None)
        scores = embedding_scores(probe_vectors[i], gallery)
        if n_try < 20:
            t = time.perf_counter()
            coder.best_two(f, timing, None)
            t_full.append(time.perf_counter() - t)
            for k in times_k:
                t = time.perf_counter()
                coder.best_two_among(f, timing, np.argpartition(-scores, k - 1)[:k], None)
                times_k[k].append(time.perf_counter() - t)
        top = np.argpartition(-scores, 63)[:64]
        rows = top[top < len(names)]  # pads have no palm code: the shortlist's enrolled members
        if row[subject] in rows:
            tried += 1
            same += coder.best_two_among(f, bank, rows, None)[0] == full[0]
    print(f"\npalm-code best match: cascade (K=64) names the same template as the full search (over the "
          f"{len(names)} enrolled) in {same}/{tried} probes whose genuine was shortlisted")
    print(f"palm-code search over {len(timing)} templates (today: coarse pass over all + full search on 32): "
          f"median {1e3 * np.median(t_full):.1f} ms per probe ({len(t_full)} probes)")
    for k, ts in times_k.items():
        print(f"  full alignment search on a shortlist of K={k}: median {1e3 * np.median(ts):.1f} ms "
              f"({np.median(t_full) / np.median(ts):.0f}x faster)")

    for name in ("coep_dev", "nir_dev"):
        folder = args.data / name
        if not folder.is_dir():
            continue
        from vendor_node.errors import HandRejected
        from vendor_node.hand.preprocess import extract_hand

        unseen = set(embedder.manifest["split"].get("unit_path", {}).get(name, {}).get("test", [])) or None
        first, later, refused = {}, [], 0
        for sample in load_dataset(folder):
            if unseen is not None and sample.subject not in unseen:
                continue  # calibration people of the embedding: not measured
            try:
                roi = extract_hand(read_grey(sample.path)).roi
            except HandRejected:
                refused += 1
                continue
            (later.append((sample.subject, vec(roi))) if sample.subject in first
             else first.__setitem__(sample.subject, vec(roi)))
        people = sorted(first)
        unit_pad = drawn_pads(args.pad_cache, shortlist.model_tag) if args.pad_cache else pad
        g = np.concatenate([np.array([first[p] for p in people], np.int8), unit_pad[: args.gallery - len(people)]])
        name += f" among {'drawn employees' if args.pad_cache else 'Tongji pads'}"
        rows = {p: i for i, p in enumerate(people)}
        recall_table(f"{name} through the unit's preprocessing ({len(people)} people, {refused} frames refused)",
                     ranks_of([v for _, v in later], [rows[s] for s, _ in later], g), len(g))


if __name__ == "__main__":
    main()
