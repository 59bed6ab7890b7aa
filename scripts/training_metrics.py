"""Measuring a recognizer on cached, preprocessed photos: what train_model.py selects and reports with.

Enroll the first N images of each (view, person) sorted by path, probe with the rest; genuine and
impostor scores, EER, FNMR at FMR 1e-3 / 1e-4, rank-1 counting failures to acquire as misses, and
what the unit's threshold + margin do. People the data set's README says are labelled twice are
neither impostors nor rivals of each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vendor_node.hand import palmcode
from vendor_node.hand.recognition import Gallery, Recognizer

# People labelled twice in coep_dev (see its README).
SAME_PERSON = {"coep_dev": [("076", "163"), ("077", "153"), ("080", "155")]}


@dataclass
class Sample:
    set: str
    path: str
    subject: str
    extra: str
    captured: str
    hand: object | None = None
    reason: str = ""
    features: object | None = field(default=None, repr=False)


# --- measuring ----------------------------------------------------------------
def measure(recognizer: Recognizer, samples: list[Sample], enroll_n: int = 1) -> dict:
    """Enroll the first N images per (view, person), probe with the rest: EER, FNMR@FMR, rank-1, FTA."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.extra, s.subject), []).append(s)
    templates: dict[str, dict[str, bytes]] = {}
    probes: list[Sample] = []
    enrolled_days: dict[tuple[str, str], set[str]] = {}
    for (extra, subject), group in sorted(groups.items()):
        group.sort(key=lambda s: s.path)
        if len(group) <= enroll_n:
            continue
        usable = [s.features for s in group[:enroll_n] if s.features is not None]
        if usable:
            templates.setdefault(extra, {})[subject] = recognizer.enroll_features(usable).template
            enrolled_days[(extra, subject)] = {s.captured[:10] for s in group[:enroll_n] if s.captured}
        probes += group[enroll_n:]
    genuine, impostor, days, rank1, attempts, gaps = [], [], {"same": [], "different": []}, 0, 0, []
    decisions = {"mated": [], "non_mated": []}
    galleries = {extra: (list(t), Gallery.from_templates(t)) for extra, t in templates.items()}
    for p in probes:
        attempts += 1
        if p.features is None or p.extra not in galleries or p.subject not in galleries[p.extra][0]:
            continue
        ids, gallery = galleries[p.extra]
        scores = recognizer.score_matrix([p.features], gallery)[0]
        mate = ids.index(p.subject)
        genuine.append(float(scores[mate]))
        twins = {i for i, other in enumerate(ids) if i != mate and _same_person(p.set, p.subject, other)}
        impostor += [float(x) for i, x in enumerate(scores) if i != mate and i not in twins]
        scores = np.array([x for i, x in enumerate(scores) if i not in twins])
        mate -= sum(1 for i in twins if i < mate)
        outcome = decide(scores, recognizer.threshold, recognizer.margin)
        decisions["mated"].append("right" if outcome == mate else ("wrong_payer" if outcome >= 0 else "refused"))
        if len(scores) > 1:
            decisions["non_mated"].append(decide(np.delete(scores, mate), recognizer.threshold, recognizer.margin) >= 0)
        order = np.argsort(-scores)
        rank1 += int(order[0] == mate)
        if len(order) > 1 and order[0] == mate:
            gaps.append((float(scores[order[0]]), float(scores[order[0]] - scores[order[1]])))
        if p.captured and enrolled_days.get((p.extra, p.subject)):
            days["same" if p.captured[:10] in enrolled_days[(p.extra, p.subject)] else "different"].append(float(scores[mate]))
    all_images = len(samples)
    fta = sum(1 for s in samples if s.features is None) / max(1, all_images)
    out = {"people": len({s.subject for s in samples}), "images": all_images, "fta": round(fta, 4),
           "genuine": len(genuine), "impostor": len(impostor),
           "rank1_with_fta_as_miss": round(rank1 / max(1, attempts), 4)}
    out.update(error_rates(np.array(genuine), np.array(impostor)))
    out["operating_point"] = operating_point(recognizer, decisions, attempts, np.array(genuine), np.array(impostor))
    if days["different"]:
        out["eer_different_days"] = error_rates(np.array(days["different"]), np.array(impostor))["eer"]
        out["genuine_different_days"] = len(days["different"])
    out["_genuine"], out["_impostor"], out["_gaps"] = genuine, impostor, gaps
    return out


def decide(scores: np.ndarray, threshold: float, margin: float) -> int:
    """The unit's policy on one score row: index of the payer, or -1 (unknown / ambiguous)."""
    order = np.argsort(-scores)
    best = scores[order[0]]
    runner_up = scores[order[1]] if len(order) > 1 else 0.0
    return int(order[0]) if best >= threshold and best - runner_up > margin else -1


def operating_point(recognizer, decisions: dict, attempts: int, genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """What the threshold + margin do here, and per-comparison FMR extrapolated to 100 and 1,000 enrolled."""
    mated = decisions["mated"]
    out = {"threshold": recognizer.threshold, "margin": recognizer.margin,
           "fnir_with_fta": round(1 - mated.count("right") / max(1, attempts), 4),
           "wrong_payer_mated": mated.count("wrong_payer"), "mated_searches": len(mated),
           "fpir_non_mated": round(float(np.mean(decisions["non_mated"])), 4) if decisions["non_mated"] else None,
           "non_mated_searches": len(decisions["non_mated"])}
    if len(genuine):
        out["fnmr_at_threshold"] = round(float((genuine < recognizer.threshold).mean()), 4)
    if len(impostor) > 1:
        z = (recognizer.threshold - impostor.mean()) / max(impostor.std(), 1e-9)
        fmr = 0.5 * math.erfc(z / math.sqrt(2))  # Gaussian tail of the impostor scores
        out["fmr_at_threshold_empirical"] = round(float((impostor >= recognizer.threshold).mean()), 6)
        out["fmr_at_threshold_gaussian_fit"] = float(f"{fmr:.3g}")
        for n in (100, 1000):
            out[f"fpir_{n}_enrolled_extrapolated"] = float(f"{1 - (1 - fmr) ** n:.3g}")
    return out


def d_prime(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Separation of the two score distributions in pooled standard deviations."""
    if len(genuine) < 2 or len(impostor) < 2:
        return 0.0
    return round(float((genuine.mean() - impostor.mean()) / np.sqrt((genuine.var() + impostor.var()) / 2 + 1e-12)), 3)


def _same_person(set_name: str, a: str, b: str) -> bool:
    """The README's people labelled twice are neither impostors nor rivals of each other."""
    return any({a, b} == set(pair) for pair in SAME_PERSON.get(set_name, []))


def typical_geometry_distance(samples: list[Sample]) -> float:
    """Mean geometry difference over all pairs of training hands: what an unmeasurable comparison is assumed to be."""
    rows = np.array([s.hand.geometry for s in samples if s.hand is not None and s.hand.geometry.size], np.float32)
    if len(rows) < 2:
        return 0.0
    values = [palmcode.geometry_distances(rows[i], rows[i + 1:], 5, np.nan) for i in range(len(rows) - 1)]
    values = np.concatenate(values)
    return round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else 0.0


def error_rates(genuine: np.ndarray, impostor: np.ndarray) -> dict:
    if not len(genuine) or not len(impostor):
        return {"eer": None, "fnmr_at_fmr_1e-3": None, "fnmr_at_fmr_1e-4": None}
    thresholds = np.unique(np.concatenate([genuine, impostor, [np.inf]]))
    fnmr = np.array([(genuine < t).mean() for t in thresholds])  # accept when score >= t
    fmr = np.array([(impostor >= t).mean() for t in thresholds])
    k = int(np.argmin(np.abs(fnmr - fmr)))
    out = {"eer": round(float((fnmr[k] + fmr[k]) / 2), 4)}
    for target, key in ((1e-3, "fnmr_at_fmr_1e-3"), (1e-4, "fnmr_at_fmr_1e-4")):
        ok = fmr <= target
        out[key] = round(float(fnmr[ok].min()), 4) if ok.any() else None
    return out


def attach_features(recognizer, samples: list[Sample], progress, label: str) -> None:
    for s in progress(samples, desc=label):
        s.features = recognizer.features_from_hand(s.hand) if s.hand is not None else None


# --- decision policy ----------------------------------------------------------
MIN_IMPOSTORS_FOR_A_TAIL = 500  # fewer scores cannot pin a standard deviation down


def calibrate(train_metrics: dict[str, dict]) -> dict:
    """Threshold: above every training impostor and at a Gaussian-tail FMR of 1e-6 within each set;
    margin: the widest that leaves at most 1% of right picks ambiguous.

    The tail is fitted per set because sets differ in their impostor mean: pooling them would fit
    the mixture's spread, not any camera's, and refuse many genuine hands for nothing.
    """
    impostor = np.concatenate([np.array(m["_impostor"]) for m in train_metrics.values() if m["_impostor"]])
    picks = np.array([g for m in train_metrics.values() for g in m["_gaps"]]).reshape(-1, 2)  # (best, gap)
    tails = {}
    for name, m in train_metrics.items():
        scores = np.array(m["_impostor"])
        if len(scores) >= MIN_IMPOSTORS_FOR_A_TAIL:
            tails[name] = round(float(scores.mean() + 4.75 * scores.std()), 4)  # one-sided 1e-6
    if not tails:  # too few scores anywhere: pool them rather than guess
        tails["pooled"] = round(float(impostor.mean() + 4.75 * impostor.std()), 4)
    threshold = round(max(max(tails.values()), float(impostor.max()) + 0.005), 4)
    gaps = picks[picks[:, 0] >= threshold, 1]  # only picks the threshold lets through reach the margin
    margin = 0.0
    for m in (0.05, 0.04, 0.03, 0.02, 0.01):
        if len(gaps) == 0 or (gaps <= m).mean() <= 0.01:
            margin = m
            break
    return {"threshold": threshold, "margin": margin,
            "how": f"threshold = max(training impostor max + 0.005, impostor mean + 4.75 sd (Gaussian FMR 1e-6) of each "
                   f"set with >= {MIN_IMPOSTORS_FOR_A_TAIL} impostor scores); margin = largest of 0.05..0.01 that "
                   "leaves at most 1% of correct training picks above the threshold ambiguous",
            "gaussian_1e-6_by_set": tails, "training_impostors": int(len(impostor)),
            "impostor_mean": round(float(impostor.mean()), 4), "impostor_sd": round(float(impostor.std()), 4),
            "impostor_max": round(float(impostor.max()), 4)}


def public(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


# --- learned embeddings: the unit's score and the calibration of its threshold -------------------
FMR_DECADES = [10.0 ** -k for k in range(2, 10)]  # 1e-2 .. 1e-9: the fmr_points of a format-2 manifest


def template_scores(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """Score matrix (A, B) of int8 templates, the unit's score: cosine of the int8 vectors (model.embedding_scores)."""
    a = q_a.astype(np.float32)
    b = q_b.astype(np.float32)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def all_pairs(templates: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores over every unordered pair of templates (same label = genuine)."""
    scores = template_scores(templates, templates)
    upper = np.triu_indices(len(labels), 1)
    ids = np.unique(labels, return_inverse=True)[1]
    same = ids[upper[0]] == ids[upper[1]]
    values = scores[upper]
    return values[same], values[~same]


def threshold_for_fmr(impostor_desc: np.ndarray, fmr: float) -> float:
    """Lowest threshold (accept when score >= threshold) letting at most floor(fmr * n) impostor scores through."""
    allowed = int(np.floor(fmr * impostor_desc.size))
    return float(np.nextafter(np.float32(impostor_desc[allowed]), np.float32(np.inf)))


def fmr_points(impostor: np.ndarray) -> dict:
    """Threshold per FMR decade: counted where there are >= 3/fmr impostor scores, else an exponential tail fit.

    The tail: above u (the threshold at FMR 1e-3, or 100/n if fewer scores), impostor scores are modelled as
    P(S >= t) = p_u * exp(-(t - u) / beta), beta the mean excess over u (its maximum-likelihood value). An
    exponential tail falls more slowly than a Gaussian one, so the thresholds it gives are the cautious side.
    """
    desc = np.sort(np.asarray(impostor, np.float64))[::-1]
    n = desc.size
    measured_down_to = min((f for f in FMR_DECADES if n >= 3.0 / f), default=None)
    p_u = max(1e-3, 100.0 / n)
    u = threshold_for_fmr(desc, p_u)
    excess = desc[desc >= u] - u
    beta = float(excess.mean()) if excess.size else 1e-3
    points, sources, previous = [], [], -1.0
    for fmr in FMR_DECADES:
        if measured_down_to is not None and fmr >= measured_down_to:
            t, source = threshold_for_fmr(desc, fmr), "measured"
        else:
            t, source = u + beta * np.log(p_u / fmr), "tail fit"
        t = max(float(t), previous)  # a lower FMR never needs a lower threshold
        previous = t
        points.append([fmr, float(np.ceil(t * 1e5) / 1e5)])  # rounded up: never lets more through
        sources.append(source)
    return {"fmr_points": points, "fmr_point_sources": sources, "measured_down_to": measured_down_to,
            "calibration_impostors": int(n),
            "tail": {"u": round(u, 5), "p_u": p_u, "beta": round(beta, 6), "scores_above_u": int(excess.size)}}


def threshold_at(points: list[list[float]], fmr: float) -> float:
    """The matcher's policy: threshold at ``fmr``, log10(fmr) interpolated linearly between fmr_points."""
    logs = np.log10([p[0] for p in points])[::-1]
    values = np.array([p[1] for p in points])[::-1]
    return float(np.interp(np.log10(fmr), logs, values))


def session_protocol(templates: np.ndarray, palms: list[str], sessions: list[int], threshold: float,
                     margin: float) -> dict:
    """Enroll each palm's first image of its first session, probe with every image of the later sessions.

    Returns the genuine and impostor scores, rank-1 and what threshold + margin decide for each probe.
    """
    first = min(sessions)
    enrolled: dict[str, int] = {}
    for i, (palm, session) in enumerate(zip(palms, sessions)):
        if session == first and palm not in enrolled:
            enrolled[palm] = i
    names = sorted(enrolled)
    gallery = templates[[enrolled[p] for p in names]]
    probes = [i for i, s in enumerate(sessions) if s != first and palms[i] in enrolled]
    scores = template_scores(templates[probes], gallery)
    mates = np.array([names.index(palms[i]) for i in probes])
    rows = np.arange(len(probes))
    genuine = scores[rows, mates]
    others = scores.copy()
    others[rows, mates] = -np.inf
    impostor = others[np.isfinite(others)]
    runner_up = others.max(axis=1)
    best = scores.argmax(axis=1)
    top = scores[rows, best]
    second = np.sort(scores, axis=1)[:, -2] if len(names) > 1 else np.full(len(probes), -1.0)
    accepted_right = (best == mates) & (top >= threshold) & (top - second >= margin)
    accepted_wrong = (best != mates) & (top >= threshold) & (top - second >= margin)
    return {"genuine": genuine, "impostor": impostor, "rank1": float(np.mean(best == mates)),
            "rank1_misses": int(np.sum(best != mates)), "probes": len(probes), "enrolled": len(names),
            "accepted_right": int(accepted_right.sum()), "accepted_wrong": int(accepted_wrong.sum()),
            "runner_up": runner_up, "gaps": genuine - runner_up}
