"""The enrolled templates in memory: one contiguous array per model, so 1:N is one matrix product.

Why this shape: a gallery of 10,000-100,000 employees must search in milliseconds and hold at most
1 MB per 1,000 templates, so no per-template Python objects are kept: each model's templates are one
int8 matrix (``EmbeddingBank``: 128 bytes a row plus its inverse norm), its employee ids one list and
one id -> row dict (add appends, remove moves the last row into the hole: nothing is rebuilt). The
palm codes of the older palm-gabor-1 model stay in their packed bit matrices (``PalmCodeBank``) and are
matched by the palm-code matcher for those employees not yet moved to the active model.

API (also used by ``bench loop`` and ``simulate --employees``):
``Gallery.from_templates({employee_id: template bytes})``; ``Gallery.from_rows(ids, blobs)``: the same
from two parallel sequences, v2 rows of one model checked and copied in bulk (10,000 in a few ms);
``add(employee_id, template)`` (replaces an existing one), ``remove(employee_id)`` (KeyError if absent),
``len``, ``in``, ``ids`` (all, palm codes first), ``counts()`` ({model tag or "palm-code": n}).
"""
from __future__ import annotations

import zlib

import numpy as np

from . import palmcode
from .template_guard import _HEADER as GUARDED_HEADER
from .template_guard import GuardedTemplate, is_guarded
from .templates import (CRC, KIND_SET, TEMPLATE_V2, V2_HEADER, EmbeddingTemplate, Template, TemplateSet, check_bytes,
                        template_kind, template_version, v2_header)
from .templates import _HEADER as V1_HEADER
from ..errors import RecognitionError

PALM_CODE = "palm-code"  # the bank key of v1 palm-code templates (palm-gabor-1)
SCORE_CHUNK_ROWS = 2048  # int8 rows turned to float32 per step: the buffer (1 MiB) stays in cache
BUILD_CHUNK = 1024  # palm-code templates parsed and packed at a time while a gallery is built


def parse_template(data: bytes, name: str = "template"):
    """Any stored template: Template (v1 palm code), GuardedTemplate (v1 guarded), EmbeddingTemplate (v2) or a
    TemplateSet (one employee's templates under two models, during a model change)."""
    data = check_bytes(data, name)
    if template_kind(data) == KIND_SET:
        return TemplateSet.from_bytes(data, name)
    if template_version(data) == TEMPLATE_V2:
        return EmbeddingTemplate.from_bytes(data, name)
    if is_guarded(data):
        return GuardedTemplate.from_bytes(data, name)
    return Template.from_bytes(data, name)


class EmbeddingBank:
    """One model's int8 templates as one matrix with their inverse norms; cosine scores by one product."""

    def __init__(self, dim: int, model_tag: int, guard_id: int):
        self.dim, self.model_tag, self.guard_id = dim, model_tag, guard_id
        self._vectors = np.zeros((0, dim), np.int8)
        self._inv_norms = np.zeros(0, np.float32)
        self.ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._buffer: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, employee_id: str) -> bool:
        return employee_id in self._rows

    def row(self, employee_id: str) -> int | None:
        return self._rows.get(employee_id)

    @property
    def vectors(self) -> np.ndarray:
        """int8 (N, D): the live rows (a view)."""
        return self._vectors[: len(self.ids)]

    def nbytes(self) -> int:
        return self._vectors.nbytes + self._inv_norms.nbytes

    def extend(self, ids: list[str], vectors: np.ndarray) -> None:
        """Append rows (ids not yet in the bank); grows the matrix by a quarter when full, not per row."""
        n, add = len(self.ids), len(ids)
        if n + add > len(self._vectors):
            capacity = max(n + add, n + n // 4, 16) if n else n + add
            grown = np.zeros((capacity, self.dim), np.int8)
            grown[:n] = self._vectors[:n]
            norms = np.zeros(capacity, np.float32)
            norms[:n] = self._inv_norms[:n]
            self._vectors, self._inv_norms = grown, norms
        self._vectors[n:n + add] = vectors
        norm = np.linalg.norm(vectors.astype(np.float32), axis=1)
        self._inv_norms[n:n + add] = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)
        for k, employee_id in enumerate(ids):
            self._rows[employee_id] = n + k
        self.ids.extend(ids)

    def remove(self, employee_id: str) -> None:
        row = self._rows.pop(employee_id)
        last = len(self.ids) - 1
        if row != last:  # the last row fills the hole: O(D), nothing rebuilt
            self._vectors[row] = self._vectors[last]
            self._inv_norms[row] = self._inv_norms[last]
            self.ids[row] = self.ids[last]
            self._rows[self.ids[row]] = row
        self.ids.pop()

    def scores(self, probe: np.ndarray) -> np.ndarray:
        """Cosine of the int8 probe (already in the bank's guard domain) with every row: float32 (N,).

        int8 rows are turned to float32 a chunk at a time into one reused buffer and multiplied by the
        probe (BLAS sgemv; the sums of int8 products are exact in float32), then scaled by the norms.
        """
        n = len(self.ids)
        out = np.empty(n, np.float32)
        q = np.asarray(probe, np.float32).ravel()
        norm = float(np.linalg.norm(q))
        if self._buffer is None:
            self._buffer = np.empty((SCORE_CHUNK_ROWS, self.dim), np.float32)
        for start in range(0, n, SCORE_CHUNK_ROWS):
            stop = min(n, start + SCORE_CHUNK_ROWS)
            block = self._buffer[: stop - start]
            block[...] = self._vectors[start:stop]
            np.dot(block, q, out=out[start:stop])
        out *= self._inv_norms[:n]
        out *= (1.0 / norm) if norm > 0 else 0.0
        return out

    def best_two(self, probe: np.ndarray) -> tuple[int, float, float]:
        """(row, best score, runner-up score; 0 with one row): the 1:N search, two passes over N scores."""
        scores = self.scores(probe)
        row = int(np.argmax(scores))
        best = float(scores[row])
        scores[row] = -np.inf
        return row, best, float(scores.max()) if len(scores) > 1 else 0.0


class PalmCodeBank:
    """v1 palm codes as packed bit matrices stored word-major (``planes_t`` (3, W64, N), ``masks_t`` (W64, N)):
    the 1:N sift and coarse pass run each bit operation along the whole gallery at once (bit_search.wide_distances).
    ``planes`` (N, 3, W64) and ``masks`` (N, W64) are views of the same bits, one row per employee. The arrays
    grow by a quarter when full (``reserve`` sizes them once for a gallery build), never per template."""

    def __init__(self):
        self.ids: list[str] = []
        self.grid: tuple[int, int] | None = None
        self.guard_id: int | None = None  # the template guard all entries are stored under (None: clear)
        self._rows: dict[str, int] = {}
        self._planes = np.zeros((palmcode.BITS, 0, 0), np.uint64)
        self._masks = np.zeros((0, 0), np.uint64)
        self._feature_ids = np.zeros(0, np.uint32)
        self._geometry = np.zeros((0, 0), np.float32)  # (N, G), 0 where unmeasured

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, employee_id: str) -> bool:
        return employee_id in self._rows

    planes_t = property(lambda self: self._planes[:, :, : len(self.ids)])
    masks_t = property(lambda self: self._masks[:, : len(self.ids)])
    feature_ids = property(lambda self: self._feature_ids[: len(self.ids)])
    geometry = property(lambda self: self._geometry[: len(self.ids)])
    planes = property(lambda self: self.planes_t.transpose(2, 0, 1))
    masks = property(lambda self: self.masks_t.T)

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed planes (n, 3, W64) and masks (n, W64) of the given rows, row-major copies."""
        return (np.ascontiguousarray(self._planes[:, :, rows].transpose(2, 0, 1)),
                np.ascontiguousarray(self._masks[:, rows].T))

    def row(self, employee_id: str) -> int | None:
        return self._rows.get(employee_id)

    def reserve(self, total: int, words: int, geometry: int = 0) -> None:
        """Room for ``total`` entries of ``words`` 64-bit words a plane (and ``geometry`` measurements)."""
        n = len(self.ids)
        if total <= self._masks.shape[1] and words == self._masks.shape[0] and geometry <= self._geometry.shape[1]:
            return
        if n and words != self._masks.shape[0]:
            raise RecognitionError("templates have different code grids; re-enroll with one model")
        total = max(total, n)
        width = max(geometry, self._geometry.shape[1])
        planes, masks = np.zeros((palmcode.BITS, words, total), np.uint64), np.zeros((words, total), np.uint64)
        feature_ids, shape = np.zeros(total, np.uint32), np.zeros((total, width), np.float32)
        if n:
            planes[:, :, :n], masks[:, :n], feature_ids[:n] = self.planes_t, self.masks_t, self.feature_ids
            shape[:n, : self._geometry.shape[1]] = self.geometry
        self._planes, self._masks, self._feature_ids, self._geometry = planes, masks, feature_ids, shape

    def remove(self, employee_id: str) -> None:
        i = self._rows[employee_id]
        n = len(self.ids)
        for array, axis in ((self._planes, 2), (self._masks, 1), (self._feature_ids, 0), (self._geometry, 0)):
            moved = np.moveaxis(array, axis, 0)
            moved[i:n - 1] = moved[i + 1:n].copy()  # the later rows move up one: the order is kept
        del self.ids[i]
        self._rows = {e: k for k, e in enumerate(self.ids)}

    def extend(self, ids: list[str], templates: list) -> None:
        """Append parsed templates (Template or GuardedTemplate, one grid, one guard)."""
        if not templates:
            return
        grids = {t.grid for t in templates}
        if len(grids) > 1:
            raise RecognitionError(f"templates have different code grids {sorted(grids)}; re-enroll with one model")
        guards = {getattr(t, "guard_id", None) for t in templates}
        if len(guards) > 1:
            raise RecognitionError(_MIXED_GUARDS)
        width = max(t.geometry.shape[0] for t in templates)
        geometry = np.zeros((len(templates), width), np.float32)
        for k, t in enumerate(templates):
            geometry[k, : t.geometry.shape[0]] = t.geometry
        self.extend_packed(ids, palmcode.pack_cells(np.array([t.bit_planes() for t in templates])),
                           palmcode.pack_cells(np.array([t.valid for t in templates])),
                           np.array([t.feature_id for t in templates], np.uint32), geometry, grids.pop(), guards.pop())

    def extend_packed(self, ids: list[str], planes: np.ndarray, masks: np.ndarray, feature_ids: np.ndarray,
                      geometry: np.ndarray, grid: tuple[int, int], guard_id: int | None) -> None:
        """Append rows already packed: planes (n, 3, W64), masks (n, W64), geometry (n, G)."""
        if self.grid is not None and len(self.ids) and grid != self.grid:
            raise RecognitionError(f"templates have different code grids {sorted({grid, self.grid})}; re-enroll "
                                   "with one model")
        if len(self.ids) and guard_id != self.guard_id:
            raise RecognitionError(_MIXED_GUARDS)
        self.grid, self.guard_id = grid, guard_id
        n, add, words = len(self.ids), len(ids), masks.shape[1]
        if n + add > self._masks.shape[1] or geometry.shape[1] > self._geometry.shape[1] \
                or words != self._masks.shape[0]:
            self.reserve(max(n + add, n + n // 4), words, geometry.shape[1])
        self._planes[:, :, n:n + add] = planes.transpose(1, 2, 0)
        self._masks[:, n:n + add] = masks.T
        self._feature_ids[n:n + add] = feature_ids
        self._geometry[n:n + add] = 0
        self._geometry[n:n + add, : geometry.shape[1]] = geometry
        self._rows.update((e, n + k) for k, e in enumerate(ids))
        self.ids.extend(ids)


_MIXED_GUARDS = ("templates are stored under different template guards (or some in the clear): run "
                 "`vendor-node keys renew-template-guard` to bring them under one")


def _v1_rows(bank: PalmCodeBank, rows: list[tuple[str, bytes]]) -> None:
    """Palm-code templates into the bank. Templates laid out like the first (same length and header but for
    the images-used count; CRC checked each) are copied from their bytes in bulk: the stored planes and mask
    are already the bank's packed words. Any other is parsed alone (and refused naming what is wrong)."""
    first = parse_template(rows[0][1], f"template of {rows[0][0]}")
    h, w = first.grid
    cells = h * w
    header = (GUARDED_HEADER if isinstance(first, GuardedTemplate) else V1_HEADER).size
    plane_bytes, mask_bytes, glen = palmcode.BITS * cells // 8, cells // 8, first.geometry.shape[0]
    size = header + plane_bytes + mask_bytes + 2 * glen + CRC.size
    blob0 = bytes(rows[0][1])
    key = blob0[:8] + blob0[9:header]  # everything but the images-used count
    runs: list[tuple[bool, list]] = []  # consecutive rows copied in bulk or parsed alone: the order is kept
    for employee_id, blob in rows:
        ok = (cells % 64 == 0 and len(blob) == size and bytes(blob[:8]) + bytes(blob[9:header]) == key
              and CRC.unpack_from(blob, size - CRC.size)[0] == zlib.crc32(blob[:size - CRC.size]))
        if not runs or runs[-1][0] != ok or len(runs[-1][1]) == BUILD_CHUNK:
            runs.append((ok, []))
        runs[-1][1].append((employee_id, blob))
    bank.reserve(len(bank) + len(rows), -(-cells // 64), glen)
    for ok, chunk in runs:
        if not ok:
            bank.extend([i for i, _ in chunk], [parse_template(b, f"template of {i}") for i, b in chunk])
            continue
        raw = np.frombuffer(b"".join(bytes(b) for _, b in chunk), np.uint8).reshape(len(chunk), size)
        planes = raw[:, header:header + plane_bytes].copy().view("<u8").astype(np.uint64, copy=False)
        masks = raw[:, header + plane_bytes:header + plane_bytes + mask_bytes].copy().view("<u8")
        geometry = raw[:, header + plane_bytes + mask_bytes:size - CRC.size].copy().view("<f2").astype(np.float32)
        bank.extend_packed([i for i, _ in chunk], planes.reshape(len(chunk), palmcode.BITS, -1),
                           masks.astype(np.uint64, copy=False), np.full(len(chunk), first.feature_id, np.uint32),
                           geometry, first.grid, getattr(first, "guard_id", None))

class Gallery:
    """Every enrolled template, one bank per model: palm codes (``codes``) and ``embeddings[model tag]``."""

    def __init__(self):
        self.codes = PalmCodeBank()
        self.embeddings: dict[int, EmbeddingBank] = {}
        self.revision = 0  # bumped by every add/remove: what derived caches (hand/cascade.py) are keyed by
        self._employees: tuple[int, int] = (-1, 0)  # (revision, distinct employees)

    @classmethod
    def from_templates(cls, templates: dict[str, bytes]) -> "Gallery":
        return cls.from_rows(list(templates), list(templates.values()))

    @classmethod
    def from_rows(cls, ids, blobs) -> "Gallery":
        """A gallery from parallel sequences of employee ids and template bytes (RecognitionError naming one)."""
        gallery = cls()
        ids = [str(i) for i in ids]
        if len(ids) != len(blobs) or len(set(ids)) != len(ids):
            raise RecognitionError(f"{len(ids)} ids for {len(blobs)} templates, or an id given twice")
        codes, groups = [], {}
        for employee_id, blob in _members(ids, blobs):
            if template_version(blob) == TEMPLATE_V2 and len(blob) >= V2_HEADER.size:
                groups.setdefault(bytes(blob[5:6]) + bytes(blob[8:20]) + bytes(blob[:4]), []).append((employee_id, blob))
            else:
                codes.append((employee_id, blob))
        if codes:  # copied in bulk a chunk at a time into arrays sized once: no per-template objects kept
            _v1_rows(gallery.codes, codes)
        for rows in groups.values():
            gallery._extend_v2([i for i, _ in rows], [bytes(b) for _, b in rows])
        return gallery

    def _extend_v2(self, ids: list[str], blobs: list[bytes]) -> None:
        """Rows of one (kind, dim, model, guard) header: the first checked fully, all by length and CRC."""
        _used, dim, tag, guard_id = v2_header(blobs[0], f"template of {ids[0]}")
        size = V2_HEADER.size + dim + CRC.size
        for employee_id, blob in zip(ids, blobs):
            if len(blob) != size or CRC.unpack_from(blob, size - CRC.size)[0] != zlib.crc32(blob[:size - CRC.size]):
                v2_header(blob, f"template of {employee_id}")  # raises, naming what is wrong
        rows = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), size)
        vectors = rows[:, V2_HEADER.size:V2_HEADER.size + dim].view(np.int8)
        bank = self.embeddings.get(tag)
        if bank is None:
            bank = self.embeddings[tag] = EmbeddingBank(dim, tag, guard_id)
        if bank.dim != dim:
            raise RecognitionError(f"template of {ids[0]}: {dim} values, this model's others have {bank.dim}")
        if len(bank) and bank.guard_id != guard_id:
            raise RecognitionError("templates are stored under different template guards (or some in the clear): "
                                   "run `vendor-node keys renew-template-guard` to bring them under one")
        bank.guard_id = guard_id
        bank.extend(ids, vectors)

    def add(self, employee_id: str, template: bytes) -> None:
        """Add or replace one employee's template (a set puts each member in its model's bank)."""
        members = _members([employee_id], [template])
        parsed = [parse_template(blob, f"template of {employee_id}") for _, blob in members]  # all checked first
        if employee_id in self:
            self.remove(employee_id)
        self.revision += 1
        for (_, blob), template_ in zip(members, parsed):
            if template_version(blob) == TEMPLATE_V2:
                self._extend_v2([employee_id], [bytes(blob)])
            else:
                self.codes.extend([employee_id], [template_])

    def remove(self, employee_id: str) -> None:
        """Every template of the employee, in every bank; KeyError if there is none."""
        holding = [bank for bank in self.banks() if employee_id in bank]
        if not holding:
            raise KeyError(employee_id)
        for bank in holding:
            bank.remove(employee_id)
        self.revision += 1

    def banks(self) -> list:
        return [self.codes, *self.embeddings.values()]

    def bank_of(self, employee_id: str):
        return next((bank for bank in self.banks() if employee_id in bank), None)

    @property
    def ids(self) -> list[str]:
        """Every employee id, palm codes first then each model's bank (the columns of score_matrix)."""
        return [i for bank in self.banks() for i in bank.ids]

    @property
    def guard_id(self) -> int | None:
        """The template guard every template is stored under (None: in the clear, or no templates)."""
        guards = {bank.guard_id or None for bank in self.banks() if len(bank)}
        if len(guards) > 1:
            raise RecognitionError("templates are stored under different template guards (or some in the clear)")
        return guards.pop() if guards else None

    def counts(self) -> dict:
        """Templates per model: {"palm-code": n, model tag: n, ...} (non-empty banks only)."""
        out = {PALM_CODE: len(self.codes)} if len(self.codes) else {}
        out.update({tag: len(bank) for tag, bank in self.embeddings.items() if len(bank)})
        return out

    def nbytes(self) -> int:
        """Bytes of the banks' arrays (not counting the ids)."""
        c = self.codes
        return (c.planes_t.nbytes + c.masks_t.nbytes + c.geometry.nbytes + c.feature_ids.nbytes  # live rows
                + sum(bank.nbytes() for bank in self.embeddings.values()))

    def __len__(self) -> int:
        """Employees enrolled (one holding templates of two models, a set, counts once)."""
        filled = [bank for bank in self.banks() if len(bank)]
        if len(filled) <= 1:
            return len(filled[0]) if filled else 0
        if self._employees[0] != self.revision:
            self._employees = (self.revision, len(set().union(*(bank.ids for bank in filled))))
        return self._employees[1]

    def __contains__(self, employee_id: str) -> bool:
        return any(employee_id in bank for bank in self.banks())


def _members(ids, blobs) -> list[tuple[str, bytes]]:
    """(employee id, template) pairs with every template set opened into its members."""
    out = []
    for employee_id, blob in zip(ids, blobs):
        if template_kind(blob) == KIND_SET:
            out += [(employee_id, m) for m in TemplateSet.from_bytes(blob, f"template of {employee_id}").members]
        else:
            out.append((employee_id, blob))
    return out
