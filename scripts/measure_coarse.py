"""Measure the palm-code 1:N coarse pass on people the palm-code model never saw: is the genuine shortlisted?

palm-gabor-1 was trained and calibrated on coep_dev/webcam_hand2/11k people only, so every Tongji palm is
unseen: each palm is enrolled from its first session-1 region, probed with its session-2 regions, in a
gallery padded to ``--gallery`` with the palm codes of drawn employees (the template cache that `simulate`
and `bench loop` use; made by the same model). coep_dev, webcam_hand2 and nir_dev people the model never trained
on: through the unit's preprocessing, first image enrolled, the others probed, the same pads. For each probe the coarse
pass is tried with several shift sets (the probe as cut, no rotation); the genuine's rank among the coarse
scores says whether a shortlist of K would hold it. "Found by the full search" is a probe whose genuine
template scores, with the full alignment search, above every other entry of the 200 best coarse entries
and at least the threshold. Never writes anything derived from the photos.

  PYTHONPATH=. python scripts/measure_coarse.py --data ../shared/handdata [--gallery 10000] [--palms 300] [--guarded]

Measured 2026-12-01 (gallery 10,000, drawn-employee pads): the shipped passes (sift 9 shifts keeping 1,000, coarse
49 shifts keeping 32) left the genuine out in 0 of 2,824 Tongji probes the full search finds (300 palms), 0/62
coep_dev, 0/93 webcam_hand2, 0/15 nir_dev: 0/2,994 (exact 95% upper bound 0.12%). The stop-17 coarse pass (25 shifts,
keep 32) missed 1/62 coep_dev; every-4th-word sifts missed 1/15 nir_dev at 1,000.

Measured again for stop 18 (same gallery and people, clear and --guarded): the shipped sift on every 2nd word of
each plane (9 shifts) keeping 2,000, then the coarse pass, left the genuine out in 0/2,824 Tongji, 0/62 coep_dev,
0/93 webcam_hand2, 0/15 nir_dev, both ways (0/2,994, exact 95% upper bound 0.12%). Keeping 1,000 it missed 1/62
coep_dev in the guarded gallery (0 in the clear: the guard keeps distances, not which cells share a word); every 4th
word missed 1-3/62 coep_dev at 1,000; 5-shift and 1-shift sifts missed 1-3/62 coep_dev at 1,000 (and Tongji 11 as
cut). The coarse pass in two stages (25 shifts keeping 128, then the other 24 on those) needs no measure of its own:
the 25-shift pass over the whole gallery held the genuine within its best 128 in every probe (0 outside 64 in every
set, both ways), a sifted subset can only rank it higher, and the kept entries get their exact 49-shift score.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from vendor_node.config import load_config
from vendor_node.errors import HandRejected
from vendor_node.hand import bit_search, palmcode
from vendor_node.hand.dataset import load_dataset
from vendor_node.hand.evaluation_embedding import unit_levels
from vendor_node.hand.evaluation_metrics import upper_bound_95
from vendor_node.hand.gallery import PalmCodeBank, parse_template
from vendor_node.hand.recognition import Recognizer
from vendor_node.hand.template_guard import TemplateGuard
from vendor_node.hand.templates import Template, TemplateSet
from vendor_node.images import read_grey

SHIFT_SETS = {
    "1 (as cut)": [(0, 0)],
    "5 (cross, 2 cells)": [(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2)],
    "9 (step 2)": [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)],
    "9 (step 3)": [(dy, dx) for dy in (-3, 0, 3) for dx in (-3, 0, 3)],
    "25 (stop 17)": palmcode.shifts(3, 2),
    "49 (all)": palmcode.shifts(3),
}
KS = (8, 16, 32, 64, 128, 256, 1000)
SIFTS = {  # the sift before the coarse pass: (shift set, every n-th word of each plane only)
    "9 (step 2), all words": ("9 (step 2)", 1),
    "9 (step 2), every 2nd word": ("9 (step 2)", 2),
    "5 (cross, 2 cells), all words": ("5 (cross, 2 cells)", 1),
    "5 (cross, 2 cells), every 2nd word": ("5 (cross, 2 cells)", 2),
    "1 (as cut), all words": ("1 (as cut)", 1),
    "9 (step 2), every 4th word": ("9 (step 2)", 4),
    "25 (stop 17), every 4th word": ("25 (stop 17)", 4),
    "49 (all), every 4th word": ("49 (all)", 4),
}
SIFT_KEEPS = (100, 250, 500, 1000, 2000)
CHECKED = 200  # coarse entries the full search scores to tell whether it finds the genuine


def drawn_pads(recognizer, count: int) -> list:
    """Palm-code templates of the drawn employees of the template cache (clear, made by the same model)."""
    from vendor_node.sim.template_cache import TemplateCache, cache_path

    cache, out = TemplateCache.load(cache_path(recognizer)), []
    for k in range(len(cache)):
        blob = cache.template(k)
        if not blob:
            continue
        t = parse_template(blob)
        if isinstance(t, TemplateSet):
            t = next(parse_template(m) for m in t.members if isinstance(parse_template(m), Template))
        out.append(t)
        if len(out) == count:
            break
    if len(out) < count:
        raise SystemExit(f"the template cache {cache.path} holds {len(out)} drawn employees, {count} needed: run "
                         f"`vendor-node bench loop --employees {count}` once to make them")
    return out


def measure(name: str, matcher, enrolled: dict, probes: list, pads: list, gallery_size: int, threshold: float,
            guard=None):
    people = sorted(enrolled)
    bank = PalmCodeBank()
    templates = [parse_template(matcher.enroll_features([enrolled[p]], 0.0, guard).template) for p in people]
    if guard is not None:  # the unit's case: templates and probes in a template guard's keyed cell order
        pads = [parse_template(guard.protect(t.to_bytes())) for t in pads[: gallery_size - len(people)]]
    bank.extend(people + [f"pad{k}" for k in range(gallery_size - len(people))],
                templates + pads[: gallery_size - len(people)])
    row = {p: i for i, p in enumerate(people)}
    every = palmcode.shifts(3)
    subsets = {label: [every.index(s) for s in shifts] for label, shifts in SHIFT_SETS.items()}
    ranks = {label: [] for label in SHIFT_SETS}
    composite = {(label, keep): [] for label in SIFTS for keep in SIFT_KEEPS}  # genuine's coarse rank after a sift
    found, accepted = [], []
    t0 = time.process_time()
    for subject, f in probes:
        prepared = matcher._prepared(f, bank, guard)  # variants of pose 0 come first, in palmcode.shifts order
        d = bit_search.wide_distances(prepared.planes[: len(every)], prepared.masks[: len(every)], bank.planes_t,
                                    bank.masks_t, matcher.min_bits)
        genuine = row[subject]
        for label, idx in subsets.items():
            coarse = 1.0 - d[idx].min(axis=0)
            ranks[label].append(int((np.delete(coarse, genuine) >= coarse[genuine]).sum()))
        sparse = {stride: sparse_distances(prepared, bank, stride, len(every), matcher.min_bits)
                  for stride in sorted({stride for _, stride in SIFTS.values()} - {1})}
        coarse_all = 1.0 - d.min(axis=0)
        for (label, keep), out in composite.items():
            shifts, stride = SIFTS[label]
            sifted = 1.0 - (d if stride == 1 else sparse[stride])[subsets[shifts]].min(axis=0)
            kept = np.argpartition(-sifted, keep - 1)[:keep]
            if genuine not in kept:
                out.append(10 ** 9)
            else:
                others = coarse_all[kept[kept != genuine]]
                out.append(int((others >= coarse_all[genuine]).sum()))
        top = np.argpartition(d.min(axis=0), CHECKED)[:CHECKED]
        rows = np.union1d(top, [genuine])
        fine = matcher._fine(prepared, bank, rows)
        g = fine[np.searchsorted(rows, genuine)]
        others = np.delete(fine, np.searchsorted(rows, genuine))
        accepted.append(g >= threshold)
        found.append(g >= threshold and g > others.max())
    seconds = time.process_time() - t0
    found, accepted = np.array(found), np.array(accepted)
    where = " (guarded gallery)" if guard else ""
    print(f"\n{name}{where}: {len(probes)} probes of {len(people)} people in a gallery of {len(bank)} "
          f"({seconds:.0f} s CPU); the full search finds the genuine in {found.sum()} "
          f"(genuine at or above the threshold {threshold}: {accepted.sum()})")
    for label, r in ranks.items():
        r = np.array(r)
        cells = []
        for k in KS:
            out = int((r[found] >= k).sum())
            cells.append(f"{k}: {out}")
        print(f"  coarse {label:<26} genuine outside the top K (of {found.sum()} found), K=" + ", ".join(cells)
              + f"; all probes, K=32: {int((r >= 32).sum())}/{len(r)}", flush=True)
    report_composite(composite, found)
    return found


def sparse_distances(prepared, bank: PalmCodeBank, stride: int, variants: int, min_bits: int) -> np.ndarray:
    """The first ``variants`` probe variants against the bank on every ``stride``-th word of each plane only."""
    return bit_search.wide_distances(prepared.planes[:variants, :, ::stride], prepared.masks[:variants, ::stride],
                                   np.ascontiguousarray(bank.planes_t[:, ::stride]),
                                   np.ascontiguousarray(bank.masks_t[::stride]), min_bits // stride)


def report_composite(composite: dict, found: np.ndarray, candidates: int = 32) -> None:
    print(f"  a sift keeping K1, then the coarse pass (49 shifts, all words) keeping {candidates}: genuine left out "
          f"(of {found.sum()} found)")
    for label in SIFTS:
        cells = []
        for keep in SIFT_KEEPS:
            r = np.array(composite[(label, keep)])
            out = int((r[found] >= candidates).sum())
            cells.append(f"K1={keep}: {out} (<= {upper_bound_95(out, int(found.sum())):.4f})")
        print(f"    sift {label:<30} " + ", ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/handdata"))
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--palms", type=int, default=300, help="Tongji palms enrolled (the first N)")
    parser.add_argument("--guarded", action="store_true",
                        help="templates and probes under a template guard (a fresh random key), as at the unit: "
                             "every n-th word of a plane is then a keyed subset of cells, not rows")
    args = parser.parse_args()
    guard = TemplateGuard(os.urandom(32)) if args.guarded else None
    recognizer = Recognizer.from_config(load_config(None))
    matcher = recognizer._palm_matcher()
    threshold = recognizer.threshold_for(args.gallery)
    pads = drawn_pads(recognizer, args.gallery)
    no_geometry = np.zeros(0, np.float32)

    def code(roi):
        return matcher.features_from_roi(roi, no_geometry, 1.0, None, False)

    enrolled, probes = {}, []
    palms = sorted({s.subject for s in load_dataset(args.data / "tongji_dev")})[: args.palms]
    for sample in load_dataset(args.data / "tongji_dev"):
        if sample.subject not in palms:
            continue
        if sample.session == 1 and sample.subject not in enrolled:
            enrolled[sample.subject] = code(unit_levels(read_grey(sample.path)))
        elif sample.session == 2:
            probes.append((sample.subject, code(unit_levels(read_grey(sample.path)))))
    if enrolled:
        measure(f"Tongji palms (session 1 enrolled, session 2 probed), {len(enrolled)} palms", matcher, enrolled,
                probes, pads, args.gallery, threshold, guard)

    from vendor_node.hand.preprocess import extract_hand

    for name in ("coep_dev", "webcam_hand2", "nir_dev"):
        trained = set(matcher.embedder.manifest["training"]["subjects"].get(name, []))
        first, later, refused = {}, [], 0
        for sample in load_dataset(args.data / name):
            if sample.subject in trained:
                continue
            try:
                f = recognizer.features_from_hand(extract_hand(read_grey(sample.path)))
            except HandRejected:
                refused += 1
                continue
            (later.append((sample.subject, f)) if sample.subject in first else first.__setitem__(sample.subject, f))
        measure(f"{name} people the model never trained on, through the unit's preprocessing ({refused} frames "
                "refused)", matcher, first, later, pads, args.gallery, threshold, guard)

if __name__ == "__main__":
    main()
