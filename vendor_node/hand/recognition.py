"""Templates (<= 1 KiB) and the 1:N matcher with a score threshold and a margin over the runner-up.

A template is a palm code (see palmcode.py) with its trusted-cell mask and the
hand's geometry, in a versioned binary format with a CRC, so a truncated or
foreign template is refused with a clear message instead of matching nobody (or
somebody). Scores are similarities in 0..1 (1 - normalised angular distance).

The decision policy: the best score must reach ``threshold`` (else "unknown") and
beat the runner-up by more than ``margin`` (else "ambiguous"); the unit then asks for a
second presentation rather than guessing a payer.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import palmcode, template_guard
from ..errors import ConfigError, HandRejected, RecognitionError
from .model import Embedder

TEMPLATE_MAGIC = b"VNPT"
TEMPLATE_VERSION = 1
MAX_TEMPLATE_BYTES = 1024
MAX_ENROLL_IMAGES = 5
_HEADER = struct.Struct("<4sBBBBBBHI")  # magic, version, orientations, grid h, grid w, images used, geometry len, flags, feature id
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Features:
    """What the matcher needs from one image: palm codes per probe pose, their masks, the hand's geometry."""

    codes: np.ndarray  # uint8 (R, H, W) orientation per cell, one per CodeParams.poses(); [0] is the ROI as cut
    valid: np.ndarray  # bool (R, H, W) trusted cells
    geometry: np.ndarray  # float32 (G,)
    quality: float = 1.0
    hand: object | None = field(default=None, repr=False, compare=False)  # the preprocess.Hand, when known


@dataclass(frozen=True)
class Match:
    employee_id: str | None
    score: float
    runner_up: float
    reason: str  # "match" | "unknown" | "ambiguous"


@dataclass(frozen=True)
class Enrollment:
    template: bytes
    used: list[int]  # indexes of the images the template was built from
    rejected: list[tuple[int, str]]  # (index, reason code) of the images left out


@dataclass(frozen=True)
class Template:
    """One employee's palm template; ``to_bytes`` gives the stored form (578 bytes for a 32x32 grid).

    Layout, little-endian: header ``VNPT``, version u8, orientations u8, grid h u8, grid w u8,
    images used u8, geometry count u8, flags u16, feature id u32 (which filters made the code);
    then the code as 3 Johnson bit-planes (h*w bits each), the trusted-cell mask (h*w bits),
    the geometry as float16, and a CRC-32 of everything before it.
    """

    code: np.ndarray  # uint8 (H, W)
    valid: np.ndarray  # bool (H, W)
    geometry: np.ndarray  # float32 (G,)
    images_used: int
    feature_id: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.code.shape

    def bit_planes(self) -> np.ndarray:
        return palmcode.johnson_planes(self.code)

    def to_bytes(self) -> bytes:
        h, w = self.code.shape
        planes = np.packbits(palmcode.johnson_planes(self.code).ravel(), bitorder="little")
        mask = np.packbits(self.valid.ravel(), bitorder="little")
        geometry = self.geometry.astype("<f2").tobytes()
        body = _HEADER.pack(TEMPLATE_MAGIC, TEMPLATE_VERSION, 6, h, w, self.images_used, len(self.geometry), 0,
                            self.feature_id) + planes.tobytes() + mask.tobytes() + geometry
        data = body + _CRC.pack(zlib.crc32(body))
        if len(data) > MAX_TEMPLATE_BYTES:
            raise RecognitionError(f"template would be {len(data)} bytes, over the {MAX_TEMPLATE_BYTES} byte limit")
        return data

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "template") -> "Template":
        """Parse and check a template; RecognitionError saying what is wrong."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise RecognitionError(f"{name}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if template_guard.is_guarded(data):  # the stored form: see template_guard.py
            return template_guard.GuardedTemplate.from_bytes(data, name)
        if len(data) < _HEADER.size + _CRC.size:
            raise RecognitionError(f"{name}: truncated ({len(data)} bytes, a template has at least "
                                   f"{_HEADER.size + _CRC.size})")
        magic, version, orientations, h, w, used, glen, _flags, feature_id = _HEADER.unpack_from(data)
        if magic != TEMPLATE_MAGIC:
            raise RecognitionError(f"{name}: not a palm template (starts with {magic!r}, expected {TEMPLATE_MAGIC!r})")
        if version != TEMPLATE_VERSION:
            raise RecognitionError(f"{name}: template format version {version} is not supported "
                                   f"(this unit reads version {TEMPLATE_VERSION}); re-enroll")
        if orientations != 6 or h == 0 or w == 0:
            raise RecognitionError(f"{name}: bad header ({orientations} orientations, grid {h}x{w})")
        cells = h * w
        plane_bytes, mask_bytes = (palmcode.BITS * cells + 7) // 8, (cells + 7) // 8
        expected = _HEADER.size + plane_bytes + mask_bytes + 2 * glen + _CRC.size
        if len(data) != expected:
            what = "truncated" if len(data) < expected else "has trailing bytes"
            raise RecognitionError(f"{name}: {what} ({len(data)} bytes, expected {expected})")
        (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
        if crc != zlib.crc32(data[: expected - _CRC.size]):
            raise RecognitionError(f"{name}: checksum mismatch (corrupted template)")
        pos = _HEADER.size
        bits = np.unpackbits(np.frombuffer(data, np.uint8, plane_bytes, pos), bitorder="little")
        planes = bits[: palmcode.BITS * cells].reshape(palmcode.BITS, h, w).astype(bool)
        pos += plane_bytes
        valid = np.unpackbits(np.frombuffer(data, np.uint8, mask_bytes, pos), bitorder="little")[:cells]
        pos += mask_bytes
        geometry = np.frombuffer(data, "<f2", glen, pos).astype(np.float32)
        return cls(palmcode.planes_to_code(planes), valid.reshape(h, w).astype(bool), geometry, used, feature_id)


class Gallery:
    """All enrolled templates as packed matrices, so 1:N is a few vectorised passes."""

    def __init__(self):
        self.ids: list[str] = []
        self.grid: tuple[int, int] | None = None
        self.planes = np.zeros((0, palmcode.BITS, 0), np.uint64)
        self.masks = np.zeros((0, 0), np.uint64)
        self.feature_ids = np.zeros(0, np.uint32)
        self.geometry = np.zeros((0, 0), np.float32)  # (N, G), 0 where unmeasured
        self.guard_id: int | None = None  # the template guard all entries are stored under (None: clear)

    @classmethod
    def from_templates(cls, templates: dict[str, bytes]) -> "Gallery":
        gallery = cls()
        parsed = {eid: Template.from_bytes(data, f"template of {eid}") for eid, data in templates.items()}
        gallery._append(list(parsed), list(parsed.values()))
        return gallery

    def add(self, employee_id: str, template: bytes) -> None:
        """Add or replace one employee's template."""
        parsed = Template.from_bytes(template, f"template of {employee_id}")
        if employee_id in self.ids:
            self.remove(employee_id)
        self._append([employee_id], [parsed])

    def remove(self, employee_id: str) -> None:
        try:
            i = self.ids.index(employee_id)
        except ValueError:
            raise KeyError(employee_id) from None
        del self.ids[i]
        self.geometry = np.delete(self.geometry, i, axis=0)
        self.planes = np.delete(self.planes, i, axis=0)
        self.masks = np.delete(self.masks, i, axis=0)
        self.feature_ids = np.delete(self.feature_ids, i)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, employee_id: str) -> bool:
        return employee_id in self.ids

    def _append(self, ids: list[str], templates: list[Template]) -> None:
        if not templates:
            return
        grids = {t.grid for t in templates} | ({self.grid} if self.grid else set())
        if len(grids) > 1:
            raise RecognitionError(f"templates have different code grids {sorted(grids)}; re-enroll with one model")
        guards = {getattr(t, "guard_id", None) for t in templates} | ({self.guard_id} if len(self.ids) else set())
        if len(guards) > 1:
            raise RecognitionError("templates are stored under different template guards (or some in the clear): "
                                   "run `vendor-node keys renew-template-guard` to bring them under one")
        self.grid, self.guard_id = templates[0].grid, guards.pop()
        planes = palmcode.pack_cells(np.array([t.bit_planes() for t in templates]))
        masks = palmcode.pack_cells(np.array([t.valid for t in templates]))
        if len(self.ids):
            planes, masks = np.concatenate([self.planes, planes]), np.concatenate([self.masks, masks])
        self.planes, self.masks = planes, masks
        self.feature_ids = np.concatenate([self.feature_ids, np.array([t.feature_id for t in templates], np.uint32)])
        self.ids.extend(ids)
        width = max([self.geometry.shape[1]] + [t.geometry.shape[0] for t in templates])
        rows = np.zeros((len(templates), width), np.float32)
        for k, t in enumerate(templates):
            rows[k, : t.geometry.shape[0]] = t.geometry
        old = np.pad(self.geometry, ((0, 0), (0, width - self.geometry.shape[1])))
        self.geometry = np.concatenate([old, rows])


def feature_id(manifest: dict) -> int:
    """32-bit id of how codes are made (filters, grid, coding): templates only compare within one id."""
    block = {"filters": manifest.get("filters"), "output": manifest["output"]["shape"], "code_format": 1}
    digest = hashlib.sha256(json.dumps(block, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Recognizer:
    """Preprocess + model + matcher; built once per process (the model is loaded once)."""

    def __init__(self, embedder: Embedder, threshold: float | None = None, margin: float | None = None,
                 params: palmcode.CodeParams | None = None):
        self.embedder = embedder
        manifest = embedder.manifest
        self.params = params or palmcode.CodeParams.from_manifest(manifest.get("code", {}))
        self.threshold = float(manifest["decision"]["threshold"] if threshold is None else threshold)
        self.margin = float(manifest["decision"]["margin"] if margin is None else margin)
        self.grid = tuple(embedder.output_shape[:2])
        self.feature_id = feature_id(manifest)
        self._min_bits = int(self.params.min_overlap * self.grid[0] * self.grid[1])
        self._full_shifts = palmcode.shifts(self.params.max_shift)
        self._coarse_shifts = palmcode.shifts(self.params.max_shift, self.params.coarse_step)
        self.guard: template_guard.TemplateGuard | None = None  # set by the unit: templates made are guarded

    @classmethod
    def from_config(cls, cfg) -> "Recognizer":
        """The unit's recognizer: model from ``cfg.unit.assets_dir``; threshold/margin from config or manifest.

        A configured threshold or margin below the manifest's floor (``decision.min_threshold`` /
        ``min_margin``, else the calibrated values themselves) is refused: loosening the matcher past what was
        measured would charge strangers to employees.
        """
        embedder = Embedder.load(cfg.unit.assets_dir)
        decision = embedder.manifest["decision"]
        for key, value in (("threshold", cfg.recognition.threshold), ("margin", cfg.recognition.margin)):
            floor = float(decision.get(f"min_{key}", decision[key]))
            if value is not None and value < floor:
                raise ConfigError(f"recognition.{key}: must be at least {floor:g} (the floor in the model manifest "
                                  f"{embedder.model_path.name}), got {value:g}")
        return cls(embedder, cfg.recognition.threshold, cfg.recognition.margin)

    # --- features ---------------------------------------------------------------
    def features(self, image: np.ndarray) -> Features:
        """Preprocess one camera frame and code its palm; HandRejected when no usable hand."""
        from .preprocess import extract_hand

        return self.features_from_hand(extract_hand(image))

    def features_from_hand(self, hand) -> Features:
        return self.features_from_roi(hand.roi, hand.geometry, hand.quality, hand)

    def features_from_roi(self, roi: np.ndarray, geometry: np.ndarray | None = None, quality: float = 1.0,
                          hand=None) -> Features:
        codes, valids = [], []
        for angle, zoom in self.params.poses():
            turned = palmcode.rotate_roi(roi, angle, zoom)
            responses = self.embedder.responses(turned)
            valid = palmcode.valid_cells(turned, self.grid, self.params.mask_erode)
            code, valid = palmcode.competitive_code(responses, valid, self.params.fragile_fraction)
            codes.append(code)
            valids.append(valid)
        geometry = np.zeros(0, np.float32) if geometry is None else np.asarray(geometry, np.float32)
        return Features(np.array(codes), np.array(valids), geometry, float(quality), hand)

    # --- enrollment -------------------------------------------------------------
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
        if int(Template.from_bytes(built.template).valid.sum()) < self._min_bits:
            raise HandRejected("too_little_palm", "Too little of your palm could be read: hold your open hand "
                                                  "flat and centred over the unit, then enroll again.")
        used = [found[k][0] for k in built.used]
        rejected += [(found[k][0], reason) for k, reason in built.rejected]
        return Enrollment(built.template, used, sorted(rejected))

    def enroll_features(self, found: list[Features]) -> Enrollment:
        """The template from already-coded images (evaluation uses this); ``used``/``rejected`` index ``found``.

        With several images the reference is the one that agrees best with the others (with two: the
        sharper one); images that do not reach the threshold against it are left out ("inconsistent"),
        and cells where most of the other kept images (at least two) disagree about the orientation
        are masked out of the template (unstable cells).
        """
        if not 1 <= len(found) <= MAX_ENROLL_IMAGES:
            raise RecognitionError(f"enrollment takes 1 to {MAX_ENROLL_IMAGES} images, got {len(found)}")
        if len(found) == 1:
            f = found[0]
            template = self._template(f.codes[0], f.valid[0], f.geometry, 1)
            return Enrollment(self.guard.protect(template) if self.guard else template, [0], [])
        singles = Gallery()
        singles._append([str(i) for i in range(len(found))],
                        [Template(f.codes[0], f.valid[0], f.geometry, 1, self.feature_id) for f in found])
        sims = self.score_matrix(found, singles).astype(np.float64)
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
            if sims[k, ref] < self.threshold:
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
        return Enrollment(self.guard.protect(template) if self.guard else template, sorted(used), rejected)

    def _aligned_to(self, f: Features, reference: Features) -> tuple[np.ndarray, np.ndarray]:
        """``f``'s code moved onto the reference by the best rotation and shift."""
        planes, masks, what = palmcode.probe_variants(f.codes, f.valid, self._full_shifts, len(f.codes))
        ref_planes = palmcode.pack_cells(palmcode.johnson_planes(reference.codes[0])[None])
        ref_masks = palmcode.pack_cells(reference.valid[:1])
        d = palmcode.variant_distances(planes, masks, ref_planes, ref_masks, self._min_bits)[:, 0]
        r, dy, dx = what[int(np.argmin(d))]
        return (palmcode.shift_cells(f.codes[r], dy, dx, 0), palmcode.shift_cells(f.valid[r], dy, dx, False))

    def _template(self, code, valid, geometry, used: int) -> bytes:
        return Template(code, valid, np.asarray(geometry, np.float32), used, self.feature_id).to_bytes()

    # --- matching ---------------------------------------------------------------
    def score_matrix(self, probes: list[Features], gallery: Gallery) -> np.ndarray:
        """Similarity (0..1) of every probe to every gallery entry with the full alignment search: (P, N)."""
        self._check_gallery(gallery)
        out = np.zeros((len(probes), len(gallery)), np.float32)
        for p, probe in enumerate(probes):
            out[p] = self._scores(probe, gallery, None, self._full_shifts, len(probe.codes))
        return out

    def scores(self, probe: Features, templates: "list[bytes] | Gallery") -> np.ndarray:
        """Similarity of one probe to each template (full alignment search), in the templates' order."""
        gallery = templates if isinstance(templates, Gallery) else Gallery.from_templates(
            {str(i): t for i, t in enumerate(templates)})
        return self.score_matrix([probe], gallery)[0]

    def identify(self, image_or_features, gallery: Gallery) -> Match:
        """Who this is, or None with the reason ("unknown": nobody close; "ambiguous": two too close)."""
        probe = image_or_features if isinstance(image_or_features, Features) else self.features(image_or_features)
        if len(gallery) == 0:
            return Match(None, 0.0, 0.0, "unknown")
        self._check_gallery(gallery)
        coarse = self._scores(probe, gallery, None, self._coarse_shifts,
                              min(self.params.coarse_rotations, len(probe.codes)))
        keep = min(len(gallery), self.params.candidates)
        candidates = np.argpartition(-coarse, keep - 1)[:keep] if keep < len(gallery) else np.arange(len(gallery))
        fine = self._scores(probe, gallery, candidates, self._full_shifts, len(probe.codes))
        order = np.argsort(-fine)
        best = float(fine[order[0]])
        runner_up = float(fine[order[1]]) if len(order) > 1 else 0.0
        if best < self.threshold:
            return Match(None, best, runner_up, "unknown")
        if best - runner_up <= self.margin:  # a tie is never a payer, even with margin 0
            return Match(None, best, runner_up, "ambiguous")
        return Match(gallery.ids[int(candidates[order[0]])], best, runner_up, "match")

    def _scores(self, probe: Features, gallery: Gallery, rows, offsets, rotations: int) -> np.ndarray:
        planes, masks, _ = palmcode.probe_variants(probe.codes, probe.valid, offsets, rotations)
        if gallery.guard_id is not None:  # the same keyed transform as the stored templates: distances unchanged
            planes, masks = self.guard.protect_variants(planes, masks, self.grid)
        g_planes = gallery.planes if rows is None else gallery.planes[rows]
        g_masks = gallery.masks if rows is None else gallery.masks[rows]
        out = np.empty(len(g_planes), np.float32)
        chunk = max(1, 30_000 // max(1, len(offsets) * rotations))  # keeps (V, chunk, words) temporaries in cache
        for start in range(0, len(g_planes), chunk):
            d = palmcode.distances(planes, masks, g_planes[start:start + chunk], g_masks[start:start + chunk],
                                   self._min_bits)
            out[start:start + chunk] = 1.0 - d
        if self.params.geometry_weight:
            geometry = gallery.geometry if rows is None else gallery.geometry[rows]
            out -= self.params.geometry_weight * palmcode.geometry_distances(
                probe.geometry, geometry, self.params.geometry_min_shared, self.params.geometry_fill)
        return np.clip(out, 0.0, 1.0)

    def _check_gallery(self, gallery: Gallery) -> None:
        if gallery.guard_id is not None:
            if self.guard is None:
                raise RecognitionError("the templates are guarded but this recognizer has no template guard key")
            self.guard.check_gallery(gallery.guard_id)
        if len(gallery) and gallery.grid != self.grid:
            raise RecognitionError(f"templates use a {gallery.grid} code grid, this model makes {self.grid}: re-enroll")
        foreign = np.flatnonzero(gallery.feature_ids != self.feature_id)
        if foreign.size:
            names = ", ".join(gallery.ids[i] for i in foreign[:3])
            raise RecognitionError(f"{foreign.size} template(s) ({names}) were made by another model's filters: re-enroll")
