"""Enrollment that checks itself: presentations are taken one at a time until enough of them agree.

Why: one bad frame (a palm square placed off, a different hand, a smear) must not spoil a template
that will be used for years. A refused frame is replaced at once (with the reason's short message for
the employee); once ``wanted`` frames are in, the one that agrees least with the others is dropped and
another presentation asked for, until every kept frame matches every other one or the presentations
run out. The template is then built from the agreeing frames (recognition.Recognizer.enroll_features).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import HandRejected, RecognitionError

__all__ = ["CheckedEnrollment", "enroll_presentations"]


@dataclass(frozen=True)
class CheckedEnrollment:
    template: bytes
    used: list[int]  # presentation indexes the template was built from
    replaced: list[tuple[int, str]]  # (presentation index, why it was replaced): a refusal reason or "disagrees"
    agreement: float  # the lowest score between two kept frames


def enroll_presentations(recognizer, capture: Callable[[], np.ndarray], wanted: int = 3,
                         max_presentations: int = 6, tell: Callable[[str], None] | None = None) -> CheckedEnrollment:
    """Capture presentations until ``wanted`` of them agree pairwise (score >= the recognizer's threshold).

    ``capture()`` returns one frame; ``tell(message)`` shows the employee what to do next. HandRejected
    (reason "inconsistent") when the presentations run out without enough agreeing frames.
    """
    if not 1 <= wanted <= max_presentations:
        raise RecognitionError(f"wanted must be 1 to {max_presentations} presentations, got {wanted}")
    tell = tell or (lambda message: None)
    kept: list[tuple[int, object, bytes]] = []  # (presentation index, features, single-frame template)
    replaced: list[tuple[int, str]] = []
    for index in range(max_presentations):
        try:
            features = recognizer.features(capture())
        except HandRejected as refusal:
            replaced.append((index, refusal.reason))
            tell(str(refusal))
            continue
        kept.append((index, features, recognizer.enroll_features([features]).template))
        if len(kept) < wanted:
            continue
        scores = _pairwise(recognizer, kept)
        if len(kept) == 1 or scores[~np.eye(len(kept), dtype=bool)].min() >= recognizer.threshold:
            return _built(recognizer, kept, replaced, scores)
        worst = int(np.argmin(np.nanmean(np.where(np.eye(len(kept), dtype=bool), np.nan, scores), axis=1)))
        replaced.append((kept[worst][0], "disagrees"))
        del kept[worst]
        tell("One more time, please: hold your hand as before.")
    raise HandRejected("inconsistent", f"Only {len(kept)} of {max_presentations} presentations agreed (need "
                                       f"{wanted}): enroll again, holding the hand flat and still.")


def _pairwise(recognizer, kept) -> np.ndarray:
    """Symmetric scores between the kept frames (each frame against the others' single-frame templates)."""
    templates = [template for _, _, template in kept]
    scores = np.array([recognizer.scores(features, templates) for _, features, _ in kept], dtype=np.float64)
    return np.minimum(scores, scores.T)


def _built(recognizer, kept, replaced, scores) -> CheckedEnrollment:
    built = recognizer.enroll_features([features for _, features, _ in kept])
    off_diagonal = scores[~np.eye(len(kept), dtype=bool)]
    return CheckedEnrollment(built.template, sorted(i for i, _, _ in kept), sorted(replaced),
                             float(off_diagonal.min()) if off_diagonal.size else 1.0)
