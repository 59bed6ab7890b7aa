"""Biometric error rates from score lists (higher score = more alike), kept apart so they are tested alone.

Definitions follow ISO/IEC 19795-1: FMR(t) is the share of impostor scores at or
above t, FNMR(t) the share of genuine scores below t. Open-set identification
(FPIR, FNIR) applies the unit's own policy: the best score must reach the
threshold and beat the runner-up by the margin.
"""
from __future__ import annotations

import numpy as np


def _rates(genuine, impostor):
    """Thresholds (ascending, ending at +inf) with FMR and FNMR at each."""
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    if g.size == 0 or i.size == 0:
        raise ValueError("need at least one genuine and one impostor score")
    thresholds = np.concatenate([np.unique(np.concatenate([g, i])), [np.inf]])
    fmr = (i.size - np.searchsorted(i, thresholds, side="left")) / i.size
    fnmr = np.searchsorted(g, thresholds, side="left") / g.size
    return thresholds, fmr, fnmr


def eer(genuine, impostor) -> float:
    """Equal error rate: where FMR and FNMR cross, interpolated between neighbouring thresholds."""
    _, fmr, fnmr = _rates(genuine, impostor)
    diff = fnmr - fmr  # rises from <= 0 (lowest threshold) to 1 (+inf)
    k = int(np.argmax(diff >= 0))
    if k == 0:
        return float(fmr[0] + fnmr[0]) / 2
    d1, d2 = diff[k - 1], diff[k]
    alpha = -d1 / (d2 - d1) if d2 != d1 else 0.0
    at_fmr = fmr[k - 1] + alpha * (fmr[k] - fmr[k - 1])
    at_fnmr = fnmr[k - 1] + alpha * (fnmr[k] - fnmr[k - 1])
    return float(at_fmr + at_fnmr) / 2


def fnmr_at_fmr(genuine, impostor, target: float) -> tuple[float, bool]:
    """FNMR at the lowest threshold whose FMR is at most ``target``, and whether there were enough
    impostor scores to measure that FMR at all (rule of three: at least 3/target)."""
    _, fmr, fnmr = _rates(genuine, impostor)
    k = int(np.argmax(fmr <= target))  # fmr is non-increasing and reaches 0 at +inf
    return float(fnmr[k]), bool(len(impostor) >= 3.0 / target)


def threshold_at_fmr(genuine, impostor, target: float) -> float:
    thresholds, fmr, _ = _rates(genuine, impostor)
    return float(thresholds[int(np.argmax(fmr <= target))])


def det_points(genuine, impostor, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) along the thresholds, thinned to at most ``max_points``; empty arrays without scores."""
    if len(genuine) == 0 or len(impostor) == 0:
        return np.zeros(0), np.zeros(0)
    _, fmr, fnmr = _rates(genuine, impostor)
    if fmr.size > max_points:
        keep = np.unique(np.linspace(0, fmr.size - 1, max_points).astype(int))
        fmr, fnmr = fmr[keep], fnmr[keep]
    return fmr, fnmr


def decide(scores: np.ndarray, threshold: float, margin: float) -> int:
    """Index of the accepted gallery entry, or -1 (unknown or ambiguous), under threshold + margin."""
    if scores.size == 0:
        return -1
    best = int(np.argmax(scores))
    top = scores[best]
    runner_up = np.max(np.delete(scores, best)) if scores.size > 1 else -np.inf
    return best if top >= threshold and top - runner_up >= margin else -1


def open_set_rates(mated_rows, nonmated_rows, threshold: float, margin: float) -> dict:
    """FNIR and wrong-subject rate over mated searches ((scores, mate index) pairs), FPIR over non-mated ones."""
    out: dict = {"mated_searches": len(mated_rows), "nonmated_searches": len(nonmated_rows)}
    if mated_rows:
        decisions = [decide(np.asarray(s, float), threshold, margin) for s, _ in mated_rows]
        hits = sum(1 for d, (_, mate) in zip(decisions, mated_rows) if d == mate)
        wrong = sum(1 for d, (_, mate) in zip(decisions, mated_rows) if d not in (-1, mate))
        out["fnir"] = 1.0 - hits / len(mated_rows)
        out["wrong_subject"] = wrong / len(mated_rows)
    if nonmated_rows:
        accepted = sum(1 for s in nonmated_rows if decide(np.asarray(s, float), threshold, margin) >= 0)
        out["fpir"] = accepted / len(nonmated_rows)
    return out


def policy_projection(genuine, impostor, threshold: float, sizes=(100, 1000)) -> dict:
    """What the operating threshold means for a unit with N employees enrolled (approximations, stated).

    FMR at the threshold is taken from the impostor scores, and from a Gaussian fitted to them (the only
    way to say anything below one in the number of impostor scores). With N enrolled, a stranger is
    accepted if any of N templates passes: 1 - (1 - FMR)^N; an enrolled employee is charged to someone
    else at most as often, with N - 1 others (the margin over the runner-up only lowers it). A false
    refusal is a genuine score under the threshold; a second presentation, if independent, squares it.
    """
    import math

    g, i = np.asarray(genuine, float), np.asarray(impostor, float)
    if g.size == 0 or i.size == 0:
        return {}
    fmr_counted = float(np.mean(i >= threshold))
    mean, sd = float(i.mean()), float(i.std()) or 1e-9
    fmr_gaussian = 0.5 * math.erfc((threshold - mean) / (sd * math.sqrt(2)))
    fmr = max(fmr_counted, fmr_gaussian)
    fnmr = float(np.mean(g < threshold))
    out = {
        "threshold": threshold, "fmr_counted": fmr_counted, "fmr_gaussian_fit": fmr_gaussian,
        "fnmr": fnmr, "false_refusal_after_second_try": fnmr ** 2,
    }
    for n in sizes:
        out[f"stranger_accepted_of_{n}"] = 1.0 - (1.0 - fmr) ** n
        out[f"wrong_payer_at_most_of_{n}"] = 1.0 - (1.0 - fmr) ** (n - 1)
    return out


def upper_bound_95(errors: int, trials: int) -> float | None:
    """One-sided 95% upper confidence bound of an error rate (exact Clopper-Pearson; 0 of n gives ~3/n).

    Zero errors in n tries is not 0%: this is the rate the data cannot rule out. None without trials.
    """
    import math

    if trials <= 0:
        return None
    if errors >= trials:
        return 1.0

    def cdf(p: float) -> float:  # P(X <= errors) for X ~ Binomial(trials, p)
        if p <= 0:
            return 1.0
        logs = [math.lgamma(trials + 1) - math.lgamma(j + 1) - math.lgamma(trials - j + 1)
                + j * math.log(p) + (trials - j) * math.log1p(-p) for j in range(errors + 1)]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    lo, hi = errors / trials, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 0.05 else (lo, mid)
    return hi
