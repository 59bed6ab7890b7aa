"""Score-level fusion of the palm codes and a learned embedding: one score from two.

Why: the two models err on different pairs (the palm codes on poorly aligned or creased regions, the
embedding on palms it generalises badly to), so a weighted sum of their scores can separate genuine from
impostor pairs better than either alone. Each score is z-normalised by the impostor scores of calibration
people (never training, never test), so both speak in "impostor standard deviations above the impostor mean",
and the fused score is ``w * z_palm + (1 - w) * z_embedding``. ``w`` is chosen on the calibration people's pairs
(``fit_weight``: the lowest FNMR at a fixed FMR, ties to the lower EER). The rule lives in a manifest's
``fusion`` block; the threshold of the fused score is set like any other (decision.py), from calibration
people's fused impostor scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .evaluation_metrics import eer, fnmr_at_fmr

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 41), 3))  # the grid fit_weight searches


@dataclass(frozen=True)
class FusionRule:
    """fused = weight * (palm - palm_mean) / palm_sd + (1 - weight) * (emb - emb_mean) / emb_sd."""

    palm_mean: float
    palm_sd: float
    emb_mean: float
    emb_sd: float
    weight: float

    @classmethod
    def from_impostors(cls, palm_impostor, emb_impostor, weight: float = 0.5) -> "FusionRule":
        p, e = np.asarray(palm_impostor, np.float64), np.asarray(emb_impostor, np.float64)
        return cls(float(p.mean()), float(p.std()), float(e.mean()), float(e.std()), float(weight))

    def with_weight(self, weight: float) -> "FusionRule":
        return FusionRule(self.palm_mean, self.palm_sd, self.emb_mean, self.emb_sd, float(weight))

    def fuse(self, palm, emb) -> np.ndarray:
        z_palm = (np.asarray(palm, np.float64) - self.palm_mean) / self.palm_sd
        z_emb = (np.asarray(emb, np.float64) - self.emb_mean) / self.emb_sd
        return self.weight * z_palm + (1.0 - self.weight) * z_emb

    def to_dict(self) -> dict:
        return {"palm_code": {"impostor_mean": round(self.palm_mean, 6), "impostor_sd": round(self.palm_sd, 6)},
                "embedding": {"impostor_mean": round(self.emb_mean, 6), "impostor_sd": round(self.emb_sd, 6)},
                "weight_palm_code": round(self.weight, 4)}

    @classmethod
    def from_dict(cls, block: dict, where: str = "fusion") -> "FusionRule":
        """The rule of a manifest's ``fusion`` block; ConfigError naming the missing or bad key."""
        try:
            rule = cls(float(block["palm_code"]["impostor_mean"]), float(block["palm_code"]["impostor_sd"]),
                       float(block["embedding"]["impostor_mean"]), float(block["embedding"]["impostor_sd"]),
                       float(block["weight_palm_code"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: missing or not a number: {exc}") from None
        if rule.palm_sd <= 0 or rule.emb_sd <= 0 or not 0.0 <= rule.weight <= 1.0:
            raise ConfigError(f"{where}: impostor_sd must be > 0 and weight_palm_code within 0..1")
        return rule


def fit_weight(rule: FusionRule, genuine: tuple, impostor: tuple, at_fmr: float = 1e-4) -> tuple[FusionRule, list]:
    """The weight with the lowest FNMR at ``at_fmr`` on calibration pairs (ties: lower EER, then nearer 0.5).

    ``genuine``/``impostor`` are (palm scores, embedding scores) of calibration people's pairs. Returns the
    fitted rule and the whole search [(weight, fnmr, eer)] so the choice can be shown.
    """
    table = []
    for w in WEIGHTS:
        r = rule.with_weight(w)
        g, i = r.fuse(*genuine), r.fuse(*impostor)
        table.append((float(w), fnmr_at_fmr(g, i, at_fmr)[0], eer(g, i)))
    best = min(table, key=lambda row: (row[1], row[2], abs(row[0] - 0.5)))
    return rule.with_weight(best[0]), table


class FusedDecision:
    """The unit's 1:N decision on the fused score (models.json ``shortlist.decide = "fused"``).

    Candidates are the shortlist's rows (the embedding's top K plus every employee without an embedding); the
    palm codes score them with the full alignment search and the embedding's cosine joins through the rule. An
    employee with no embedding yet (enrolled before the cascade) is scored by the palm code alone, carried to the
    fused scale at equal calibrated false-match rate (``palm_code_fmr_points`` -> ``decision.fmr_points``): the
    same risk of taking a stranger for them, and the palm codes' accuracy until a confident match adds the
    embedding. When no
    candidate reaches the threshold (and ``full_search_when_unknown``), the palm codes' coarse pass over everyone
    adds its best few and they are scored too. Threshold by gallery size and margin: the block's ``decision``,
    by the one DecisionPolicy rule.
    """

    def __init__(self, rule: FusionRule, policy, model_id: str, palm_points: list):
        self.rule, self.policy, self.model_id = rule, policy, model_id
        self._palm_curve = _curve(palm_points)
        self._fused_curve = _curve(policy.points)

    def palm_on_fused_scale(self, palm_scores) -> np.ndarray:
        """Palm-code scores as the fused scores with the same calibrated false-match rate (log10-linear between
        the points, the end segments extended)."""
        log_fmr = _extrapolated(palm_scores, *self._palm_curve)
        return _extrapolated(-log_fmr, -self._fused_curve[1], self._fused_curve[0])

    @classmethod
    def from_manifest(cls, manifest: dict, palm_model_id: str, max_wrong_payer: float = 1e-3) -> "FusedDecision":
        """The ``fusion`` block of the embedding's manifest, made for ``palm_model_id``; ModelError otherwise."""
        from ..errors import ModelError
        from .decision import DecisionPolicy

        name = manifest.get("model_id", "the shortlist model")
        block = manifest.get("fusion")
        if not isinstance(block, dict):
            raise ModelError(f"{name}: the manifest has no fusion block: shortlist.decide = \"fused\" needs one "
                             "(scripts/measure_fusion.py --write)")
        if block.get("palm_code_model") != palm_model_id:
            raise ModelError(f"{name}: fusion.palm_code_model is {block.get('palm_code_model')!r}, the active model "
                             f"is {palm_model_id!r}: the fusion was fitted for another palm-code model")
        try:
            rule = FusionRule.from_dict(block, f"{name}: fusion")
            policy = DecisionPolicy(block["decision"], max_wrong_payer=max_wrong_payer)
            palm_points = block["palm_code_fmr_points"]
            if len(palm_points) < 2 or len(policy.points) < 2:
                raise ValueError("palm_code_fmr_points and decision.fmr_points need two points or more")
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{name}: fusion: {exc}") from None
        return cls(rule, policy, f"{palm_model_id}+{name}", palm_points)

    def scores(self, palm, palm_probe, lister, list_probe, gallery, rows, guard) -> np.ndarray:
        """Fused scores of the palm-code bank's ``rows``: float64 (len(rows),)."""
        bank = palm.bank(gallery)
        palm_scores = palm.scores_among(palm_probe, bank, rows, guard)
        emb_bank = lister.bank(gallery)
        where = [emb_bank.row(bank.ids[r]) for r in rows] if emb_bank is not None else [None] * len(rows)
        have = np.array([w is not None for w in where], bool)
        out = np.empty(len(rows))
        if have.any():
            cosines = lister.scores(list_probe, emb_bank, guard)
            out[have] = self.rule.fuse(palm_scores[have], cosines[[w for w in where if w is not None]])
        out[~have] = self.palm_on_fused_scale(palm_scores[~have])
        return out

    def best_two(self, palm, palm_probe, shortlist, list_probe, gallery, enrolled: int, guard):
        """(row, best, runner-up) over the shortlisted candidates, widened by the palm codes' coarse pass
        over everyone when none reaches the threshold (``shortlist.full_search_when_unknown``)."""
        bank = palm.bank(gallery)
        rows = shortlist.rows(list_probe, gallery, guard)
        if rows is None or not len(rows):
            rows = palm.candidates(palm_probe, bank, guard)
        fused = self.scores(palm, palm_probe, shortlist.matcher, list_probe, gallery, rows, guard)
        if (fused.max() < self.policy.threshold_for(enrolled) and shortlist.full_search_when_unknown
                and len(rows) < len(bank)):
            extra = np.setdiff1d(palm.candidates(palm_probe, bank, guard), rows)
            if len(extra):
                rows = np.concatenate([rows, extra])
                fused = np.concatenate([fused, self.scores(palm, palm_probe, shortlist.matcher, list_probe,
                                                           gallery, extra, guard)])
        order = np.argsort(-fused)
        runner_up = float(fused[order[1]]) if len(order) > 1 else 0.0  # alone: as a typical stranger (z = 0)
        return int(rows[order[0]]), float(fused[order[0]]), runner_up


def _curve(points) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds ascending, log10 fmr) of [[fmr, threshold], ...]."""
    ordered = sorted((float(t), float(np.log10(f))) for f, t in points)
    return np.array([t for t, _ in ordered]), np.array([f for _, f in ordered])


def _extrapolated(x, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear y(x) through (xs ascending, ys), the first and last segments extended beyond."""
    x = np.asarray(x, np.float64)
    y = np.interp(x, xs, ys)
    low, high = x < xs[0], x > xs[-1]
    y[low] = ys[0] + (x[low] - xs[0]) * (ys[1] - ys[0]) / max(xs[1] - xs[0], 1e-12)
    y[high] = ys[-1] + (x[high] - xs[-1]) * (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-12)
    return y
