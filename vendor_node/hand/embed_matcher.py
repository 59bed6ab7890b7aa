"""The matcher of a learned embedding model: an int8 vector per palm, cosine scores, one matrix product for 1:N.

The template is ``model.embedding_template`` of the model's dequantized output and the score
``model.embedding_scores`` (the cosine of the int8 vectors): the very functions the calibration used,
so the manifest's false-match points hold for the scores the unit computes.
"""
from __future__ import annotations

import numpy as np

from .gallery import EmbeddingBank
from .model import embedding_scores, embedding_template
from .palm_matcher import Enrollment, Features
from .templates import EmbeddingTemplate, model_tag
from ..errors import RecognitionError


class EmbeddingMatcher:
    """Codes and matches with one embedding model (manifest format 2)."""

    kind = "embedding"

    def __init__(self, embedder):
        self.embedder = embedder
        self.model_id = embedder.model_id
        self.model_tag = model_tag(self.model_id)
        self.dim = int(embedder.output_shape[-1])

    def features_from_roi(self, roi, geometry, quality, hand, keep_roi) -> Features:
        vector = embedding_template(self.embedder.embed(roi))
        return Features(geometry=geometry, quality=float(quality), hand=hand, vector=vector, model_id=self.model_id,
                        roi=roi if keep_roi else None)

    def bank(self, gallery) -> EmbeddingBank | None:
        bank = gallery.embeddings.get(self.model_tag)
        return bank if bank is not None and len(bank) else None

    def bank_is(self, bank) -> bool:
        return isinstance(bank, EmbeddingBank) and bank.model_tag == self.model_tag

    def enroll_features(self, found: list[Features], threshold: float, guard) -> Enrollment:
        """One template from 1-5 images: the one agreeing best with the others (of two: the sharper) is the
        reference, images scoring under ``threshold`` against it are left out ("inconsistent"), the kept
        unit vectors are averaged and quantized again (a steadier template than any single image)."""
        vectors = np.array([f.vector for f in found], np.int8)
        sims = np.array([embedding_scores(v, vectors) for v in vectors], np.float64)
        np.fill_diagonal(sims, np.nan)
        agreement = np.array([f.quality for f in found]) if len(found) <= 2 else np.nanmean(sims, axis=1)
        ref = int(np.argmax(agreement))
        used = sorted([ref] + [k for k in range(len(found)) if k != ref and sims[k, ref] >= threshold])
        rejected = [(k, "inconsistent") for k in range(len(found)) if k not in used]
        kept = vectors[used].astype(np.float64)
        norms = np.linalg.norm(kept, axis=1, keepdims=True)
        mean = (kept / np.where(norms > 0, norms, 1.0)).mean(axis=0)
        template = EmbeddingTemplate(embedding_template(mean), self.model_tag, len(used)).to_bytes()
        return Enrollment(guard.protect(template) if guard else template, used, rejected)

    def scores(self, probe: Features, bank: EmbeddingBank, guard) -> np.ndarray:
        return bank.scores(self._probe_vector(probe, bank, guard))

    def best_two(self, probe: Features, bank: EmbeddingBank, guard) -> tuple[int, float, float]:
        return bank.best_two(self._probe_vector(probe, bank, guard))

    def _probe_vector(self, probe: Features, bank: EmbeddingBank, guard) -> np.ndarray:
        if probe.vector is None or probe.model_id != self.model_id:
            raise RecognitionError(f"a probe coded by {probe.model_id or 'a palm-code model'} cannot be matched "
                                   f"against {self.model_id} templates")
        if bank.dim != self.dim:
            raise RecognitionError(f"templates have {bank.dim} values, {self.model_id} makes {self.dim}: re-enroll")
        if not bank.guard_id:
            return probe.vector
        if guard is None:
            raise RecognitionError("the templates are guarded but this recognizer has no template guard key")
        guard.check_gallery(bank.guard_id)
        return guard.protect_vector(probe.vector)
