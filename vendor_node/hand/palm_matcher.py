"""The palm-code matcher of the palm-gabor-1 model: competitive codes, alignment search, coarse-then-fine 1:N.

Kept beside the learned model so employees enrolled before it keep paying (and get refreshed to the
active model on a confident match, recognition.py). Scores are similarities in 0..1 (1 - normalised
angular distance); the decision (threshold, margin) is the Recognizer's.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from . import bit_search, palmcode
from .gallery import PalmCodeBank
from .templates import Template
from ..errors import RecognitionError


@dataclass(frozen=True)
class Features:
    """What the matcher needs from one image: palm codes per probe pose (palm-code models) or an int8
    embedding (``vector``, embedding models), the hand's geometry, and which model made them."""

    codes: np.ndarray | None = None  # uint8 (R, H, W) orientation per cell, one per CodeParams.poses(); [0] as cut
    valid: np.ndarray | None = None  # bool (R, H, W) trusted cells
    geometry: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # float32 (G,)
    quality: float = 1.0
    hand: object | None = field(default=None, repr=False, compare=False)  # the preprocess.Hand, when known
    vector: np.ndarray | None = None  # int8 (D,) clear embedding template of this image
    model_id: str = ""
    roi: np.ndarray | None = field(default=None, repr=False, compare=False)  # kept only to code it for another model
    other: dict = field(default_factory=dict, repr=False, compare=False)  # model_id -> Features of the same ROI


@dataclass(frozen=True)
class Enrollment:
    template: bytes
    used: list[int]  # indexes of the images the template was built from
    rejected: list[tuple[int, str]]  # (index, reason code) of the images left out


def feature_id(manifest: dict) -> int:
    """32-bit id of how codes are made (filters, grid, coding): templates only compare within one id."""
    block = {"filters": manifest.get("filters"), "output": manifest["output"]["shape"], "code_format": 1}
    digest = hashlib.sha256(json.dumps(block, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class _Prepared:
    """One probe's packed variants, row-major (V, 3, W64)/(V, W64) and word-major (3, W64, V)/(W64, V)."""

    geometry: np.ndarray
    codes: np.ndarray
    guard_id: int | None
    planes: np.ndarray
    masks: np.ndarray
    planes_t: np.ndarray
    masks_t: np.ndarray
    coarse: np.ndarray  # indexes of the coarse pass's variants
    sift: np.ndarray  # ... and of the sift's
    coarse_first: np.ndarray  # ... of the coarse pass's first stage (``coarse_first_step``)
    coarse_rest: np.ndarray  # ... and of its other variants


class PalmCodeMatcher:
    """Codes and matches with one palm-code model (manifest format 1)."""

    kind = "palm_code"

    def __init__(self, embedder, params: palmcode.CodeParams | None = None, threads: int = 0):
        self.embedder = embedder
        self.model_id = getattr(embedder, "model_id", None) or embedder.manifest.get("model_id", "palm-code")
        self.params = params or palmcode.CodeParams.from_manifest(embedder.manifest.get("code", {}))
        self.grid = tuple(embedder.output_shape[:2])
        self.feature_id = feature_id(embedder.manifest)
        self.min_bits = int(self.params.min_overlap * self.grid[0] * self.grid[1])
        self._full_shifts = palmcode.shifts(self.params.max_shift)
        self._coarse_shifts = palmcode.shifts(self.params.max_shift, self.params.coarse_step)
        self._sift_shifts = palmcode.shifts(self.params.sift_reach, self.params.sift_step)
        self._last: _Prepared | None = None  # the last probe's variants (one probe is searched at a time)
        self._layouts: dict = {}  # guard id -> palmcode.variant_layout (made once per gallery guard)
        rotations = len(self.params.poses())
        what = [(r, dy, dx) for r in range(rotations) for dy, dx in self._full_shifts]
        self._variants = {name: np.array([i for i, (r, dy, dx) in enumerate(what)
                                          if r < self.params.coarse_rotations and (dy, dx) in set(wanted)], np.int64)
                          for name, wanted in (("coarse", self._coarse_shifts), ("sift", self._sift_shifts))}
        first = set(palmcode.shifts(self.params.max_shift, self.params.coarse_first_step or 1))
        coarse = [(i, what[i][1:]) for i in self._variants["coarse"]]
        self._variants["coarse_first"] = np.array([i for i, s in coarse if s in first], np.int64)
        self._variants["coarse_rest"] = np.array([i for i, s in coarse if s not in first], np.int64)
        self.threads = bit_search.match_threads(threads)  # the sift and coarse pass are split over these

    def features_from_roi(self, roi, geometry, quality, hand, keep_roi, poses: int | None = None) -> Features:
        """The ROI coded at every probe pose (``poses``: only the first few; enrolling one image needs one)."""
        turned = np.stack([palmcode.rotate_roi(roi, angle, zoom) for angle, zoom in self.params.poses()[:poses]])
        batch = getattr(self.embedder, "responses_of", None)  # training's float twins code one ROI at a time
        responses = batch(turned) if batch else np.stack([self.embedder.responses(t) for t in turned])
        valid = np.stack([palmcode.valid_cells(t, self.grid, self.params.mask_erode) for t in turned])
        codes, valid = palmcode.competitive_code(responses, valid, self.params.fragile_fraction)  # every pose at once
        return Features(codes, valid, geometry, float(quality), hand, model_id=self.model_id,
                        roi=roi if keep_roi else None)

    def bank(self, gallery) -> PalmCodeBank | None:
        return gallery.codes if len(gallery.codes) else None

    def bank_is(self, bank) -> bool:
        return isinstance(bank, PalmCodeBank)

    # --- enrollment -------------------------------------------------------------
    def enroll_features(self, found: list[Features], threshold: float, guard) -> Enrollment:
        """The template from already-coded images; ``used``/``rejected`` index ``found``.

        With several images the reference is the one that agrees best with the others (with two: the
        sharper one); images that do not reach the threshold against it are left out ("inconsistent"),
        and cells where most of the other kept images (at least two) disagree about the orientation
        are masked out of the template (unstable cells).
        """
        if len(found) == 1:
            f = found[0]
            template = self._template(f.codes[0], f.valid[0], f.geometry, 1)
            return Enrollment(guard.protect(template) if guard else template, [0], [])
        singles = PalmCodeBank()
        singles.extend([str(i) for i in range(len(found))],
                       [Template(f.codes[0], f.valid[0], f.geometry, 1, self.feature_id) for f in found])
        sims = np.array([self.scores(f, singles, None) for f in found], np.float64)
        np.fill_diagonal(sims, np.nan)
        agreement = np.nanmean(sims, axis=1)
        if len(found) == 2:  # two images agree with each other equally: keep the better-quality one
            agreement = np.array([f.quality for f in found])
        ref = int(np.argmax(agreement))
        reference = found[ref]
        used, rejected = [ref], []
        votes, voters = np.zeros(self.grid, np.int16), np.zeros(self.grid, np.int16)
        geometries = [reference.geometry]
        for k, f in enumerate(found):
            if k == ref:
                continue
            if sims[k, ref] < threshold:
                rejected.append((k, "inconsistent"))
                continue
            code, valid = self._aligned_to(f, reference)
            step = np.abs(code.astype(np.int16) - reference.codes[0])
            agree = np.minimum(step, 6 - step) <= 1
            votes += (agree & valid).astype(np.int16)
            voters += valid.astype(np.int16)
            used.append(k)
            geometries.append(f.geometry)
        # A cell is dropped only when at least two other images saw it and most of them disagree:
        # with one other image there is no telling which of the two is right.
        stable = (voters < 2) | (2 * votes >= voters)
        same_size = len({g.shape for g in geometries}) == 1
        geometry = np.median(np.array(geometries), axis=0) if same_size else reference.geometry
        template = self._template(reference.codes[0], reference.valid[0] & stable, geometry, len(used))
        return Enrollment(guard.protect(template) if guard else template, sorted(used), rejected)

    def _aligned_to(self, f: Features, reference: Features) -> tuple[np.ndarray, np.ndarray]:
        """``f``'s code moved onto the reference by the best rotation and shift."""
        planes, masks, what = palmcode.probe_variants(f.codes, f.valid, self._full_shifts, len(f.codes))
        ref_planes = palmcode.pack_cells(palmcode.johnson_planes(reference.codes[0])[None])
        ref_masks = palmcode.pack_cells(reference.valid[:1])
        d = bit_search.variant_distances(planes, masks, ref_planes, ref_masks, self.min_bits)[:, 0]
        r, dy, dx = what[int(np.argmin(d))]
        return (palmcode.shift_cells(f.codes[r], dy, dx, 0), palmcode.shift_cells(f.valid[r], dy, dx, False))

    def _template(self, code, valid, geometry, used: int) -> bytes:
        return Template(code, valid, np.asarray(geometry, np.float32), used, self.feature_id).to_bytes()

    # --- matching ---------------------------------------------------------------
    def scores(self, probe: Features, bank: PalmCodeBank, guard) -> np.ndarray:
        """Similarity (0..1) to every entry of the bank with the full alignment search: float32 (N,)."""
        self.check(bank, guard)
        return self._fine(self._prepared(probe, bank, guard), bank, None)

    def best_two(self, probe: Features, bank: PalmCodeBank, guard) -> tuple[int, float, float]:
        """(row, best score, runner-up score): cheap passes narrow the bank (``candidates``), the full search
        on those decides."""
        self.check(bank, guard)
        prepared = self._prepared(probe, bank, guard)
        return self._best_two_of(prepared, bank, self._candidates(prepared, bank))

    def candidates(self, probe: Features, bank: PalmCodeBank, guard) -> np.ndarray:
        """Bank rows worth the full search: the best ``candidates`` of the sift and coarse passes.

        The sift (when ``sift_reach``) scores every entry with the probe as cut at a few shifts and keeps
        ``max(sift_keep, sift_fraction x N)``; the coarse pass scores those at more shifts and keeps
        ``candidates`` (scripts/measure_coarse.py measures how often the genuine would be left out, on
        people the model never saw). With ``coarse_first_step`` the coarse pass scores every sifted entry at
        its shifts on that step first and its other shifts only on the best ``coarse_first_keep`` of them: the
        kept entries get exactly their full coarse score (the better of the two), and the genuine is lost only
        when the first stage ranks it below ``coarse_first_keep`` (measured over the whole gallery)."""
        self.check(bank, guard)
        return self._candidates(self._prepared(probe, bank, guard), bank)

    def _candidates(self, prepared: "_Prepared", bank: PalmCodeBank) -> np.ndarray:
        n, p = len(bank), self.params
        keep = min(n, p.candidates)
        if keep == n:
            return np.arange(n)
        rows = None
        wide = max(p.sift_keep, int(p.sift_fraction * n))
        if p.sift_reach and wide < n:
            sifted = self.pass_scores(prepared, prepared.sift, bank, None, p.sift_word_step)
            rows = np.sort(np.argpartition(-sifted, wide - 1)[:wide])
        first_keep = max(p.coarse_first_keep, keep)
        if p.coarse_first_step and (n if rows is None else len(rows)) > first_keep and len(prepared.coarse_rest):
            first = self.pass_scores(prepared, prepared.coarse_first, bank, rows)
            picked = np.sort(np.argpartition(-first, first_keep - 1)[:first_keep])
            rows = picked if rows is None else rows[picked]
            coarse = np.maximum(first[picked], self.pass_scores(prepared, prepared.coarse_rest, bank, rows))
        else:
            coarse = self.pass_scores(prepared, prepared.coarse, bank, rows)
        best = np.argpartition(-coarse, keep - 1)[:keep]
        return best if rows is None else rows[best]

    def scores_among(self, probe: Features, bank: PalmCodeBank, rows: np.ndarray, guard) -> np.ndarray:
        """Full-search similarity to the given bank rows only: float32 (len(rows),)."""
        self.check(bank, guard)
        return self._fine(self._prepared(probe, bank, guard), bank, np.asarray(rows, np.int64))

    def best_two_among(self, probe: Features, bank: PalmCodeBank, rows: np.ndarray, guard) -> tuple[int, float, float]:
        """(row, best, runner-up) of the full alignment search on the given bank rows only (a shortlist)."""
        self.check(bank, guard)
        return self._best_two_of(self._prepared(probe, bank, guard), bank, np.asarray(rows, np.int64))

    def _best_two_of(self, prepared: "_Prepared", bank: PalmCodeBank, rows: np.ndarray) -> tuple[int, float, float]:
        fine = self._fine(prepared, bank, rows)
        order = np.argsort(-fine, kind="stable")
        runner_up = float(fine[order[1]]) if len(order) > 1 else 0.0
        return int(rows[order[0]]), float(fine[order[0]]), runner_up

    def pass_scores(self, prepared: "_Prepared", variants: np.ndarray, bank: PalmCodeBank, rows,
                    word_step: int = 1) -> np.ndarray:
        """Similarity over some of the probe's variants only (a sift or coarse pass), on ``rows`` (None: all),
        on every ``word_step``-th word of each plane (the overlap floor scaled alike)."""
        words = slice(None, None, word_step)
        d = bit_search.wide_distances(prepared.planes[variants][:, :, words], prepared.masks[variants][:, words],
                                    bank.planes_t[:, words], bank.masks_t[words], self.min_bits // word_step,
                                    columns=rows, pool=bit_search.match_pool(self.threads)).min(axis=0)
        return self._with_geometry(1.0 - d, prepared.geometry, bank, rows)

    def _fine(self, prepared: "_Prepared", bank: PalmCodeBank, rows) -> np.ndarray:
        """The full alignment search (every variant) on ``rows`` (None: all): float32 similarities."""
        if rows is None:
            d = bit_search.wide_distances(prepared.planes, prepared.masks, bank.planes_t, bank.masks_t,
                                        self.min_bits, pool=bit_search.match_pool(self.threads)).min(axis=0)
        else:
            g_planes, g_masks = bank.rows(rows)
            d = bit_search.deep_distances(prepared.planes_t, prepared.masks_t, g_planes, g_masks, self.min_bits,
                                        pool=bit_search.match_pool(self.threads))
        return self._with_geometry(1.0 - d, prepared.geometry, bank, rows)

    def _with_geometry(self, out: np.ndarray, geometry_of_probe: np.ndarray, bank: PalmCodeBank, rows) -> np.ndarray:
        if self.params.geometry_weight:
            geometry = bank.geometry if rows is None else bank.geometry[rows]
            out -= self.params.geometry_weight * palmcode.geometry_distances(
                geometry_of_probe, geometry, self.params.geometry_min_shared, self.params.geometry_fill)
        return np.clip(out, 0.0, 1.0)

    def _prepared(self, probe: Features, bank: PalmCodeBank, guard) -> "_Prepared":
        """The probe's packed variants (every pose x shift), in the bank's guard domain, made once per probe
        and gallery guard: the coarse pass, the full search and a fallback search all reuse them."""
        guard_id = bank.guard_id
        last = self._last
        if last is not None and last.codes is probe.codes and last.guard_id == guard_id:
            return last
        # a guarded gallery: the same keyed transform as its templates (distances unchanged), applied in the packing
        layout = self._layouts.get(guard_id)
        if layout is None:
            order, xor = guard.layout(self.grid) if guard_id is not None else (None, None)
            layout = self._layouts[guard_id] = palmcode.variant_layout(self.grid, self._full_shifts, order, xor)
        planes, masks = palmcode.packed_variants(probe.codes, probe.valid, len(probe.codes), layout)
        rotations = min(self.params.coarse_rotations, len(probe.codes))
        passes = [self._variants[name] for name in ("coarse", "sift", "coarse_first", "coarse_rest")]
        if rotations < self.params.coarse_rotations:  # a probe coded at fewer poses than the settings name
            passes = [v[v < rotations * len(self._full_shifts)] for v in passes]
        self._last = _Prepared(probe.geometry, probe.codes, guard_id, planes, masks,
                               np.ascontiguousarray(planes.transpose(1, 2, 0)), np.ascontiguousarray(masks.T),
                               *passes)
        return self._last

    def check(self, bank: PalmCodeBank, guard) -> None:
        if bank.guard_id is not None:
            if guard is None:
                raise RecognitionError("the templates are guarded but this recognizer has no template guard key")
            guard.check_gallery(bank.guard_id)
        if len(bank) and bank.grid != self.grid:
            raise RecognitionError(f"templates use a {bank.grid} code grid, this model makes {self.grid}: re-enroll")
        foreign = np.flatnonzero(bank.feature_ids != self.feature_id)
        if foreign.size:
            names = ", ".join(bank.ids[i] for i in foreign[:3])
            raise RecognitionError(f"{foreign.size} template(s) ({names}) were made by another model's filters: re-enroll")
