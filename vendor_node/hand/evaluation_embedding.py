"""`vendor-node eval` for a learned embedding model (format-2 manifest) and the open-set run.

The unit's matcher for embeddings lives in ``recognition``; until every path there speaks format 2, eval
measures an embedding model through this small adapter, which follows the same contract: template =
``model.embedding_template`` of the model's dequantized output, score = ``model.embedding_scores`` (cosine
of the int8 templates), threshold for a gallery of N = the manifest's threshold at FMR = max_wrong_payer / N
(log10-interpolated between ``decision.fmr_points``), never below ``min_threshold``; the margin over the
runner-up stays. ``EmbeddingRecognizer`` has the methods ``evaluation.evaluate`` calls on a recognizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HandRejected
from .decision import DecisionPolicy
from .evaluation_metrics import decide, upper_bound_95
from .landmarks import is_landmark_folder
from .model import Embedder, embedding_scores, embedding_template, read_manifest

MAX_WRONG_PAYER = 1e-3  # recognition.max_wrong_payer's default: projected wrong payers per stranger presentation
ROI_MEAN, ROI_SD = 128.0, 40.0  # the grey levels palm_square.cut_roi gives every palm region on the unit


def unit_levels(roi: np.ndarray) -> np.ndarray:
    """A palm region cut elsewhere (e.g. Tongji's) at the unit's grey levels: mean 128, sd 40, uint8."""
    raw = roi.astype(np.float32)
    out = (raw - raw.mean()) * (ROI_SD / (float(raw.std()) + 1e-3)) + ROI_MEAN
    return np.clip(out, 0, 255).astype(np.uint8)


def threshold_for_gallery(decision: dict, gallery_size: int, max_wrong_payer: float = MAX_WRONG_PAYER) -> float:
    """The manifest's threshold at FMR = max_wrong_payer / N, at least ``min_threshold``: the unit's own policy."""
    return DecisionPolicy(decision, max_wrong_payer=max_wrong_payer).threshold_for(int(gallery_size))


@dataclass
class EmbeddingFeatures:
    template: np.ndarray  # int8 (D,)
    hand: object = None  # the preprocessed hand (None for --roi)


@dataclass
class EmbeddingEnrollment:
    template: np.ndarray


class EmbeddingGallery:
    """Enrolled int8 templates as one (N, D) array, ids in the same order."""

    def __init__(self, templates: dict[str, np.ndarray]):
        self.ids = list(templates)
        dim = len(next(iter(templates.values()))) if templates else 0
        self.templates = np.stack(list(templates.values())) if templates else np.zeros((0, dim), np.int8)

    def __len__(self) -> int:
        return len(self.ids)


class EmbeddingRecognizer:
    """Preprocess + embedding model + cosine 1:N with the gallery-size threshold and the margin."""

    make_gallery = EmbeddingGallery

    def __init__(self, embedder: Embedder, gallery_size: int = 1000, max_wrong_payer: float = MAX_WRONG_PAYER):
        self.embedder = embedder
        self.decision = embedder.manifest["decision"]
        self.max_wrong_payer = max_wrong_payer
        self.margin = float(self.decision["margin"])
        self.set_gallery_size(gallery_size)

    def set_gallery_size(self, n: int) -> None:
        self.threshold = self.threshold_for(n)

    def threshold_for(self, n: int) -> float:
        return threshold_for_gallery(self.decision, n, self.max_wrong_payer)

    def features(self, image: np.ndarray) -> EmbeddingFeatures:
        from .preprocess import extract_hand

        hand = extract_hand(image)
        return EmbeddingFeatures(embedding_template(self.embedder.embed(hand.roi)), hand)

    def features_from_roi(self, roi: np.ndarray) -> EmbeddingFeatures:
        return EmbeddingFeatures(embedding_template(self.embedder.embed(roi)))

    def enroll_features(self, found: list[EmbeddingFeatures]) -> EmbeddingEnrollment:
        """Several images: the template of the mean of their unit vectors."""
        units = [f.template.astype(np.float32) / max(float(np.linalg.norm(f.template)), 1e-12) for f in found]
        return EmbeddingEnrollment(embedding_template(np.mean(units, axis=0)))

    def score_matrix(self, probes: list[EmbeddingFeatures], gallery: EmbeddingGallery) -> np.ndarray:
        return np.stack([embedding_scores(p.template, gallery.templates) for p in probes])

    def identify(self, features: EmbeddingFeatures, gallery: EmbeddingGallery):
        scores = embedding_scores(features.template, gallery.templates)
        index = decide(scores, self.threshold, self.margin)
        return gallery.ids[index] if index >= 0 else None


def rate(errors: int, trials: int) -> dict:
    """A count with its rate and one-sided 95% upper bound (zero errors in n is not 0%)."""
    return {"count": int(errors), "of": int(trials), "rate": round(errors / trials, 6) if trials else None,
            "upper_95": float(f"{upper_bound_95(errors, trials):.3g}") if trials else None}


def open_set(rows, threshold_for, margin: float, seed: int = 0) -> dict:
    """Half the people enrolled, half strangers (seeded): wrong payers and refusals, with 95% upper bounds.

    ``rows`` are (scores, gallery subjects in score order, probe subject) of every acquired probe of the
    closed-set run; the half gallery is the columns of enrolled people. ``threshold_for(n)`` gives the
    threshold the unit uses with n enrolled. Failures to acquire are not in here (the report counts them).
    """
    people = sorted({subject for _, subjects, _ in rows for subject in subjects})
    if len(people) < 4:
        return {}
    order = np.random.default_rng(seed).permutation(len(people))
    enrolled = {people[i] for i in order[: len(people) // 2]}
    threshold = float(threshold_for(len(enrolled)))
    right = wrong_mated = refused = strangers_accepted = mated = strangers = 0
    for scores, subjects, probe_subject in rows:
        keep = [i for i, s in enumerate(subjects) if s in enrolled]
        if not keep:
            continue
        pick = decide(np.asarray(scores)[keep], threshold, margin)
        chosen = subjects[keep[pick]] if pick >= 0 else None
        if probe_subject in enrolled:
            mated += 1
            right += chosen == probe_subject
            wrong_mated += chosen not in (None, probe_subject)
            refused += chosen is None
        else:
            strangers += 1
            strangers_accepted += chosen is not None
    return {"enrolled": len(enrolled), "strangers": len(people) - len(enrolled), "threshold": round(threshold, 5),
            "margin": margin, "seed": seed,
            "accepted_right": rate(right, mated), "refused": rate(refused, mated),
            "wrong_payer_enrolled": rate(wrong_mated, mated),
            "wrong_payer_stranger": rate(strangers_accepted, strangers)}


FUSED = "fused"  # eval --model fused


class FusedRecognizer:
    """``eval --model fused``: the unit's Recognizer deciding on the fused score of its palm codes and its shortlist
    embedding (fusion.py); every figure (EER, FNMR, rank-1, open set) is of the fused score and its threshold."""

    def __init__(self, recognizer, gallery_size: int = 1000):
        self._inner, self.fusion = recognizer, recognizer.fusion
        self.margin = self.fusion.policy.margin
        self.set_gallery_size(gallery_size)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def threshold_for(self, n: int) -> float:
        return self.fusion.policy.threshold_for(n)

    def set_gallery_size(self, n: int) -> None:
        self.threshold = self.threshold_for(n)

    def score_matrix(self, probes, gallery) -> np.ndarray:
        """Fused scores (P, N), columns in the palm codes' order (every employee holds one)."""
        inner, lister = self._inner, self._inner.shortlist.matcher
        rows = np.arange(len(gallery.codes))
        return np.array([self.fusion.scores(inner.active, inner._features_for(p, inner.active), lister,
                                            inner._features_for(p, lister), gallery, rows, inner.guard)
                         for p in probes]).reshape(len(probes), len(rows))


def fusion_folder(assets_dir) -> Path:
    """The model folder whose manifest holds a ``fusion`` block for the unit's active palm-code model: the
    models.json shortlist model when it does (what the unit decides with), else the first such folder by name."""
    from ..assets import model_set
    from ..errors import ModelError

    models = model_set(assets_dir)
    active = read_manifest(models.active).get("model_id")
    by_name = sorted(p.parent for p in Path(assets_dir).glob("*/manifest.json"))
    for folder in ([models.shortlist] if models.shortlist else []) + by_name:
        if is_landmark_folder(folder):  # the hand-landmark model (hand/landmarks.py) matches nothing
            continue
        if (read_manifest(folder).get("fusion") or {}).get("palm_code_model") == active:
            return folder
    raise ModelError(f"{assets_dir}: no model folder holds a fusion block for the active model {active} "
                     "(eval --model fused)")


def fused_recognizer(assets_dir, cfg, palm_code_recognizer) -> FusedRecognizer:
    """The unit's active palm-code model with the embedding whose manifest holds a ``fusion`` block for it."""
    from ..assets import model_set

    folder, models = fusion_folder(assets_dir), model_set(assets_dir)
    return FusedRecognizer(palm_code_recognizer(
        Embedder.load(assets_dir), accepted=tuple(Embedder.load(f) for f in models.accepted),
        shortlist=Embedder.load(folder), shortlist_keep=models.shortlist_keep or 64,
        max_wrong_payer=cfg.recognition.max_wrong_payer, fused=True))


def recognizer_for(model_dir, cfg, palm_code_recognizer):
    """The recognizer for ``--model DIR`` (else the unit's assets): the matcher its manifest calls for;
    ``--model fused``: the unit's palm codes and embedding deciding together."""
    if model_dir is not None and str(model_dir) == FUSED:
        return fused_recognizer(cfg.unit.assets_dir, cfg, palm_code_recognizer)
    embedder = Embedder.load(model_dir or cfg.unit.assets_dir)
    if embedder.kind == "embedding":
        return EmbeddingRecognizer(embedder)
    return palm_code_recognizer(embedder) if model_dir else palm_code_recognizer.from_config(cfg)


class RoiInput:
    """``eval --roi``: each image already is the aligned palm region; hand finding is skipped, and the region is
    brought to the unit's grey levels (``unit_levels``) as the unit's own preprocessing would."""

    def __init__(self, recognizer):
        self._inner = recognizer

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def features(self, image: np.ndarray):
        import cv2

        height, width = image.shape[:2]
        if height != width:
            raise HandRejected("roi_not_square", f"a palm region must be square, got {width}x{height}")
        if height != 128:
            image = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
        return self._inner.features_from_roi(unit_levels(image))
