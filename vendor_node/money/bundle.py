"""Signed account bundles: the unit's only way in for employees, templates, deletions and policy.

File layout (all integers big-endian)::

    b"VNBUNDLE1\\n"          10-byte magic (the container; the payload's "format" is 2)
    payload length          4 bytes
    payload                 UTF-8 JSON (schema below)
    signature               64-byte Ed25519 over magic + length + payload

The signature is checked against the pinned fleet key *before* the JSON is
parsed, so a forged or damaged file never reaches the parser. The exact file
size must match the length field, so a truncated file is caught as such.

Payload::

    {"format": 2, "unit_id": "<the one unit it is for>", "journal_position": {"seq": N, "hash": hex},
     "kind": "snapshot"|"delta", "version": N, "base_version": M (delta only),
     "created": unix_s, "expires": unix_s, "policy": {...},
     "employees": [{"id", "name", "status": "active"|"suspended", "funding": "prepaid"|"payroll",
                    "funds_cents", "per_purchase_cap_cents": int|null, "per_day_cap_cents": int|null}],
     "templates": [{"employee_id", "sealed": base64, "consent_version", "consented_at"}],
     "deletions": ["id", ...]}

A bundle is built for one unit: the unit refuses a bundle naming another (a
shared sync folder or a confused server can never replace its employees).
``funds_cents`` is the balance the back office's ledger knows (top-ups minus
every charge ingested from every unit; for payroll funding what is left of the
period's deduction limit). It already includes this unit's charges up to
``journal_position`` (the last entry of this unit's journal the office had
ingested, seq 0 and the genesis hash when none), so the unit subtracts only its
own charges with a later seq: ordering by journal seq, never by wall clock, so
a bundle built before the unit's last upload arrived cannot give spent money
back, nor can a clock stepping back. Format 1 (no unit, no position) is refused.

Templates never travel in the clear: ``sealed`` is AES-256-GCM under the fleet
template key installed at provisioning (employee id as associated data). The
back office only relays these blobs between units, it never needs the plaintext.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BundleError
from .bundle_payload import (  # noqa: F401 (re-exported: the records and limits are part of this module's face)
    EMPLOYEE_ID_RE, FORMAT, FUNDING, HASH_RE, MAX_INTEGER, MAX_NAME_CHARS, MAX_TEMPLATE_SEALED_BYTES,
    MAX_VALIDITY_DAYS, POLICY_KEYS, STATUSES, TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, JournalPosition,
    TemplateRecord, _Checker, _validate_payload, control_character)

MAGIC = b"VNBUNDLE1\n"
HEADER = struct.Struct(">I")
SIGNATURE_BYTES = 64
MAX_PAYLOAD_BYTES = 128 * 1024 * 1024


# --- encoding (fleet side) -----------------------------------------------------
def _payload(bundle: Bundle) -> dict:
    payload = {
        "format": FORMAT,
        "unit_id": bundle.unit_id,
        "journal_position": {"seq": bundle.journal_position.seq, "hash": bundle.journal_position.hash},
        "kind": bundle.kind,
        "version": bundle.version,
        "created": bundle.created,
        "expires": bundle.expires,
        "policy": dict(bundle.policy),
        "employees": [
            {"id": e.id, "name": e.display_name, "status": e.status, "funding": e.funding,
             "funds_cents": e.funds_cents, "per_purchase_cap_cents": e.per_purchase_cap_cents,
             "per_day_cap_cents": e.per_day_cap_cents}
            for e in bundle.employees
        ],
        "templates": [
            {"employee_id": t.employee_id, "sealed": base64.b64encode(t.sealed).decode("ascii"),
             "consent_version": t.consent_version, "consented_at": t.consented_at}
            for t in bundle.templates
        ],
        "deletions": list(bundle.deletions),
    }
    if bundle.template_revocations:
        payload["template_revocations"] = [{"employee_id": emp, "revoked_at": at}
                                           for emp, at in sorted(bundle.template_revocations.items())]
    if bundle.kind == "delta":
        payload["base_version"] = bundle.base_version
    return payload


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _sign(body: bytes, signing_key: Ed25519PrivateKey) -> bytes:
    signed = MAGIC + HEADER.pack(len(body)) + body
    return signed + signing_key.sign(signed)


def encode_bundle(bundle: Bundle, signing_key: Ed25519PrivateKey) -> bytes:
    """The signed file bytes for ``bundle``; BundleError (nothing signed) for anything a unit would refuse."""
    payload = _payload(bundle)
    _validate_payload(payload, "bundle to sign")  # never sign what every unit would then refuse
    return _sign(_json(payload), signing_key)


@dataclass(frozen=True)
class SharedRecords:
    """A snapshot's lists, checked and encoded once for many units' bundles (``share_records``). Per bundle only
    what differs is filled in: each employee's ``funds_cents`` (it moves with every charge ingested) and which
    templates are left out (a unit is not sent back its own)."""
    employee_ids: tuple[str, ...]
    employees: tuple[tuple[bytes, bytes], ...]  # each record's JSON before and after its funds_cents value
    templates: tuple[tuple[object, bytes], ...]  # (owner, the record's JSON): a bundle may leave an owner's out
    tail: bytes  # the deletions and template revocations, as JSON members
    sha256: str  # of all of the above: two bundles with equal funds, owner and envelope say the same


def share_records(bundle: Bundle, template_owners: list) -> SharedRecords:
    """``bundle``'s lists checked as ``encode_bundle`` checks them (its envelope is a stand-in, its funds any
    valid figure), encoded once; ``template_owners[i]`` names who sent ``bundle.templates[i]``."""
    if bundle.kind != "snapshot" or len(template_owners) != len(bundle.templates):
        raise BundleError("shared records: a snapshot, and one owner per template")
    payload = _payload(bundle)
    _validate_payload(payload, "bundle to sign")
    employees = []
    for record in payload["employees"]:
        funds = record.pop("funds_cents")
        head = _json({k: record[k] for k in ("id", "name", "status", "funding")})
        tail = _json({k: record[k] for k in ("per_purchase_cap_cents", "per_day_cap_cents")})
        employees.append((head[:-1] + b',"funds_cents":', b"," + tail[1:]))
        record["funds_cents"] = funds
    templates = tuple((owner, _json(t)) for owner, t in zip(template_owners, payload["templates"]))
    tail = b',"deletions":' + _json(payload["deletions"]) + (
        b',"template_revocations":' + _json(payload["template_revocations"])
        if "template_revocations" in payload else b"")
    digest = hashlib.sha256(b"\n".join([*(h + t for h, t in employees), *(t for _, t in templates), tail]))
    return SharedRecords(tuple(e["id"] for e in payload["employees"]), tuple(employees), templates, tail,
                         digest.hexdigest())


def encode_shared_bundle(envelope: Bundle, shared: SharedRecords, funds_cents: list[int], leave_out_owner,
                         signing_key: Ed25519PrivateKey) -> bytes:
    """The signed bundle ``encode_bundle`` would make from ``envelope`` (a snapshot with empty lists) and the
    shared records, with ``funds_cents[i]`` for employee i and the templates of ``leave_out_owner`` left out:
    the same bytes, at the cost of the envelope's check and one join."""
    if envelope.employees or envelope.templates or envelope.deletions or envelope.template_revocations \
            or envelope.kind != "snapshot" or len(funds_cents) != len(shared.employees):
        raise BundleError("shared bundle: a snapshot envelope with empty lists, and one funds figure per employee")
    _validate_payload(_payload(envelope), "bundle to sign")
    checker = _Checker("bundle to sign")
    for i, funds in enumerate(funds_cents):
        checker.integer(funds, f"employees[{i}].funds_cents")
    head = _json({k: v for k, v in _payload(envelope).items()
                  if k not in ("employees", "templates", "deletions")})
    body = b"".join([head[:-1], b',"employees":[',
                     b",".join(h + str(f).encode() + t for (h, t), f in zip(shared.employees, funds_cents)),
                     b'],"templates":[', b",".join(t for owner, t in shared.templates if owner != leave_out_owner),
                     b"]", shared.tail, b"}"])
    return _sign(body, signing_key)


def write_bundle_file(path: Path | str, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise BundleError(f"{path}: cannot write the bundle: {exc}") from None


# --- decoding (unit side) --------------------------------------------------------
def check_header(head: bytes, size: int, source: str) -> int:
    """The payload length from the file's first bytes and its size; BundleError for a non-bundle or a truncated
    or overlong file (shared by the in-memory and the streamed readers)."""
    if size < len(MAGIC) + HEADER.size + SIGNATURE_BYTES:
        if not MAGIC.startswith(head[: len(MAGIC)]):
            raise BundleError(f"{source}: not an account bundle (bad magic)")
        raise BundleError(f"{source}: truncated ({size} bytes is shorter than any bundle)")
    if head[: len(MAGIC)] != MAGIC:
        raise BundleError(f"{source}: not an account bundle (bad magic)")
    (length,) = HEADER.unpack_from(head, len(MAGIC))
    if length > MAX_PAYLOAD_BYTES:
        raise BundleError(f"{source}: payload length {length} exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    expected = len(MAGIC) + HEADER.size + length + SIGNATURE_BYTES
    if size < expected:
        raise BundleError(f"{source}: truncated ({size} bytes, the header promises {expected})")
    if size > expected:
        raise BundleError(f"{source}: {size - expected} unexpected bytes after the signature")
    return length


def decode_bundle(data: bytes, fleet_key: Ed25519PublicKey, source: str = "bundle") -> Bundle:
    """Verify the signature, then parse and validate; BundleError names what is wrong."""
    check_header(data[: len(MAGIC) + HEADER.size], len(data), source)
    view = memoryview(data)  # no copies of a bundle of tens of MB: the sync runs under a MemoryMax
    signed, signature = view[:-SIGNATURE_BYTES], bytes(view[-SIGNATURE_BYTES:])
    try:
        fleet_key.verify(signature, signed)
    except InvalidSignature:
        raise BundleError(f"{source}: bad signature (not signed by the pinned fleet key, or altered)") from None
    try:
        raw = json.loads(bytes(signed[len(MAGIC) + HEADER.size:]))  # the copy is dropped once parsed
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{source}: signed payload is not valid JSON: {exc}") from None
    except RecursionError:  # a signed bundle is still input: nesting deep enough to crash the parser is refused
        raise BundleError(f"{source}: signed payload nests too deeply to be a bundle") from None
    bundle = _validate_payload(raw, source)
    return replace(bundle, sha256=hashlib.sha256(data).hexdigest())


def read_bundle_file(path: Path | str, fleet_key: Ed25519PublicKey) -> Bundle:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > len(MAGIC) + HEADER.size + MAX_PAYLOAD_BYTES + SIGNATURE_BYTES:
            raise BundleError(f"{path}: {size} bytes is larger than any account bundle")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle: {exc}") from None
    return decode_bundle(data, fleet_key, str(path))


# --- templates carried from a unit's upload queue to a bundle (no server needed) ------------
def templates_to_json(records: list[TemplateRecord]) -> str:
    """The upload-queue form: templates stay sealed under the fleet template key."""
    return json.dumps([{"employee_id": t.employee_id, "sealed": base64.b64encode(t.sealed).decode("ascii"),
                        "consent_version": t.consent_version, "consented_at": t.consented_at}
                       for t in records], indent=1)


def read_templates_json(path: Path | str) -> list[TemplateRecord]:
    """Templates exported by `vendor-node accounts export-uploads`; errors name the entry."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a templates file: {exc}") from None
    except RecursionError:
        raise BundleError(f"{path}: not a templates file: nested too deeply") from None
    c = _Checker(str(path))
    records, seen = [], set()
    for i, item in enumerate(c.array(raw, "templates")):
        where = f"[{i}]"
        c.table(item, where, {"employee_id", "sealed", "consent_version", "consented_at"})
        emp_id = c.employee_id(item["employee_id"], f"{where}.employee_id")
        if emp_id in seen:
            c.fail(f"{where}.employee_id", f"second template for {emp_id!r}")
        seen.add(emp_id)
        try:
            sealed = base64.b64decode(item["sealed"], validate=True) if isinstance(item["sealed"], str) else None
        except (binascii.Error, ValueError):
            sealed = None
        if sealed is None or not 28 < len(sealed) <= MAX_TEMPLATE_SEALED_BYTES:
            c.fail(f"{where}.sealed", "not a base64 sealed template")
        records.append(TemplateRecord(emp_id, sealed, c.text(item["consent_version"], f"{where}.consent_version", 64),
                                      c.number(item["consented_at"], f"{where}.consented_at")))
    return records
