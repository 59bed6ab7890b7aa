"""A signed bundle read from its file record by record, never held whole (import of 50,000 employees < 150 MB).

Why: parsing a bundle with ``json.loads`` keeps the file, its text, every parsed dict and every record at
once (a 50,000-employee bundle peaked at 366 MB, the service runs under a MemoryMax). Here:

1. the signature is checked first, over the file mapped read-only (the kernel pages it in from the page
   cache; no copy on the heap), with the same header checks as ``bundle.decode_bundle``;
2. a scan pass checks every record with the rules of bundle_payload.py (errors name the same paths) and
   keeps the small fields and the employees (about 200 bytes each), of the templates only ids and counts;
3. ``StreamedBundle.templates`` streams the templates again, one at a time, for the account store to write
   inside its one transaction (the templates are the bulk of a bundle: 1 KiB each at most).

Every pass hashes the bytes it parses and fails unless they are the bytes whose signature was checked, so a
file changed behind the reader's back is refused (and the store's transaction rolled back), never trusted.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from ..errors import BundleError
from .bundle_payload import (JournalPosition, _check_deletions, _check_employee, _check_revocations, _check_template,
                             _check_template_allowed, _check_top, _Checker, _header_fields)

CHUNK_BYTES = 256 * 1024
MAX_RECORD_CHARS = 1024 * 1024  # one employee or template is well under a kilobyte or two
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_NUMBER_GOES_ON = "0123456789.eE+-"  # after these a number read so far may continue in the next chunk
LISTS = ("employees", "templates")


class _Records:
    """The bundle's templates: ``len()`` known from the scan, each iteration streams them from the file again."""

    def __init__(self, bundle: "StreamedBundle", key: str, count: int):
        self._bundle, self._key, self._count = bundle, key, count

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self):
        return self._bundle._records(self._key)


@dataclass
class StreamedBundle:
    """The fields of ``bundle.Bundle``; ``templates`` stream from the file when iterated."""

    path: Path
    source: str
    payload_offset: int
    payload_length: int
    payload_sha256: str
    sha256: str  # of the whole file, as bundle_history records it
    kind: str = ""
    version: int = 0
    created: float = 0.0
    expires: float = 0.0
    base_version: int | None = None
    unit_id: str = ""
    journal_position: JournalPosition = field(default_factory=JournalPosition)
    policy: dict = field(default_factory=dict)
    deletions: list[str] = field(default_factory=list)
    template_revocations: dict[str, float] = field(default_factory=dict)
    employees: list = field(default_factory=list)
    templates: _Records | None = None

    def _records(self, key: str):
        c = _Checker(self.source)
        with _PayloadReader(self) as reader:
            for top_key in reader.object_keys():
                if top_key != key:
                    reader.skip_value()
                    continue
                for i in reader.array_items(top_key):
                    yield _check_template(c, reader.value(), f"{key}[{i}]", {})


def read_bundle_streamed(path: Path | str, fleet_key) -> StreamedBundle:
    """Verify the signature, then check every record in one streamed pass; BundleError names what is wrong."""
    from .bundle import HEADER, MAGIC, MAX_PAYLOAD_BYTES, SIGNATURE_BYTES, check_header

    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > len(MAGIC) + HEADER.size + MAX_PAYLOAD_BYTES + SIGNATURE_BYTES:
                raise BundleError(f"{path}: {size} bytes is larger than any account bundle")
            length = check_header(f.read(len(MAGIC) + HEADER.size), size, source)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                start = len(MAGIC) + HEADER.size
                with memoryview(mapped) as view, view[:-SIGNATURE_BYTES] as signed, \
                        view[start:-SIGNATURE_BYTES] as payload:
                    try:
                        fleet_key.verify(bytes(view[-SIGNATURE_BYTES:]), signed)
                        genuine = True
                    except InvalidSignature:
                        genuine = False
                    file_sha = hashlib.sha256(view).hexdigest()
                    payload_sha = hashlib.sha256(payload).hexdigest()
                mapped.madvise(mmap.MADV_DONTNEED)  # its pages leave this process now, not at some later unmap
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle: {exc}") from None
    if not genuine:
        raise BundleError(f"{source}: bad signature (not signed by the pinned fleet key, or altered)")
    bundle = StreamedBundle(path, source, len(MAGIC) + HEADER.size, length, payload_sha, file_sha)
    _scan(bundle)
    return bundle


def _scan(bundle: StreamedBundle) -> None:
    """Check the whole payload record by record; keep the small fields, the counts and what cross-checks need."""
    c = _Checker(bundle.source)
    small: dict = {}
    counts = dict.fromkeys(LISTS, 0)
    seen: set = set()
    employees = []
    templated: dict[str, str] = {}  # employee id -> where its template is (for the deletion checks after)
    consented: dict[str, float] = {}
    with _PayloadReader(bundle) as reader:
        for key in reader.object_keys():
            if key in small or (key in LISTS and counts[key]):
                c.fail(f"payload.{key}", "appears twice")
            if key not in LISTS:
                small[key] = reader.value()
                continue
            small[key] = []  # present (the table check below wants every required key)
            for i in reader.array_items(key):
                item = reader.value()
                where = f"{key}[{i}]"
                if key == "employees":
                    employees.append(_check_employee(c, item, where, seen))
                else:
                    record = _check_template(c, item, where, templated)
                    consented[record.employee_id] = record.consented_at
                counts[key] = i + 1
    top = _check_top(c, small)
    header = _header_fields(c, top)
    deletions = _check_deletions(c, top["deletions"], seen)
    revocations = _check_revocations(c, top.get("template_revocations", []))
    deleted = set(deletions)
    for emp_id, where in templated.items():
        _check_template_allowed(c, where, emp_id, consented[emp_id], deleted, revocations)
    for name, value in header.items():
        setattr(bundle, name, value)
    bundle.deletions, bundle.template_revocations = deletions, revocations
    bundle.employees = employees
    bundle.templates = _Records(bundle, "templates", counts["templates"])


class _PayloadReader:
    """The payload's JSON read in chunks: the top-level object key by key, the big arrays element by element.

    Each value is parsed by the standard library's decoder from a window of the text; a value is taken only
    once the window holds a character after it that cannot continue it (a number cut at a chunk's end, even
    at its decimal point, is never taken short).
    """

    def __init__(self, bundle: StreamedBundle):
        self.bundle = bundle
        self.c = _Checker(bundle.source)
        self.text = ""
        self.pos = 0
        self.left = bundle.payload_length
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.digest = hashlib.sha256()
        self.file = None

    def __enter__(self):
        try:
            self.file = open(self.bundle.path, "rb")
            self.file.seek(self.bundle.payload_offset)
        except OSError as exc:
            raise BundleError(f"{self.bundle.source}: cannot read the bundle: {exc}") from None
        return self

    def __exit__(self, *exc):
        self.file.close()

    # --- the text window ---------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read the next chunk into the window; False at the end of the payload."""
        if self.left <= 0:
            return False
        try:
            chunk = self.file.read(min(CHUNK_BYTES, self.left))
        except OSError as exc:
            raise BundleError(f"{self.bundle.source}: cannot read the bundle: {exc}") from None
        if not chunk:
            raise BundleError(f"{self.bundle.source}: the file shrank while it was read; refused")
        self.left -= len(chunk)
        self.digest.update(chunk)
        try:
            decoded = self.decoder.decode(chunk, final=self.left <= 0)
        except UnicodeDecodeError as exc:
            raise BundleError(f"{self.bundle.source}: signed payload is not valid JSON: {exc}") from None
        self.text = self.text[self.pos:] + decoded
        self.pos = 0
        if self.left <= 0 and self.digest.hexdigest() != self.bundle.payload_sha256:
            raise BundleError(f"{self.bundle.source}: the file changed while it was read (not the bytes whose "
                              "signature was checked); refused, nothing changed")
        return True

    def _fail(self, problem: str):
        raise BundleError(f"{self.bundle.source}: signed payload is not valid JSON: {problem}")

    def _peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the payload)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text) or not self._fill():
                return self.text[self.pos:self.pos + 1]

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            self._fail(f"expected {char!r} at payload character {self.pos}")
        self.pos += 1

    def value(self):
        """The next complete JSON value."""
        self._peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if self.left <= 0 or (end < len(self.text) and not (number and self.text[end] in _NUMBER_GOES_ON)):
                    self.pos = end
                    return value
            except json.JSONDecodeError as exc:
                if self.left <= 0:
                    self._fail(str(exc))
            except RecursionError:
                raise BundleError(f"{self.bundle.source}: signed payload nests too deeply to be a bundle") from None
            if len(self.text) - self.pos > MAX_RECORD_CHARS and self.left > 0:
                self._fail(f"a value at payload character {self.pos} is longer than {MAX_RECORD_CHARS} characters")
            self._fill()

    def skip_value(self) -> None:
        """Past the next value; a big list element by element (never parsed whole)."""
        if self._peek() == "[":
            for _ in self.array_items():
                self.value()
        else:
            self.value()

    def object_keys(self):
        """Each key of the top-level object, the reader left at its value (which the caller must consume)."""
        self._expect("{")
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                key = self.value()
                if not isinstance(key, str):
                    self._fail("an object key is not a string")
                self._expect(":")
                yield key
                if self._peek() == ",":
                    self.pos += 1
                    continue
                self._expect("}")
                break
        if self._peek() != "":
            raise BundleError(f"{self.bundle.source}: signed payload is not valid JSON: extra data after the "
                              "payload object")

    def array_items(self, where: str = "list"):
        """The index of each element of the array starting here, the reader left at it."""
        if self._peek() != "[":
            self.c.array(self.value(), where)  # not a list: refused, naming the field
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
            return
        i = 0
        while True:
            yield i
            i += 1
            following = self._peek()
            self.pos += 1
            if following == "]":
                return
            if following != ",":
                self._fail(f"expected ',' or ']' at payload character {self.pos - 1}")
