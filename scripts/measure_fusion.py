"""Measure score-level fusion of the palm codes (palm-gabor-1) and an embedding (--embedding) on held-out people.

The split is the embedding's manifest ``split`` (seed 7 for palm-embed-1 and palm-embed-2: the same palms): the
fusion's normalisation and weight are fitted on the Tongji CALIBRATION palms only (and its threshold on their and the COEP calibration people's fused impostor
scores, as the embedding's own); every figure is on the TEST palms, the palm codes alone, the embedding alone and
the fusion from the same score matrices. Tongji test: enroll the first session-1 image, probe every session-2
image (900 genuine, rank-1 in a gallery of the 90 palms); impostors: every session-1 image as a one-image
template x every session-2 image of another test palm (801,000; enough to count FMR 1e-5, not 1e-6). COEP
people through the unit's preprocessing: every ordered pair of images (first image enrolled for rank-1). Prints a table and, with ``--json``, the manifest's
``fusion`` block. Nothing derived from the photos is written except the score cache (``--cache``, outside the
repository).

  PYTHONPATH=.:scripts nice -n 15 python scripts/measure_fusion.py --data ../shared/handdata \
      [--embedding palm-embed-2] [--json out.json] [--write]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fusion_scores import score_items, tongji_items, unit_path_items
from training_metrics import SAME_PERSON, fmr_points
from vendor_node.hand.decision import threshold_at_fmr
from vendor_node.hand.evaluation_metrics import eer, fnmr_at_fmr, upper_bound_95
from vendor_node.hand.evaluation_metrics import threshold_at_fmr as threshold_at_fmr_counted
from vendor_node.hand.fusion import FusionRule, fit_weight

FMRS = (1e-3, 1e-4, 1e-5, 1e-6)
MAX_WRONG_PAYER, DEFAULT_GALLERY = 1e-3, 1000  # as palm-embed-1's decision block
SCORES = ("palm", "emb", "fused")


def pair_masks(m: dict, twins=()) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) masks over the (probe, template) matrix: genuine = same subject, another image;
    impostor = different subjects (people possibly labelled twice left out)."""
    ps, ts = np.array(m["probe_subjects"]), np.array(m["template_subjects"])
    same = ps[:, None] == ts[None, :]
    twin = np.zeros_like(same)
    for a, b in twins:
        twin |= ((ps == a)[:, None] & (ts == b)[None, :]) | ((ps == b)[:, None] & (ts == a)[None, :])
    other_image = ~np.eye(len(ps), dtype=bool) if m["same_list"] else np.ones_like(same)
    return same & other_image, ~same & ~twin


def protocol(m: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enroll each subject's first template image; probes = its session-2 images (one session: its other
    images): (probe rows, gallery columns, each probe's mate index in the gallery)."""
    gallery: dict[str, int] = {}
    for i, s in enumerate(m["template_subjects"]):
        gallery.setdefault(s, i)
    names = sorted(gallery)
    cols = np.array([gallery[n] for n in names])
    probes = np.array([i for i, s in enumerate(m["probe_subjects"])
                       if s in gallery and not (m["same_list"] and i == gallery[s])])
    mates = np.array([names.index(m["probe_subjects"][i]) for i in probes])
    return probes, cols, mates


def rates(genuine: np.ndarray, impostor: np.ndarray) -> dict:
    out = {"genuine": int(genuine.size), "impostor": int(impostor.size), "eer": round(eer(genuine, impostor), 6)}
    for f in FMRS:
        value, reliable = fnmr_at_fmr(genuine, impostor, f)
        misses = int(round(value * genuine.size))
        out[f"fnmr_at_fmr_{f:g}"] = {"count": misses, "rate": round(value, 6), "reliable": reliable,
                                     "upper_95": round(upper_bound_95(misses, genuine.size), 6)}
    return out


def at_threshold(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict:
    refused, passed = int((genuine < threshold).sum()), int((impostor >= threshold).sum())
    return {"threshold": round(float(threshold), 5),
            "genuine_refused": {"count": refused, "of": int(genuine.size),
                                "upper_95": round(upper_bound_95(refused, genuine.size), 6)},
            "impostor_accepted": {"count": passed, "of": int(impostor.size),
                                  "upper_95": float(f"{upper_bound_95(passed, impostor.size):.3g}")}}


def measure(m: dict, rule: FusionRule, thresholds: dict, twins=()) -> dict:
    """Every figure of the three scores on one set of held-out people, from the same matrices."""
    fused = rule.fuse(m["pc"], m["emb"])
    mats = {"palm": m["pc"], "emb": m["emb"], "fused": fused}
    genuine_all, impostor = pair_masks(m, twins)
    probes, cols, mates = protocol(m)
    out = {}
    for name, mat in mats.items():
        sub = mat[np.ix_(probes, cols)]
        genuine = sub[np.arange(len(probes)), mates]
        imp = mat[impostor]
        rank1_miss = int((sub.argmax(axis=1) != mates).sum())
        out[name] = {"protocol": rates(genuine, imp), "all_genuine_pairs": rates(mat[genuine_all], imp),
                     "rank1": {"misses": rank1_miss, "of": len(probes), "rate": round(1 - rank1_miss / len(probes), 6),
                               "miss_upper_95": round(upper_bound_95(rank1_miss, len(probes)), 6),
                               "gallery": len(cols)},
                     "operating_point_fmr_1e-6": at_threshold(genuine, imp, thresholds[name])}
    out["paired"] = paired(mats, genuine_all, impostor)
    return out


def paired(mats: dict, genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """Genuine pairs refused by the palm codes only and by the fusion only, each at its own threshold for the
    FMR (counted on these impostors): the discordant pairs a McNemar test weighs."""
    out = {}
    for f in FMRS[:3]:
        refused = {}
        for name in ("palm", "fused"):
            imp = mats[name][impostor]
            refused[name] = mats[name][genuine] < threshold_at_fmr_counted(mats[name][genuine], imp, f)
        out[f"fmr_{f:g}"] = {"palm_only": int((refused["palm"] & ~refused["fused"]).sum()),
                             "fused_only": int((refused["fused"] & ~refused["palm"]).sum()),
                             "both": int((refused["palm"] & refused["fused"]).sum()), "of": int(genuine.sum())}
    return out


def calibrated_curves(cal: dict, rule: FusionRule, twins: dict) -> dict:
    """Per score: {domain: fmr_points} from the calibration people's impostor scores."""
    curves = {name: {} for name in SCORES}
    for domain, m in cal.items():
        _, impostor = pair_masks(m, twins.get(domain, ()))
        values = {"palm": m["pc"][impostor], "emb": m["emb"][impostor],
                  "fused": rule.fuse(m["pc"][impostor], m["emb"][impostor])}
        for name in SCORES:
            curves[name][domain] = fmr_points(values[name])
    return curves


def combined(domains: dict) -> list:
    """At each FMR the highest threshold any domain needs (as the embedding's own calibration)."""
    first = next(iter(domains.values()))["fmr_points"]
    return [[p[0], max(d["fmr_points"][k][1] for d in domains.values())] for k, p in enumerate(first)]


def table(title: str, result: dict) -> None:
    print(f"\n{title}")
    print(f"{'score':6s} {'EER':>8s} {'rank-1':>14s} " + " ".join(f"{'FNMR@' + format(f, 'g'):>18s}" for f in FMRS)
          + f" {'@1e-6 calibrated thr: refused / impostors passed':>50s}")
    for name in SCORES:
        r = result[name]
        p, op = r["protocol"], r["operating_point_fmr_1e-6"]
        cells = []
        for f in FMRS:
            c = p[f"fnmr_at_fmr_{f:g}"]
            cells.append(f"{c['count']:4d} {100 * c['rate']:5.2f}%{'' if c['reliable'] else '*':1s}(<{100 * c['upper_95']:5.2f})")
        print(f"{name:6s} {100 * p['eer']:7.3f}% {r['rank1']['misses']:4d}/{r['rank1']['of']} miss " + " ".join(cells)
              + f"   {op['genuine_refused']['count']}/{op['genuine_refused']['of']} refused, "
                f"{op['impostor_accepted']['count']}/{op['impostor_accepted']['of']} impostors passed")
    g, i = result["palm"]["protocol"]["genuine"], result["palm"]["protocol"]["impostor"]
    print(f"({g} genuine, {i:,} impostor scores; * = fewer than 3/FMR impostor scores; (<x) 95% upper bound)")
    for name in SCORES:
        a = result[name]["all_genuine_pairs"]
        print(f"  every genuine pair ({a['genuine']}): {name:5s} EER {100 * a['eer']:.3f}%  " + "  ".join(
            f"FNMR@{f:g} {a[f'fnmr_at_fmr_{f:g}']['count']} ({100 * a[f'fnmr_at_fmr_{f:g}']['rate']:.2f}%)"
            for f in FMRS[:3]))
    print("  paired, every genuine pair, each score at its own threshold: refused by palm only / fused only: "
          + ", ".join(f"{k} {v['palm_only']}/{v['fused_only']}" for k, v in result["paired"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/handdata"))
    parser.add_argument("--assets", type=Path, default=Path("firmware_assets"))
    parser.add_argument("--embedding", default="palm-embed-2", help="the embedding model fused with the palm codes")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vendor-node-fusion"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fit-fmr", type=float, default=1e-4, help="FMR at which the weight minimises FNMR")
    parser.add_argument("--json", type=Path, help="write the figures and the fusion block here")
    parser.add_argument("--write", action="store_true", help="write the fusion block (rule, decision, split, "
                        "held-out figures) into the embedding's manifest.json")
    parser.add_argument("--calibration-only", action="store_true",
                        help="score and print the Tongji CALIBRATION palms only (no test palm is read): how "
                             "candidate embeddings are compared before the one chosen is measured")
    args = parser.parse_args()
    split = json.loads((args.assets / args.embedding / "manifest.json").read_text())["split"]
    started = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {text}", flush=True)

    sets = {}
    if args.calibration_only:
        calibration_only(score_items("tongji_calibrate", tongji_items(args.data, set(split["calibrate"])), args.cache,
                                     args.assets, args.workers, log, args.embedding), args)
        return
    for side in ("calibrate", "test"):
        sets[f"tongji_{side}"] = score_items(f"tongji_{side}", tongji_items(args.data, set(split[side])), args.cache,
                                             args.assets, args.workers, log, args.embedding)
    coep_people = split["unit_path"]["coep_dev"]
    coep_items, refused = unit_path_items(args.data, "coep_dev", set(coep_people["calibrate"]) | set(coep_people["test"]))
    coep = score_items("coep_dev", coep_items, args.cache, args.assets, args.workers, log, args.embedding)
    for side in ("calibrate", "test"):
        keep = np.array([s in set(coep_people[side]) for s in coep["probe_subjects"]])
        sets[f"coep_{side}"] = {"probe_subjects": [s for s, k in zip(coep["probe_subjects"], keep) if k],
                                "template_subjects": [s for s, k in zip(coep["template_subjects"], keep) if k],
                                "same_list": True, "pc": coep["pc"][np.ix_(keep, keep)],
                                "emb": coep["emb"][np.ix_(keep, keep)]}
    twins = {"coep_calibrate": SAME_PERSON["coep_dev"], "coep_test": SAME_PERSON["coep_dev"]}

    # Fit on the Tongji calibration palms only: z-normalisation, then the weight.
    cal = sets["tongji_calibrate"]
    genuine, impostor = pair_masks(cal)
    rule = FusionRule.from_impostors(cal["pc"][impostor], cal["emb"][impostor])
    rule, search = fit_weight(rule, (cal["pc"][genuine], cal["emb"][genuine]),
                              (cal["pc"][impostor], cal["emb"][impostor]), args.fit_fmr)
    log(f"fitted on {int(genuine.sum())} genuine / {int(impostor.sum()):,} impostor calibration pairs: "
        f"weight of the palm code {rule.weight} (FNMR@{args.fit_fmr:g} by weight: "
        + ", ".join(f"{w:g}:{100 * f:.2f}%" for w, f, _ in search[::4]) + ")")
    curves = calibrated_curves({"tongji_dev": cal, "coep_dev": sets["coep_calibrate"]}, rule,
                               {"coep_dev": SAME_PERSON["coep_dev"]})
    thresholds = {name: threshold_at_fmr(combined(curves[name]), 1e-6) for name in SCORES}
    results = {}
    for name in ("tongji_test", "coep_test", "coep_calibrate"):
        results[name] = measure(sets[name], rule, thresholds, twins.get(name, ()))
    table("Tongji TEST palms (90, never trained or calibrated on): enroll first session-1 image, probe session 2",
          results["tongji_test"])
    table(f"COEP TEST people of {args.embedding} (22, unit preprocessing; palm-gabor-1 TRAINED and its preprocessing "
          "TUNED on them)", results["coep_test"])
    table(f"COEP CALIBRATION people of {args.embedding} (22; never seen by palm-gabor-1; they set the thresholds "
          "here, so the operating-point column is not held out)", results["coep_calibrate"])
    print(f"\nCOEP frames refused by the unit's preprocessing: {refused}")
    block = fusion_block(rule, search, curves, sets["tongji_calibrate"], results, args)
    if args.json:
        args.json.write_text(json.dumps({"fusion": block, "thresholds_1e-6": thresholds, "results": results},
                                        indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.write:
        path = args.assets / args.embedding / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["fusion"] = block
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        log(f"wrote the fusion block into {path}")


def calibration_only(cal: dict, args) -> None:
    """Fit the rule on the calibration palms and print their figures (palm codes, embedding, fusion): the same
    pairs the weight was fitted on, so the fused row is optimistic by the choice of one weight of 41."""
    genuine, impostor = pair_masks(cal)
    rule = FusionRule.from_impostors(cal["pc"][impostor], cal["emb"][impostor])
    rule, _ = fit_weight(rule, (cal["pc"][genuine], cal["emb"][genuine]), (cal["pc"][impostor], cal["emb"][impostor]),
                         args.fit_fmr)
    curves = calibrated_curves({"tongji_dev": cal}, rule, {})
    thresholds = {name: threshold_at_fmr(combined(curves[name]), 1e-6) for name in SCORES}
    table(f"Tongji CALIBRATION palms of {args.embedding} (never trained on; the fusion weight {rule.weight} was "
          "fitted on these pairs)", measure(cal, rule, thresholds))


def fusion_block(rule: FusionRule, search: list, curves: dict, cal: dict, results: dict, args) -> dict:
    """The manifest's ``fusion`` block: the rule, its decision (the DecisionPolicy's keys) and held-out figures."""
    points = combined(curves["fused"])
    threshold = round(threshold_at_fmr(points, MAX_WRONG_PAYER / DEFAULT_GALLERY), 5)
    # margin: as the embedding's, the 0.5% quantile of calibration gaps (genuine over runner-up, session 1 enrolled,
    # session 2 probed) above the threshold, kept within the palm codes' margin range carried to the fused scale
    probes, cols, mates = protocol(cal)
    fused = rule.fuse(cal["pc"], cal["emb"])[np.ix_(probes, cols)]
    genuine = fused[np.arange(len(probes)), mates]
    others = fused.copy()
    others[np.arange(len(probes)), mates] = -np.inf
    gaps = (genuine - others.max(axis=1))[genuine >= threshold]
    low, high = (rule.weight * m / rule.palm_sd for m in (0.01, 0.05))
    margin = round(float(np.clip(np.quantile(gaps, 0.005), low, high)) if gaps.size else high, 4)
    return {
        "palm_code_model": "palm-gabor-1", **rule.to_dict(),
        "palm_code_fmr_points": combined(curves["palm"]),
        "fitted_on": "the tongji_dev calibrate palms of this manifest's split (seed 7): never trained on, never tested",
        "fit": f"each score z-normalised by the calibration palms' impostor scores (session-1 image x session-2 image "
               f"of another palm); weight_palm_code = the grid value ({len(search)} steps) with the lowest FNMR at "
               f"FMR {args.fit_fmr:g} on calibration pairs",
        "weight_search": [[w, round(f, 6), round(e, 6)] for w, f, e in search],
        "decision": {"threshold": threshold, "margin": margin,
                     "min_threshold": round(threshold_at_fmr(points, 1e-4), 5), "min_margin": round(low, 4),
                     "default_gallery": DEFAULT_GALLERY, "max_wrong_payer": MAX_WRONG_PAYER, "fmr_points": points,
                     "domains": curves["fused"],
                     "how": "fmr_points: at each FMR the higher threshold of the Tongji calibration palms and the COEP "
                            "calibration people (unit preprocessing), counted where >= 3/fmr impostor scores, else an "
                            "exponential tail fit; threshold at max_wrong_payer / default_gallery; margin: 0.5% "
                            "quantile of calibration genuine-over-runner-up gaps above the threshold, within the palm "
                            "codes' 0.01..0.05 carried to the fused scale (x weight / palm sd)"},
        "held_out": {"how": "scripts/measure_fusion.py; Tongji test palms: first session-1 image enrolled, session-2 "
                            "probes, impostors every session-1 image x session-2 image of another test palm; COEP "
                            "test people through the unit's preprocessing (palm-gabor-1 was trained and its "
                            "preprocessing tuned on these people: optimistic for the palm codes and the fusion)",
                     "tongji_dev_test": results["tongji_test"], "coep_dev_test": results["coep_test"]},
    }

if __name__ == "__main__":
    main()
