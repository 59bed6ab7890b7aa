"""The decision policy: the threshold a score must reach, set by how many are enrolled.

Why by gallery size: a stranger's presentation is compared with every template, so the chance that it is
taken for someone (the wrong-payer rate per stranger presentation) grows about as N x FMR. The threshold
is therefore the one whose calibrated false-match rate is ``recognition.max_wrong_payer / N``: read from
the manifest's ``decision.fmr_points`` (measured on calibration people, never training or test people),
log10(fmr) interpolated linearly between them (beyond the last point: that point's, the strictest
measured), never below ``decision.min_threshold``. A configured ``recognition.threshold`` wins, but never
below that floor. Palm-code manifests (format 1) have no points: their calibrated threshold is used.
"""
from __future__ import annotations

import math

import numpy as np


def threshold_at_fmr(points: list, fmr: float) -> float:
    """The threshold at a false-match rate, from [[fmr, threshold], ...] (log10(fmr) interpolated)."""
    ordered = sorted((math.log10(f), float(t)) for f, t in points)
    xs, ys = [x for x, _ in ordered], [y for _, y in ordered]
    return float(np.interp(math.log10(fmr), xs, ys))  # clamps to the end points outside them


class DecisionPolicy:
    """One model's threshold (by gallery size) and margin over the runner-up."""

    def __init__(self, decision: dict, threshold: float | None = None, margin: float | None = None,
                 max_wrong_payer: float = 1e-3):
        self.points = decision.get("fmr_points") or []
        self.floor = float(decision.get("min_threshold", decision["threshold"]))
        self.configured = None if threshold is None else float(threshold)
        self.threshold = float(decision["threshold"] if threshold is None else threshold)
        self.margin = float(decision["margin"] if margin is None else margin)
        self.max_wrong_payer = float(max_wrong_payer)

    def threshold_for(self, enrolled: int) -> float:
        """The threshold a best score must reach with ``enrolled`` templates in the gallery."""
        if not self.points:
            return self.threshold
        if self.configured is not None:
            return max(self.configured, self.floor)
        return max(threshold_at_fmr(self.points, self.max_wrong_payer / max(1, enrolled)), self.floor)
