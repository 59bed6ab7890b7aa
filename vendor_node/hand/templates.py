"""Stored templates: v1 palm codes (<= 1 KiB) and v2 templates that name the model that made them (<= 256 bytes).

Why versioned binary with a CRC: a truncated or foreign template is refused with a clear message instead of
matching nobody (or somebody). v1 (``VNPT`` version 1) is the palm code of the palm-gabor-1 model, kept so
every employee enrolled before the learned model keeps paying. v2 (``VNPT``/``VNPG`` version 2) is one
layout for any later model: the model's 32-bit tag (``model_tag``: a hash of its ``model_id``, so a template
says which model made it without spending bytes on the name) and the template guard's id, then the vector.

v2 layout, little-endian: magic (``VNPT`` clear, ``VNPG`` guarded: see template_guard.py), version u8 = 2,
kind u8 (2 = int8 embedding), images used u8, flags u8, dim u16, reserved u16, model tag u32, guard id u32
(0 when clear), then ``dim`` int8 values, then a CRC-32 of everything before it: 152 bytes for 128 values.
A template set (kind 3, ``dim`` = member count) holds u16-length-prefixed member templates instead: after a
model change an employee keeps the old model's template beside the new one, so the old model still knows
them (without it, their next probe the new model misses would face the old model as a stranger's).
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from . import palmcode
from ..errors import RecognitionError

TEMPLATE_MAGIC = b"VNPT"
GUARDED_MAGIC = b"VNPG"
TEMPLATE_VERSION = 1  # the palm-code layout
TEMPLATE_V2 = 2  # the model-naming layout
KIND_EMBEDDING = 2
KIND_SET = 3  # an employee moving between models: the active model's template, then the older one kept
MAX_TEMPLATE_BYTES = 1024  # v1 palm codes
MAX_EMBEDDING_TEMPLATE_BYTES = 256
_HEADER = struct.Struct("<4sBBBBBBHI")  # magic, version, orientations, grid h, grid w, images used, geometry len, flags, feature id
V2_HEADER = struct.Struct("<4sBBBBHHII")  # magic, version, kind, images used, flags, dim, reserved, model tag, guard id
CRC = struct.Struct("<I")


def model_tag(model_id: str) -> int:
    """The 32-bit name of a model in its templates (first 4 bytes of sha256 of its model_id)."""
    return int.from_bytes(hashlib.sha256(b"vendor-node model|" + model_id.encode()).digest()[:4], "little")


def template_version(data: bytes) -> int:
    """1 (palm code) or 2 (model-naming) from the header, 0 for anything else (checked fully when parsed)."""
    return data[4] if len(data) > 4 and bytes(data[:4]) in (TEMPLATE_MAGIC, GUARDED_MAGIC) else 0


@dataclass(frozen=True)
class Template:
    """One employee's v1 palm template; ``to_bytes`` gives the stored form (578 bytes for a 32x32 grid).

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
        data = body + CRC.pack(zlib.crc32(body))
        if len(data) > MAX_TEMPLATE_BYTES:
            raise RecognitionError(f"template would be {len(data)} bytes, over the {MAX_TEMPLATE_BYTES} byte limit")
        return data

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "template") -> "Template":
        """Parse and check a clear v1 template; RecognitionError saying what is wrong."""
        data = check_bytes(data, name)
        if len(data) < _HEADER.size + CRC.size:
            raise RecognitionError(f"{name}: truncated ({len(data)} bytes, a template has at least "
                                   f"{_HEADER.size + CRC.size})")
        magic, version, orientations, h, w, used, glen, _flags, feature_id = _HEADER.unpack_from(data)
        if magic != TEMPLATE_MAGIC:
            raise RecognitionError(f"{name}: not a palm template (starts with {magic!r}, expected {TEMPLATE_MAGIC!r})")
        if version != TEMPLATE_VERSION:
            raise RecognitionError(f"{name}: template format version {version} is not supported (this unit reads "
                                   f"version {TEMPLATE_VERSION} palm codes and version {TEMPLATE_V2}); re-enroll")
        if orientations != 6 or h == 0 or w == 0:
            raise RecognitionError(f"{name}: bad header ({orientations} orientations, grid {h}x{w})")
        cells = h * w
        plane_bytes, mask_bytes = (palmcode.BITS * cells + 7) // 8, (cells + 7) // 8
        expected = _HEADER.size + plane_bytes + mask_bytes + 2 * glen + CRC.size
        check_length_and_crc(data, expected, name)
        pos = _HEADER.size
        bits = np.unpackbits(np.frombuffer(data, np.uint8, plane_bytes, pos), bitorder="little")
        planes = bits[: palmcode.BITS * cells].reshape(palmcode.BITS, h, w).astype(bool)
        pos += plane_bytes
        valid = np.unpackbits(np.frombuffer(data, np.uint8, mask_bytes, pos), bitorder="little")[:cells]
        pos += mask_bytes
        geometry = np.frombuffer(data, "<f2", glen, pos).astype(np.float32)
        return cls(palmcode.planes_to_code(planes), valid.reshape(h, w).astype(bool), geometry, used, feature_id)


@dataclass(frozen=True)
class EmbeddingTemplate:
    """A v2 template: an int8 embedding (see model.embedding_template), the model's tag and the guard's id."""

    vector: np.ndarray  # int8 (D,), in the guard's domain when guard_id
    model_tag: int
    images_used: int = 1
    guard_id: int = 0  # 0: clear

    def to_bytes(self) -> bytes:
        vector = np.asarray(self.vector, np.int8).ravel()
        magic = GUARDED_MAGIC if self.guard_id else TEMPLATE_MAGIC
        body = V2_HEADER.pack(magic, TEMPLATE_V2, KIND_EMBEDDING, self.images_used, 0, vector.size, 0,
                              self.model_tag, self.guard_id) + vector.tobytes()
        data = body + CRC.pack(zlib.crc32(body))
        if len(data) > MAX_EMBEDDING_TEMPLATE_BYTES:
            raise RecognitionError(f"template would be {len(data)} bytes, over the "
                                   f"{MAX_EMBEDDING_TEMPLATE_BYTES} byte limit")
        return data

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "template") -> "EmbeddingTemplate":
        data = check_bytes(data, name)
        used, dim, tag, guard_id = v2_header(data, name)
        return cls(np.frombuffer(data, np.int8, dim, V2_HEADER.size).copy(), tag, used, guard_id)


def v2_header(data: bytes, name: str = "template") -> tuple[int, int, int, int]:
    """(images used, dim, model tag, guard id) of a v2 template after checking magic, length and CRC."""
    if len(data) < V2_HEADER.size + CRC.size:
        raise RecognitionError(f"{name}: truncated ({len(data)} bytes)")
    magic, version, kind, used, _flags, dim, _reserved, tag, guard_id = V2_HEADER.unpack_from(data)
    if magic not in (TEMPLATE_MAGIC, GUARDED_MAGIC) or version != TEMPLATE_V2:
        raise RecognitionError(f"{name}: not a version 2 template (starts with {bytes(data[:5])!r})")
    if kind != KIND_EMBEDDING or dim == 0:
        raise RecognitionError(f"{name}: template kind {kind} with {dim} values is not supported; re-enroll")
    if (magic == GUARDED_MAGIC) != bool(guard_id):
        raise RecognitionError(f"{name}: header says {'guarded' if magic == GUARDED_MAGIC else 'clear'} but "
                               f"guard id is {guard_id:08x}")
    check_length_and_crc(data, V2_HEADER.size + dim + CRC.size, name)
    return used, dim, tag, guard_id


def check_bytes(data, name: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecognitionError(f"{name}: expected bytes, got {type(data).__name__}")
    return bytes(data)


def check_length_and_crc(data: bytes, expected: int, name: str) -> None:
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise RecognitionError(f"{name}: {what} ({len(data)} bytes, expected {expected})")
    if CRC.unpack_from(data, expected - CRC.size)[0] != zlib.crc32(data[: expected - CRC.size]):
        raise RecognitionError(f"{name}: checksum mismatch (corrupted template)")


@dataclass(frozen=True)
class TemplateSet:
    """Member templates of one employee under several models (the active model's first), one guard."""

    members: tuple  # bytes of each member template
    model_tag: int  # the first member's model
    guard_id: int = 0

    def to_bytes(self) -> bytes:
        magic = GUARDED_MAGIC if self.guard_id else TEMPLATE_MAGIC
        body = V2_HEADER.pack(magic, TEMPLATE_V2, KIND_SET, 1, 0, len(self.members), 0, self.model_tag,
                              self.guard_id) + b"".join(struct.pack("<H", len(m)) + bytes(m) for m in self.members)
        return body + CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "template") -> "TemplateSet":
        data = check_bytes(data, name)
        if len(data) < V2_HEADER.size + CRC.size:
            raise RecognitionError(f"{name}: truncated ({len(data)} bytes)")
        magic, _version, _kind, _used, _flags, count, _reserved, tag, guard_id = V2_HEADER.unpack_from(data)
        if CRC.unpack_from(data, len(data) - CRC.size)[0] != zlib.crc32(data[:-CRC.size]):
            raise RecognitionError(f"{name}: checksum mismatch or truncated (corrupted template set)")
        members, pos = [], V2_HEADER.size
        for _ in range(count):
            if pos + 2 > len(data) - CRC.size:
                raise RecognitionError(f"{name}: truncated template set")
            (size,) = struct.unpack_from("<H", data, pos)
            members.append(data[pos + 2:pos + 2 + size])
            pos += 2 + size
        if pos != len(data) - CRC.size or not members:
            raise RecognitionError(f"{name}: template set of {count} members does not fill its {len(data)} bytes")
        return cls(tuple(members), tag, guard_id)


def template_kind(data: bytes) -> int:
    """The v2 kind byte (KIND_EMBEDDING, KIND_SET), 0 for a v1 template."""
    return data[5] if template_version(data) == TEMPLATE_V2 and len(data) > 5 else 0
