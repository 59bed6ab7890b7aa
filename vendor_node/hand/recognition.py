"""The unit's recognizer: preprocess, its models, and the 1:N decision with a threshold and a margin.

A unit runs the *active* model (``firmware_assets/models.json``: what new templates are made with) and
keeps matching the templates of the *accepted* older ones, each by its own matcher (embed_matcher.py for a
learned embedding, palm_matcher.py for palm codes). A probe is coded by another model only when the
gallery holds templates of that model, from the same ROI. A model change never locks anyone out: an
employee matched confidently under an old template gets a template of the active model from the same
frame (``refreshed_template``; the unit stores it as an enrollment), and employees not yet refreshed keep
paying with their old one.

The decision: the best score must reach its model's threshold for the gallery's size (decision.py; else
"unknown") and beat the runner-up by more than the margin (else "ambiguous"; the unit then asks for a
second presentation rather than guessing a payer). Across models the common scale is the excess over each
model's threshold: another model naming someone else must trail the winner by more than the margin too.

With a ``shortlist`` model (models.json; cascade.py) the palm codes score only the embedding's best
candidates (and all of them when none of those reaches the threshold, unless configured off); the shortlist
model never decides. Enrollment then stores both templates (a template set, the
palm code first), and an employee with a palm code only gets the embedding at a confident match. With
``shortlist.decide = "fused"`` the shortlist model joins the decision: the candidates are decided on the fused
score of both models (fusion.py), with the fusion's own threshold by gallery size and margin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import palmcode
from .cascade import Shortlist
from .decision import DecisionPolicy
from .embed_matcher import EmbeddingMatcher
from .fusion import FusedDecision
from .gallery import Gallery, PalmCodeBank, parse_template
from .model import Embedder, read_manifest
from .palm_finder import PalmFinder
from .palm_matcher import Enrollment, Features, PalmCodeMatcher, feature_id
from .templates import (KIND_EMBEDDING, KIND_SET, MAX_TEMPLATE_BYTES, TEMPLATE_VERSION, EmbeddingTemplate, Template,
                        TemplateSet, model_tag, template_kind)
from ..assets import model_set
from ..errors import ConfigError, HandRejected, RecognitionError

__all__ = ["Recognizer", "Match", "Features", "Enrollment", "Gallery", "Template", "MAX_TEMPLATE_BYTES",
           "MAX_ENROLL_IMAGES", "feature_id"]

MAX_ENROLL_IMAGES = 5
REFRESH_MARGINS = 2.0  # an old template is refreshed only when its match beats the threshold by this many margins


@dataclass(frozen=True)
class Match:
    employee_id: str | None
    score: float
    runner_up: float
    reason: str  # "match" | "unknown" | "ambiguous"
    model_id: str = field(default="", compare=False)  # the model whose template decided


def make_matcher(embedder: Embedder, params: palmcode.CodeParams | None = None, threads: int = 0):
    kind = getattr(embedder, "kind", None) or embedder.manifest.get("kind", "palm_code")  # training's float twins
    return EmbeddingMatcher(embedder) if kind == "embedding" else PalmCodeMatcher(embedder, params, threads)


class Recognizer:
    """Preprocess + models + matcher; built once per process (each model is loaded once).

    ``embedder`` is the active model; ``accepted`` the older models whose templates are still matched.
    ``threshold``/``margin`` (configured) apply to the active model; None: its manifest's policy.
    """

    def __init__(self, embedder: Embedder, threshold: float | None = None, margin: float | None = None,
                 params: palmcode.CodeParams | None = None, *, accepted: tuple = (), max_wrong_payer: float = 1e-3,
                 shortlist: Embedder | None = None, shortlist_keep: int = 64, full_search_when_unknown: bool = True,
                 fused: bool = False, match_threads: int = 0):
        self.embedder = embedder
        self.matchers = [make_matcher(embedder, params, match_threads)] + [make_matcher(e, None, match_threads)
                                                                           for e in accepted]
        self.shortlist = None
        if shortlist is not None:
            if not isinstance(self.matchers[0], PalmCodeMatcher) or make_matcher(shortlist).kind != "embedding":
                raise RecognitionError(f"a shortlist needs an embedding model ({shortlist.model_path.parent.name}) "
                                       f"and a palm-code active model ({embedder.model_path.parent.name})")
            self.shortlist = Shortlist(make_matcher(shortlist), shortlist_keep, full_search_when_unknown)
            self.matchers.append(self.shortlist.matcher)
        names = [m.model_id for m in self.matchers]
        if len(set(names)) != len(names):
            raise RecognitionError(f"models {names}: each model may be listed once")
        self.active = self.matchers[0]
        self.policies = {m.model_id: DecisionPolicy(m.embedder.manifest["decision"],
                                                    threshold if m is self.active else None,
                                                    margin if m is self.active else None, max_wrong_payer)
                         for m in self.matchers}
        self.threshold = self.policies[self.active.model_id].threshold  # enrollment agreement; calibrated point
        self.margin = self.policies[self.active.model_id].margin
        self.palm_finder = PalmFinder()  # classical alone; from_config adds the landmark model models.json names
        self.guard = None  # set by the unit: templates made are guarded (template_guard.TemplateGuard)
        self._keep_roi = len(self.matchers) > 1
        self.deciders = [m for m in self.matchers if self.shortlist is None or m is not self.shortlist.matcher]
        self.fusion = None  # fusion.FusedDecision: the active palm codes and the shortlist decide together
        if fused:
            if self.shortlist is None:
                raise RecognitionError("a fused decision needs a shortlist embedding model")
            self.fusion = FusedDecision.from_manifest(shortlist.manifest, self.active.model_id, max_wrong_payer)
            self.policies[self.fusion.model_id] = self.fusion.policy

    @classmethod
    def from_config(cls, cfg) -> "Recognizer":
        """The unit's recognizer: models from ``cfg.unit.assets_dir``; threshold/margin from config or manifest.

        A configured threshold or margin below the active manifest's floor (``decision.min_threshold`` /
        ``min_margin``, else the calibrated values themselves) is refused: loosening the matcher past what was
        measured would charge strangers to employees.
        """
        models = model_set(cfg.unit.assets_dir)
        embedders = Embedder.load_all(cfg.unit.assets_dir)
        shortlist = embedders.pop() if models.shortlist else None
        decision = embedders[0].manifest["decision"]
        for key, value in (("threshold", cfg.recognition.threshold), ("margin", cfg.recognition.margin)):
            floor = float(decision.get(f"min_{key}", decision[key]))
            if value is not None and value < floor:
                raise ConfigError(f"recognition.{key}: must be at least {floor:g} (the floor in the model manifest "
                                  f"{embedders[0].model_path.parent.name}/), got {value:g}")
        recognizer = cls(embedders[0], cfg.recognition.threshold, cfg.recognition.margin,
                         accepted=tuple(embedders[1:]), max_wrong_payer=cfg.recognition.max_wrong_payer,
                         shortlist=shortlist, shortlist_keep=models.shortlist_keep,
                         full_search_when_unknown=models.full_search_when_unknown, fused=models.fused,
                         match_threads=cfg.recognition.match_threads)
        recognizer.palm_finder = PalmFinder.from_assets(cfg.unit.assets_dir)
        return recognizer

    # --- the palm-code model's settings (evaluation, benches) ---------------------
    def _palm_matcher(self) -> PalmCodeMatcher:
        for matcher in self.matchers:
            if isinstance(matcher, PalmCodeMatcher):
                return matcher
        raise AttributeError("this recognizer has no palm-code model")

    params = property(lambda self: self._palm_matcher().params)
    grid = property(lambda self: self._palm_matcher().grid)
    feature_id = property(lambda self: self._palm_matcher().feature_id)

    @property
    def model_id(self) -> str:
        return self.active.model_id

    def threshold_for(self, enrolled: int) -> float:
        """The active model's threshold with ``enrolled`` templates in the gallery (decision.py)."""
        return self.policies[self.active.model_id].threshold_for(enrolled)

    # --- features ---------------------------------------------------------------
    def features(self, image: np.ndarray) -> Features:
        """Find the palm in one camera frame (palm_finder.py) and code it with the active model; HandRejected
        when unusable."""
        return self.features_from_hand(self.palm_finder.find(image))

    def features_from_hand(self, hand) -> Features:
        return self.features_from_roi(hand.roi, hand.geometry, hand.quality, hand)

    def features_from_roi(self, roi: np.ndarray, geometry: np.ndarray | None = None, quality: float = 1.0,
                          hand=None) -> Features:
        geometry = np.zeros(0, np.float32) if geometry is None else np.asarray(geometry, np.float32)
        return self.active.features_from_roi(roi, geometry, quality, hand, self._keep_roi and hand is None)

    def _features_for(self, probe: Features, matcher) -> Features:
        """The probe coded by ``matcher``'s model: itself, or the same ROI coded once more (kept on the probe)."""
        if probe.model_id == matcher.model_id or (not probe.model_id and probe.codes is not None
                                                  and isinstance(matcher, PalmCodeMatcher)):
            return probe
        if matcher.model_id not in probe.other:
            roi = probe.roi if probe.roi is not None else getattr(probe.hand, "roi", None)
            if roi is None:
                raise RecognitionError(f"the probe's palm region was not kept: it cannot be coded by {matcher.model_id}")
            probe.other[matcher.model_id] = matcher.features_from_roi(roi, probe.geometry, probe.quality, probe.hand,
                                                                      False)
        return probe.other[matcher.model_id]

    # --- enrollment (always the active model) -----------------------------------
    def enroll(self, images: list[np.ndarray]) -> Enrollment:
        """A template from 1 to 5 images, keeping those that agree with the best one.

        HandRejected when no image holds a usable hand, or when too little palm was readable for the
        template ever to match (reason "too_little_palm").
        """
        if not 1 <= len(images) <= MAX_ENROLL_IMAGES:
            raise RecognitionError(f"enrollment takes 1 to {MAX_ENROLL_IMAGES} images, got {len(images)}")
        found: list[tuple[int, Features]] = []
        rejected: list[tuple[int, str]] = []
        last: HandRejected | None = None
        for i, image in enumerate(images):
            try:
                found.append((i, self.features(image)))
            except HandRejected as exc:
                rejected.append((i, exc.reason))
                last = exc
        if not found:
            raise HandRejected(last.reason, f"none of the {len(images)} enrollment images could be used: {last}")
        built = self.enroll_features([f for _, f in found])
        code = parse_template(built.template)
        code = parse_template(code.members[0]) if isinstance(code, TemplateSet) else code
        if isinstance(self.active, PalmCodeMatcher) and int(code.valid.sum()) < self.active.min_bits:
            raise HandRejected("too_little_palm", "Too little of your palm could be read: hold your open hand "
                                                  "flat and centred over the unit, then enroll again.")
        used = [found[k][0] for k in built.used]
        rejected += [(found[k][0], reason) for k, reason in built.rejected]
        return Enrollment(built.template, used, sorted(rejected))

    def enroll_features(self, found: list[Features]) -> Enrollment:
        """The template from already-coded images (evaluation uses this); ``used``/``rejected`` index ``found``."""
        if not 1 <= len(found) <= MAX_ENROLL_IMAGES:
            raise RecognitionError(f"enrollment takes 1 to {MAX_ENROLL_IMAGES} images, got {len(found)}")
        built = self.active.enroll_features([self._features_for(f, self.active) for f in found], self.threshold,
                                            self.guard)
        if self.shortlist is None:
            return built
        # the embedding from the images the palm codes kept (it shortlists only: no threshold of its own here)
        vector = self.shortlist.matcher.enroll_features([self._features_for(found[k], self.shortlist.matcher)
                                                         for k in built.used], -np.inf, self.guard).template
        return Enrollment(self.with_old_template(vector, built.template), built.used, built.rejected)

    # --- matching ---------------------------------------------------------------
    def _matcher_of(self, bank):
        for matcher in self.matchers:
            if isinstance(bank, PalmCodeBank) == isinstance(matcher, PalmCodeMatcher) and matcher.bank_is(bank):
                return matcher
        return None

    def score_matrix(self, probes: list[Features], gallery: Gallery) -> np.ndarray:
        """Similarity of every probe to every gallery entry (columns in ``gallery.ids`` order): (P, N)."""
        columns = []
        for bank in gallery.banks():
            if not len(bank):
                continue
            matcher = self._matcher_of(bank)
            if matcher is None:
                raise RecognitionError(f"{len(bank)} template(s) ({', '.join(bank.ids[:3])}) were made by a model "
                                       "this unit does not have: re-enroll")
            columns.append(np.array([matcher.scores(self._features_for(p, matcher), bank, self.guard)
                                     for p in probes], np.float32).reshape(len(probes), len(bank)))
        return np.concatenate(columns, axis=1) if columns else np.zeros((len(probes), 0), np.float32)

    def scores(self, probe: Features, templates: "list[bytes] | Gallery") -> np.ndarray:
        """Similarity of one probe to each template, in the templates' order."""
        if isinstance(templates, Gallery):
            return self.score_matrix([probe], templates)[0]
        gallery = Gallery.from_rows([str(i) for i in range(len(templates))], templates)
        by_id = dict(zip(gallery.ids, self.score_matrix([probe], gallery)[0]))
        return np.array([by_id[str(i)] for i in range(len(templates))], np.float32)

    def identify(self, image_or_features, gallery: Gallery) -> Match:
        """Who this is, or None with the reason ("unknown": nobody close; "ambiguous": two too close)."""
        probe = image_or_features if isinstance(image_or_features, Features) else self.features(image_or_features)
        enrolled = len(gallery)
        results = []
        for matcher in self.deciders:
            bank = matcher.bank(gallery)
            if bank is None:
                continue  # no template of this model: the probe is not coded by it
            coded, policy = self._features_for(probe, matcher), self.policies[matcher.model_id]
            if matcher is self.active and self.fusion is not None:
                row, best, runner_up = self.fusion.best_two(matcher, coded, self.shortlist, self._features_for(
                    probe, self.shortlist.matcher), gallery, enrolled, self.guard)
                policy = self.fusion.policy
                results.append((best - policy.threshold_for(enrolled), best, runner_up, bank.ids[row], self.fusion,
                                policy))
                continue
            rows = None
            if matcher is self.active and self.shortlist is not None:
                rows = self.shortlist.rows(self._features_for(probe, self.shortlist.matcher), gallery, self.guard)
            if rows is not None and len(rows):
                row, best, runner_up = matcher.best_two_among(coded, bank, rows, self.guard)
            if rows is None or (len(rows) < len(bank) and self.shortlist.full_search_when_unknown
                                and (not len(rows) or best < policy.threshold_for(enrolled))):
                row, best, runner_up = matcher.best_two(coded, bank, self.guard)  # nobody shortlisted passed
            elif not len(rows):
                continue  # nobody shortlisted holds a palm code
            results.append((best - policy.threshold_for(enrolled), best, runner_up, bank.ids[row], matcher, policy))
        if not results:
            return Match(None, 0.0, 0.0, "unknown")
        results.sort(key=lambda r: -r[0])
        excess, best, runner_up, employee_id, matcher, policy = results[0]
        if excess < 0:
            return Match(None, best, runner_up, "unknown", matcher.model_id)
        # Another model naming someone else over its own threshold is a runner-up on the common scale (the
        # excess over each model's threshold): it must trail by more than the margin too.
        rival = max((r[0] for r in results[1:] if r[3] != employee_id and r[0] >= 0), default=-1.0)
        if best - runner_up <= policy.margin or excess - rival <= policy.margin:
            return Match(None, best, runner_up, "ambiguous", matcher.model_id)  # a tie is never a payer
        return Match(employee_id, best, runner_up, "match", matcher.model_id)

    def refreshed_template(self, probe: Features, match: Match, gallery: Gallery) -> bytes | None:
        """The active model's template for a confident match under an older model's template, from the same
        frame (no image kept); None when the match was under the active model, the employee already has an
        active-model template, the match is not confident enough (threshold + ``REFRESH_MARGINS`` margins, and
        that far above the runner-up), or the new template would come close to another employee's. The unit
        stores it with the old template beside it (``with_old_template``). With a shortlist model: its missing
        embedding, on the same confident-match terms, for a match under the active model."""
        if match.reason != "match" or not match.model_id:
            return None
        policy = self.policies[match.model_id]
        confident = REFRESH_MARGINS * policy.margin
        if (match.score < policy.threshold_for(len(gallery)) + confident
                or match.score - match.runner_up <= confident):
            return None
        if match.model_id in (self.active.model_id, getattr(self.fusion, "model_id", None)):
            lister = self.shortlist.matcher if self.shortlist else None
            if lister is None or (lister.bank(gallery) is not None and match.employee_id in lister.bank(gallery)):
                return None
            return lister.enroll_features([self._features_for(probe, lister)], -np.inf, self.guard).template
        if self.active.bank(gallery) is not None and match.employee_id in self.active.bank(gallery):
            return None
        fresh = self._features_for(probe, self.active)
        bank = self.active.bank(gallery)
        if bank is not None:
            row, best, _ = self.active.best_two(fresh, bank, self.guard)
            if best >= self.threshold_for(len(gallery)) - self.margin and bank.ids[row] != match.employee_id:
                return None
        return self.active.enroll_features([fresh], self.threshold, self.guard).template

    def with_old_template(self, new: bytes, old: bytes) -> bytes:
        """The template stored after a refresh: a set of the active model's ``new`` template and the employee's
        older one(s), so the older model still knows them when the new one misses (one guard for all)."""
        fresh = list(_members_of(new))
        older = [m for m in _members_of(old) if _model_key(m) not in {_model_key(f) for f in fresh}]
        if self.guard is not None:
            older = [self.guard.adopt(m) for m in older]
        active = self._model_key_of(self.active)
        members = sorted(fresh + older, key=lambda m: _model_key(m) != active)  # the active model's first (stable)
        return TemplateSet(tuple(members), model_tag(self.active.model_id),
                           self.guard.guard_id if self.guard else 0).to_bytes()

    @staticmethod
    def _model_key_of(matcher) -> tuple:
        return ("code",) if isinstance(matcher, PalmCodeMatcher) else ("tag", model_tag(matcher.model_id))

    def templates_by_model(self, gallery: Gallery) -> dict[str, int]:
        """How many templates each model holds ({model_id: n}; "unknown model" for any this unit lacks)."""
        out: dict[str, int] = {}
        for bank in gallery.banks():
            if len(bank):
                matcher = self._matcher_of(bank)
                name = matcher.model_id if matcher else "unknown model"
                out[name] = out.get(name, 0) + len(bank)
        return out


def _members_of(template: bytes) -> tuple:
    return TemplateSet.from_bytes(template).members if template_kind(template) == KIND_SET else (template,)


def _model_key(template: bytes) -> tuple:
    """("tag", model tag) of a v2 embedding template, ("code",) of a palm code: one member per key in a set."""
    return ("tag", EmbeddingTemplate.from_bytes(template).model_tag) if template_kind(template) == KIND_EMBEDDING \
        else ("code",)


def templates_by_model(templates, assets_dir) -> dict[str, int]:
    """How many of the stored ``templates`` (bytes) each shipped model made, read from their headers (no model
    runs): {model_id: n}, plus "unknown model ..." / "unreadable" for templates no shipped model can match."""
    names: dict[tuple, str] = {}
    for folder in model_set(assets_dir).all:
        manifest = read_manifest(folder)
        name = manifest.get("model_id") or folder.name
        key = ("tag", model_tag(name)) if manifest.get("kind") == "embedding" else ("code", feature_id(manifest))
        names[key] = name
    counts: dict[str, int] = {}
    for blob in templates:
        try:
            t = parse_template(blob)
        except RecognitionError:
            name = "unreadable"
        else:
            if isinstance(t, TemplateSet):  # mid-way through a model change: counted on its active-model member
                t = parse_template(t.members[0])
            if isinstance(t, EmbeddingTemplate):
                name = names.get(("tag", t.model_tag), f"unknown model {t.model_tag:08x}")
            else:
                name = names.get(("code", t.feature_id), "unknown palm-code model")
        counts[name] = counts.get(name, 0) + 1
    return counts


def shortlist_coverage(templates, assets_dir) -> tuple[str, int] | None:
    """(shortlist model id, how many stored templates hold its embedding) when models.json names a shortlist."""
    models = model_set(assets_dir)
    if models.shortlist is None:
        return None
    manifest = read_manifest(models.shortlist)
    name = manifest.get("model_id") or models.shortlist.name
    tag, count = model_tag(name), 0
    for blob in templates:
        try:
            count += any(_model_key(m) == ("tag", tag) for m in _members_of(bytes(blob)))
        except RecognitionError:
            continue  # counted as unreadable by templates_by_model
    return name, count
