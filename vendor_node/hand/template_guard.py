"""Templates stored only in a domain keyed by a fleet secret: renewable and unlinkable (ISO/IEC 24745).

Why this shape: a palm code is compared bit for bit (Hamming distance over the cells both codes
trust). A keyed XOR mask over the code's bit-planes and a keyed permutation of the cells, applied
alike to the stored template and to every probe variant *after* the shift/rotation search has built
them, leave every distance, hence every score and decision, exactly as it was; but a stored template
from one fleet (secret) is noise in another, and the cell layout (palm outline) no longer shows.
Renewal undoes the old secret's transform and applies the new one: no image needed, old form gone.

Stored form (``VNPG``): the VNPT layout (recognition.Template) with raw transformed bit-planes and
mask, the geometry permuted, and the 32-bit id of the guard that made it, then a CRC-32.

Embeddings (v2 templates, templates.py) get a keyed *signed permutation* of their int8 values: every
value moved to a keyed place and its sign keyed-flipped, alike for the stored template and the probe.
Chosen over a keyed rotation because it maps int8 vectors to int8 vectors exactly (values are -127..127,
so a flip never overflows): dot products and norms, hence scores, are bit-for-bit unchanged, the template
stays 152 bytes, and renewal is one lossless gather (a rotation would need re-quantizing: scores drift a
little at every renewal). Its limit: the multiset of absolute values is the same in every domain, so one
stored sample copied under two secrets could be linked by its sorted magnitudes; two different captures of
one palm cannot (their values differ), and a renewal replaces the old form.

Limits (docs/threat-model.md): someone holding the fleet secret and a template can undo the
transform; the guard protects templates that leak without the secret (database, office, bundles).
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from . import palmcode
from .templates import (CRC, GUARDED_MAGIC, KIND_SET, TEMPLATE_V2, V2_HEADER, EmbeddingTemplate, Template,
                        TemplateSet, check_bytes, template_kind, template_version, v2_header)
from ..errors import RecognitionError

GUARDED_VERSION = 1  # the palm-code layout; version 2 (embeddings) is templates.EmbeddingTemplate
SECRET_BYTES = 32
_HEADER = struct.Struct("<4sBBBBBBHII")  # magic, version, orientations, h, w, images used, geometry len, flags,
#                                           feature id, guard id
_CRC = CRC


def guard_id_of(secret: bytes) -> int:
    """A 32-bit name of the secret (HMAC, so it reveals nothing of it): which guard made a template."""
    return int.from_bytes(hmac.new(secret, b"vendor-node template guard id", hashlib.sha256).digest()[:4], "little")


@dataclass(frozen=True)
class GuardedTemplate:
    """A template in the guarded domain; the Gallery reads ``grid``, ``bit_planes()``, ``valid`` like a Template."""

    planes: np.ndarray  # bool (3, H, W), transformed
    valid: np.ndarray  # bool (H, W), transformed
    geometry: np.ndarray  # float32 (G,), permuted
    images_used: int
    feature_id: int
    guard_id: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.valid.shape

    def bit_planes(self) -> np.ndarray:
        return self.planes

    def to_bytes(self) -> bytes:
        h, w = self.valid.shape
        body = (_HEADER.pack(GUARDED_MAGIC, GUARDED_VERSION, 6, h, w, self.images_used, len(self.geometry), 0,
                             self.feature_id, self.guard_id)
                + np.packbits(self.planes.ravel(), bitorder="little").tobytes()
                + np.packbits(self.valid.ravel(), bitorder="little").tobytes()
                + self.geometry.astype("<f2").tobytes())
        return body + _CRC.pack(zlib.crc32(body))

    @staticmethod
    def header(data: bytes, name: str = "template") -> tuple[int, int, int, int]:
        """(grid h, grid w, geometry length, guard id) after checking magic, version, length and CRC."""
        data = bytes(data)
        if len(data) < _HEADER.size + _CRC.size:
            raise RecognitionError(f"{name}: truncated guarded template ({len(data)} bytes)")
        magic, version, orientations, h, w, _used, glen, _flags, _feature, guard_id = _HEADER.unpack_from(data)
        if magic != GUARDED_MAGIC:
            raise RecognitionError(f"{name}: not a guarded palm template (starts with {magic!r})")
        if version != GUARDED_VERSION:
            raise RecognitionError(f"{name}: guarded template version {version} is not supported; re-enroll")
        if orientations != 6 or h == 0 or w == 0:
            raise RecognitionError(f"{name}: bad header ({orientations} orientations, grid {h}x{w})")
        cells = h * w
        expected = _HEADER.size + (palmcode.BITS * cells + 7) // 8 + (cells + 7) // 8 + 2 * glen + _CRC.size
        if len(data) != expected:
            raise RecognitionError(f"{name}: {'truncated' if len(data) < expected else 'has trailing bytes'} "
                                   f"({len(data)} bytes, expected {expected})")
        if _CRC.unpack_from(data, expected - _CRC.size)[0] != zlib.crc32(data[:expected - _CRC.size]):
            raise RecognitionError(f"{name}: checksum mismatch (corrupted template)")
        return h, w, glen, guard_id

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "template") -> "GuardedTemplate":
        data = bytes(data)
        h, w, glen, guard_id = cls.header(data, name)
        _magic, _version, _o, _h, _w, used, _glen, _flags, feature_id, _guard = _HEADER.unpack_from(data)
        cells = h * w
        plane_bytes, mask_bytes = (palmcode.BITS * cells + 7) // 8, (cells + 7) // 8
        pos = _HEADER.size
        bits = np.unpackbits(np.frombuffer(data, np.uint8, plane_bytes, pos), bitorder="little")
        planes = bits[:palmcode.BITS * cells].reshape(palmcode.BITS, h, w).astype(bool)
        pos += plane_bytes
        valid = np.unpackbits(np.frombuffer(data, np.uint8, mask_bytes, pos), bitorder="little")[:cells]
        geometry = np.frombuffer(data, "<f2", glen, pos + mask_bytes).astype(np.float32)
        return cls(planes, valid.reshape(h, w).astype(bool), geometry, used, feature_id, guard_id)


def _parse_clear(data: bytes):
    """(h, w, images used, geometry len, feature id, planes (3,h,w), valid (h,w), geometry) of a clear template."""
    t = Template.from_bytes(data)
    h, w = t.grid
    return h, w, t.images_used, len(t.geometry), t.feature_id, t.bit_planes(), t.valid, t.geometry


def is_guarded(data: bytes) -> bool:
    return bytes(data[:4]) == GUARDED_MAGIC


def guard_id_of_template(data: bytes, name: str = "template") -> int:
    """The id of the guard a stored template is under (0: clear), after checking its header, length and CRC."""
    data = check_bytes(data, name)
    if template_kind(data) == KIND_SET:
        return TemplateSet.from_bytes(data, name).guard_id
    if template_version(data) == TEMPLATE_V2:
        return v2_header(data, name)[3]
    if is_guarded(data):
        return GuardedTemplate.header(data, name)[3]
    Template.from_bytes(data, name)
    return 0


class TemplateGuard:
    """The keyed transform of one fleet secret: templates in, guarded templates out; probes alike."""

    def __init__(self, secret: bytes):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
            raise RecognitionError(f"a template guard secret must be {SECRET_BYTES} bytes")
        self._secret = bytes(secret)
        self.guard_id = guard_id_of(self._secret)
        self._layouts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def layout(self, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(cell order int (N,), XOR mask bool (3, N)) for a grid: SHAKE-256 of the secret, stable across numpy."""
        if grid not in self._layouts:
            cells = grid[0] * grid[1]
            stream = hashlib.shake_256(self._secret + b"|layout|%d|%d" % grid).digest(8 * cells + cells)
            order_keys = np.frombuffer(stream[:8 * cells], "<u8")
            order = np.argsort(order_keys, kind="stable")
            xor_bits = np.unpackbits(np.frombuffer(stream[8 * cells:], np.uint8), bitorder="little")
            self._layouts[grid] = (order, xor_bits[:palmcode.BITS * cells].reshape(palmcode.BITS, cells).astype(bool))
        return self._layouts[grid]

    def _geometry_order(self, n: int) -> np.ndarray:
        keys = np.frombuffer(hashlib.shake_256(self._secret + b"|geometry|%d" % n).digest(8 * n), "<u8")
        return np.argsort(keys, kind="stable")

    # --- templates --------------------------------------------------------------
    def signed_permutation(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(value order int (D,), signs int8 (D,)) of an embedding's keyed signed permutation (SHAKE-256)."""
        key = ("embedding", dim)
        if key not in self._layouts:
            stream = hashlib.shake_256(self._secret + b"|embedding|%d" % dim).digest(8 * dim + dim)
            order = np.argsort(np.frombuffer(stream[:8 * dim], "<u8"), kind="stable")
            signs = np.where(np.frombuffer(stream[8 * dim:], np.uint8) & 1, -1, 1).astype(np.int8)
            self._layouts[key] = (order, signs)
        return self._layouts[key]

    def protect_vector(self, vector: np.ndarray) -> np.ndarray:
        """An int8 embedding (a probe's, or a clear template's) in this guard's domain: scores unchanged."""
        order, signs = self.signed_permutation(vector.shape[-1])
        return vector[..., order] * signs

    def protect(self, template: bytes) -> bytes:
        """A clear template (VNPT bytes) in this guard's domain (VNPG bytes)."""
        if template_kind(template) == KIND_SET:
            s = TemplateSet.from_bytes(template)
            return TemplateSet(tuple(self.adopt(m) for m in s.members), s.model_tag, self.guard_id).to_bytes()
        if template_version(template) == TEMPLATE_V2:
            t = EmbeddingTemplate.from_bytes(template)
            if t.guard_id:
                raise RecognitionError("template: already guarded")
            return EmbeddingTemplate(self.protect_vector(t.vector), t.model_tag, t.images_used,
                                     self.guard_id).to_bytes()
        h, w, used, glen, feature_id, planes, valid, geometry = _parse_clear(template)
        order, xor = self.layout((h, w))
        geometry = geometry[self._geometry_order(glen)]
        return GuardedTemplate((planes.reshape(palmcode.BITS, -1) ^ xor)[:, order].reshape(palmcode.BITS, h, w),
                               valid.ravel()[order].reshape(h, w), geometry, used, feature_id,
                               self.guard_id).to_bytes()

    def reveal(self, guarded: bytes) -> bytes:
        """Back to the clear template's bytes (tests and renewal only; never stored)."""
        if template_kind(guarded) == KIND_SET:
            s = TemplateSet.from_bytes(guarded)
            self._check(s.guard_id, "template")
            return TemplateSet(tuple(self.reveal(m) for m in s.members), s.model_tag).to_bytes()
        if template_version(guarded) == TEMPLATE_V2:
            t = EmbeddingTemplate.from_bytes(guarded)
            self._check(t.guard_id, "template")
            order, signs = self.signed_permutation(t.vector.size)
            clear = np.empty_like(t.vector)
            clear[order] = t.vector * signs
            return EmbeddingTemplate(clear, t.model_tag, t.images_used).to_bytes()
        g = GuardedTemplate.from_bytes(guarded)
        self._check(g.guard_id, "template")
        (h, w), cells = g.grid, g.valid.size
        order, xor = self.layout((h, w))
        planes, valid = np.empty((palmcode.BITS, cells), bool), np.empty(cells, bool)
        planes[:, order] = g.planes.reshape(palmcode.BITS, -1)
        valid[order] = g.valid.ravel()
        geometry = np.empty_like(g.geometry)
        geometry[self._geometry_order(len(geometry))] = g.geometry
        code = palmcode.planes_to_code((planes ^ xor).reshape(palmcode.BITS, h, w))
        return Template(code, valid.reshape(h, w), geometry, g.images_used, g.feature_id).to_bytes()

    def renew(self, guarded: bytes, new: "TemplateGuard") -> bytes:
        """The template moved from this guard's domain to ``new``'s, without any image."""
        return new.protect(self.reveal(guarded))

    def renew_many(self, templates: list[bytes], new: "TemplateGuard") -> list[bytes]:
        """``renew`` for a whole store at once, vectorised (10,000 templates well under a second)."""
        out: list[bytes | None] = [None] * len(templates)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(templates):
            if template_kind(t) == KIND_SET:  # few (employees mid-way through a model change): one by one
                self._check(TemplateSet.from_bytes(t, f"template {i}").guard_id, f"template {i}")
                out[i] = self.renew(t, new)
                continue
            if template_version(t) == TEMPLATE_V2:
                _used, dim, _tag, guard_id = v2_header(bytes(t), f"template {i}")
                key = ("embedding", dim)
            else:
                h, w, glen, guard_id = GuardedTemplate.header(t, f"template {i}")
                key = (h, w, glen)
            self._check(guard_id, f"template {i}")
            groups.setdefault(key, []).append(i)
        for key, rows in groups.items():
            block = np.frombuffer(b"".join(bytes(templates[i]) for i in rows), np.uint8).reshape(len(rows), -1)
            if key[0] == "embedding":
                renewed = self._renew_embeddings(block, key[1], new)
            else:
                renewed = self._renew_block(block, key[:2], key[2], new)
            for i, data in zip(rows, renewed):
                out[i] = data
        return out

    def _renew_embeddings(self, block: np.ndarray, dim: int, new: "TemplateGuard") -> list[bytes]:
        """v2 embedding rows moved to ``new``'s signed permutation in one gather (old order undone, new applied)."""
        (old_order, old_signs), (new_order, new_signs) = self.signed_permutation(dim), new.signed_permutation(dim)
        moved = np.argsort(old_order)[new_order]
        flip = new_signs * old_signs[moved]
        start = V2_HEADER.size
        out = block.copy()
        out[:, start:start + dim] = (block[:, start:start + dim].view(np.int8)[:, moved] * flip).view(np.uint8)
        out[:, start - 4:start] = np.frombuffer(struct.pack("<I", new.guard_id), np.uint8)
        return _with_crcs(out)

    def _renew_block(self, block: np.ndarray, grid: tuple[int, int], glen: int, new: "TemplateGuard") -> list[bytes]:
        cells = grid[0] * grid[1]
        plane_bytes, mask_bytes = (palmcode.BITS * cells + 7) // 8, (cells + 7) // 8
        p0, m0, g0 = _HEADER.size, _HEADER.size + plane_bytes, _HEADER.size + plane_bytes + mask_bytes
        (old_order, old_xor), (new_order, new_xor) = self.layout(grid), new.layout(grid)
        n = len(block)
        planes = np.unpackbits(block[:, p0:m0], axis=1, bitorder="little")[:, :palmcode.BITS * cells]
        # One gather: the new order read through the old one's inverse; the two XOR masks combined.
        moved = np.argsort(old_order)[new_order]
        flip = (old_xor ^ new_xor)[:, new_order].astype(np.uint8)
        planes = np.take(planes.reshape(n, palmcode.BITS, cells), moved, axis=2) ^ flip[None]
        mask = np.unpackbits(block[:, m0:g0], axis=1, bitorder="little")[:, :cells]
        geometry = block[:, g0:g0 + 2 * glen].copy().view("<f2")
        clear_geometry = np.empty_like(geometry)
        clear_geometry[:, self._geometry_order(glen)] = geometry
        out = block.copy()
        out[:, p0:m0] = np.packbits(planes.reshape(n, -1), axis=1, bitorder="little")
        out[:, m0:g0] = np.packbits(np.take(mask, moved, axis=1), axis=1, bitorder="little")
        out[:, g0:g0 + 2 * glen] = np.ascontiguousarray(clear_geometry[:, new._geometry_order(glen)]).view(np.uint8)
        out[:, _HEADER.size - 4:_HEADER.size] = np.frombuffer(struct.pack("<I", new.guard_id), np.uint8)
        return _with_crcs(out)

    def adopt(self, template: bytes) -> bytes:
        """Any stored template in this guard's domain: clear ones (made before guarding) are protected."""
        guard_id = guard_id_of_template(template)
        if guard_id:
            self._check(guard_id, "template")
            return bytes(template)
        return self.protect(template)

    # --- probes -------------------------------------------------------------------
    def protect_variants(self, planes: np.ndarray, masks: np.ndarray, grid: tuple[int, int]):
        """Packed probe variants (V, 3, W64), (V, W64) in this guard's domain, same packing."""
        order, xor = self.layout(grid)
        cells = grid[0] * grid[1]
        plane_bits = np.unpackbits(planes.view(np.uint8), axis=-1, bitorder="little")[..., :cells]
        mask_bits = np.unpackbits(masks.view(np.uint8), axis=-1, bitorder="little")[..., :cells]
        plane_bits = (plane_bits.astype(bool) ^ xor[None])[..., order]
        mask_bits = mask_bits.astype(bool)[..., order]
        return (palmcode.pack_cells(plane_bits.reshape(plane_bits.shape[:-1] + grid)),
                palmcode.pack_cells(mask_bits.reshape(mask_bits.shape[:-1] + grid)))

    def _check(self, guard_id: int, what: str) -> None:
        if guard_id != self.guard_id:
            raise RecognitionError(f"{what} was made under another template guard secret "
                                   f"(id {guard_id:08x}, this unit uses {self.guard_id:08x}): renew it with "
                                   "`vendor-node keys renew-template-guard`, or re-enroll")

    def check_gallery(self, guard_id: int) -> None:
        self._check(guard_id, "the gallery")


def _with_crcs(rows: np.ndarray) -> list[bytes]:
    """Each row's bytes with its CRC-32 rewritten over everything before it."""
    out = []
    for row in rows:
        body = row[:-_CRC.size].tobytes()
        out.append(body + _CRC.pack(zlib.crc32(body)))
    return out
