"""Signed journal batches for the nightly sync: export, read back, acknowledge.

A batch is the not-yet-uploaded entries ``(uploaded_upto_seq, last_seq]`` with
their hashes, so the back office can continue the chain from the previous
batch's ``last_hash``. The file is JSON ``{"body": {...}, "signature": b64}``;
the Ed25519 signature (the unit's own key) covers the canonical JSON of body.

Retry-safe: the first export freezes the batch's range in ``journal_sync``;
every export until it is acknowledged writes the same entries under the same
batch id (byte-identical: Ed25519 is deterministic and the creation time is
frozen with the range). The file is written atomically (temp + fsync + rename
+ directory fsync), so a power cut never leaves half a batch under the name.
"""
from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import JournalError, JournalRefused
from .storage import write_file_atomically
from .journal_schema import GENESIS_HASH, REVIEW_SETTLED, VEND_SUCCEEDED
from .journal_verify import check_range

BATCH_FORMAT = "vendor-node-journal-batch"
BATCH_VERSION = 1


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    batch_id: str
    first_seq: int
    last_seq: int
    entries: int
    charged_cents: int


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _freeze_pending(journal) -> tuple[str, int, int, int]:
    """The pending batch's (id, first_seq, last_seq, created_us), freezing a new one if none is pending."""
    conn = journal.conn
    with journal._lock:
        if conn.in_transaction:
            raise JournalError("journal export inside another transaction")
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT uploaded_upto_seq, pending_batch_id, pending_first_seq, pending_last_seq, "
                               "pending_created_us FROM journal_sync WHERE id = 1").fetchone()
            if row is None:
                raise JournalError("the journal sync record is missing; run `vendor-node journal verify`")
            uploaded, pending_id, first, last, created_us = row
            if pending_id is None:
                head_seq, head_hash = journal.head()
                first, last = uploaded + 1, head_seq
                created_us = int(round(journal._clock() * 1e6))
                pending_id = f"{first:08d}-{last:08d}-{head_hash[:16]}" if last >= first else f"empty-{uploaded:08d}"
                if last >= first:  # an empty batch is never pending: nothing to acknowledge
                    conn.execute("UPDATE journal_sync SET pending_batch_id = ?, pending_first_seq = ?, "
                                 "pending_last_seq = ?, pending_created_us = ? WHERE id = 1",
                                 (pending_id, first, last, created_us))
            conn.execute("COMMIT")
            return pending_id, first, last, created_us
        except sqlite3.Error as exc:
            raise JournalError(f"cannot prepare the journal export: {exc}") from None
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def build_batch(journal, signing_key, unit_id: str = "") -> dict:
    """The signed batch document (not yet written anywhere)."""
    from cryptography.hazmat.primitives import serialization

    batch_id, first, last, created_us = _freeze_pending(journal)
    check_range(journal, first - 1, last)  # never ship a broken chain; the message names the first bad entry
    entries = journal.entries(first - 1, last)
    if len(entries) != max(0, last - first + 1):
        raise JournalError(f"batch {batch_id}: expected entries seq {first}..{last}, found {len(entries)}")
    prev = journal.entries(first - 2, first - 1) if first > 1 else []
    public_raw = signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = {
        "format": BATCH_FORMAT, "version": BATCH_VERSION, "unit_id": unit_id, "batch_id": batch_id,
        "first_seq": first, "last_seq": last, "created_us": created_us,
        "prev_hash": prev[0].hash if prev else GENESIS_HASH,
        "last_hash": entries[-1].hash if entries else (prev[0].hash if prev else GENESIS_HASH),
        "charged_cents": sum(e.amount_cents or 0 for e in entries if e.kind in (VEND_SUCCEEDED, REVIEW_SETTLED)),
        "unit_public_key": base64.b64encode(public_raw).decode("ascii"),
        "entries": [e.as_dict() for e in entries],
    }
    signature = signing_key.sign(_canonical(body))
    return {"body": body, "signature": base64.b64encode(signature).decode("ascii")}


def write_atomically(path: Path, data: bytes) -> None:
    """The batch file appears whole or not at all; the old file stays on failure."""
    try:
        write_file_atomically(path, data)
    except OSError as exc:
        raise JournalError(f"{path}: cannot write the journal batch: {exc.strerror or exc}") from None


def export_batch(journal, out_path, signing_key, unit_id: str = "") -> ExportInfo:
    """Write the not-yet-uploaded entries as one signed batch; the journal itself is untouched
    (only the pending range is frozen, so a failed write is simply retried)."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise JournalError(f"{out_path}: is a folder; give the batch file's name")
    if not out_path.parent.is_dir():
        raise JournalError(f"{out_path}: folder {out_path.parent} does not exist")
    document = build_batch(journal, signing_key, unit_id)
    write_atomically(out_path, _canonical(document) + b"\n")
    body = document["body"]
    return ExportInfo(out_path, body["batch_id"], body["first_seq"], body["last_seq"], len(body["entries"]),
                      body["charged_cents"])


def read_batch(path, public_key) -> dict:
    """The batch body, after checking its format and its signature against ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    path = Path(path)
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the batch: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JournalError(f"{path}: not a journal batch (bad JSON: {exc})") from None
    except RecursionError:
        raise JournalError(f"{path}: not a journal batch (nested too deeply)") from None
    if not isinstance(document, dict) or not isinstance(document.get("body"), dict) \
            or not isinstance(document.get("signature"), str):
        raise JournalError(f"{path}: not a journal batch (expected body and signature)")
    body = document["body"]
    if body.get("format") != BATCH_FORMAT or body.get("version") != BATCH_VERSION:
        raise JournalError(f"{path}: not a {BATCH_FORMAT} version {BATCH_VERSION} file")
    try:
        signature = base64.b64decode(document["signature"], validate=True)
        public_key.verify(signature, _canonical(body))
    except (binascii.Error, InvalidSignature, ValueError):
        raise JournalError(f"{path}: the batch signature does not verify with this unit's key "
                           "(changed, damaged, or from another unit)") from None
    for name in ("first_seq", "last_seq"):
        if isinstance(body.get(name), bool) or not isinstance(body.get(name), int):
            raise JournalError(f"{path}: batch field {name} is missing or not a number")
    return body


def acknowledge_batch(journal, path, public_key) -> int:
    """The back office holds this batch: move the upload watermark past it. Returns the watermark.
    Acknowledging the same batch again is a no-op; a batch that is not the pending one is refused."""
    body = read_batch(path, public_key)
    uploaded = journal.uploaded_upto_seq()
    if body["last_seq"] <= uploaded:
        return uploaded  # already acknowledged (or an empty batch)
    row = journal.conn.execute("SELECT pending_batch_id FROM journal_sync WHERE id = 1").fetchone()
    if row is None or row[0] != body.get("batch_id"):
        raise JournalRefused(f"{path}: batch {body.get('batch_id')} is not the one awaiting acknowledgement "
                             f"({row[0] if row and row[0] else 'none pending'}); nothing changed")
    ours = journal.entries(body["last_seq"] - 1, body["last_seq"])
    if not ours or ours[0].hash != body.get("last_hash"):
        raise JournalRefused(f"{path}: the batch's last entry (seq {body['last_seq']}) does not match this "
                             "journal; nothing changed")
    return journal.mark_uploaded(body["last_seq"])



def fleet_receipt(data: bytes, unit_id: str, unit_fingerprint: str, fleet_signing_key, source: str = "upload") -> dict:
    """The fleet-signed receipt for a sync-folder upload (a journal batch or a templates document), for an
    office without a server. A batch must be signed by the key registered for ``unit_id`` (its fingerprint)."""
    import hashlib
    import time

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JournalError(f"{source}: not JSON ({exc})") from None
    except RecursionError:
        raise JournalError(f"{source}: not a journal batch (nested too deeply)") from None
    if not isinstance(document, dict):
        raise JournalError(f"{source}: neither a journal batch nor a templates document")
    if isinstance(document.get("body"), dict):
        body = document["body"]
        wanted = "".join(c for c in unit_fingerprint.lower() if c in "0123456789abcdef")
        try:
            raw = base64.b64decode(body.get("unit_public_key", ""), validate=True)
            if hashlib.sha256(raw).hexdigest() != wanted:
                raise JournalError(f"{source}: not signed by the key registered for {unit_id} "
                                   f"(fingerprint {unit_fingerprint}); no receipt")
            Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(document.get("signature", ""),
                                                                            validate=True), _canonical(body))
        except (binascii.Error, ValueError, TypeError, InvalidSignature):
            raise JournalError(f"{source}: the batch signature does not verify; no receipt") from None
        if body.get("unit_id") != unit_id or body.get("format") != BATCH_FORMAT:
            raise JournalError(f"{source}: a batch of unit {body.get('unit_id')!r}, not {unit_id!r}; no receipt")
        receipt = {"kind": "journal", "unit_id": unit_id, "batch_id": body.get("batch_id"),
                   "last_seq": body.get("last_seq"), "last_hash": body.get("last_hash"), "ingested_at": time.time()}
    elif isinstance(document.get("templates"), list) and isinstance(document.get("revocations"), list):
        receipt = {"kind": "templates", "unit_id": unit_id,
                   "accepted": [t.get("employee_id") for t in document["templates"] if isinstance(t, dict)],
                   "revocations": [r.get("employee_id") for r in document["revocations"] if isinstance(r, dict)]}
    else:
        raise JournalError(f"{source}: neither a journal batch nor a templates document")
    signature = fleet_signing_key.sign(_canonical(receipt))
    return {"receipt": receipt, "signature": base64.b64encode(signature).decode("ascii")}
