"""The two-stage 1:N search: a learned embedding shortlists, the palm codes decide.

Why: the palm-code model is the accurate one (its alignment search is what tells people apart) but it costs
about 0.1 ms per template, so at 10,000 employees a search takes most of a second; the embedding scores
10,000 templates in one int8 matrix product (under a millisecond). So the embedding ranks the gallery and
keeps the ``keep`` best candidates (``firmware_assets/models.json``: ``shortlist``), and only those are scored
by the palm codes with the full alignment search; the palm-code threshold, margin over the runner-up and
second presentation decide as before. The embedding never decides: a stranger can be accepted only when
the palm codes accept. When no shortlisted candidate reaches the threshold the palm codes search the whole
gallery (``full_search_when_unknown``, default on: measured on Tongji test palms the embedding leaves the
genuine out of its top 64 in 11% of tries), so a genuine employee the embedding missed still pays, only
slower, and what is refused is refused by the full search; off, such an employee is refused ("unknown"). Employees with a palm code but no embedding yet (enrolled before the cascade) are always
candidates, so they keep paying; their embedding is added at their next confident match (recognition.py).
"""
from __future__ import annotations

import numpy as np

from .gallery import Gallery


class Shortlist:
    """Which palm-code rows to score for a probe: the embedding's top ``keep`` plus every row without one."""

    def __init__(self, matcher, keep: int, full_search_when_unknown: bool = True):
        self.matcher = matcher  # the embedding model's EmbeddingMatcher
        self.keep = int(keep)
        self.full_search_when_unknown = bool(full_search_when_unknown)
        self.model_id = matcher.model_id

    def rows(self, probe_vector_features, gallery: Gallery, guard) -> np.ndarray | None:
        """Palm-code bank rows to search, or None when the gallery holds no embeddings (search them all)."""
        bank = self.matcher.bank(gallery)
        codes = gallery.codes
        if bank is None:
            return None
        scores = self.matcher.scores(probe_vector_features, bank, guard)
        keep = min(self.keep, len(scores))
        top = np.argpartition(-scores, keep - 1)[:keep] if keep < len(scores) else np.arange(len(scores))
        rows = [codes.row(bank.ids[r]) for r in top]
        picked = np.array([r for r in rows if r is not None], np.int64)
        return np.union1d(picked, self.unshortlisted(gallery))

    def unshortlisted(self, gallery: Gallery) -> np.ndarray:
        """Palm-code rows of employees with no embedding of this model (cached until the gallery changes)."""
        cached = getattr(gallery, "_unshortlisted", None)
        if cached is not None and cached[:2] == (gallery.revision, self.model_id):
            return cached[2]
        bank = self.matcher.bank(gallery)
        have = bank.__contains__ if bank is not None else (lambda _id: False)
        rows = np.array([r for r, employee_id in enumerate(gallery.codes.ids) if not have(employee_id)], np.int64)
        gallery._unshortlisted = (gallery.revision, self.model_id, rows)
        return rows

    def coverage(self, gallery: Gallery) -> tuple[int, int]:
        """(palm-code employees with an embedding of this model, palm-code employees)."""
        return len(gallery.codes) - len(self.unshortlisted(gallery)), len(gallery.codes)
