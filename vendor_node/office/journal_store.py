"""What the office keeps of a unit's journal: each ingested batch once, as the unit sent it, and a row per charge.

A night's upload is 600 entries of which 200 are charges; only the charges are read again (balances'
check, sales, an employee's purchases, the no-sale alert), so only they are rows (`models.Charge`).
Every entry stays on record in the document of the batch that brought it (`models.JournalBatch.document`:
the signed upload as received, so the unit's signature and the hash chain can be checked again at any
time): a batch's new entries are its last ``entries`` ones (an ingest takes only entries that continue
the journal it holds). Batches ingested before migration 0009 hold their entries as the office had them
(``MIGRATED_FORMAT``, unsigned: the upload was not kept then).
"""
from __future__ import annotations

from .setup import importable

importable()

import json

from django.db.models import F

from ..money.journal_schema import GENESIS_HASH, canonical_entry, chain_hash
from .models import JournalBatch

MIGRATED_FORMAT = "vendor-node-office-entries"  # migration 0009's documents

try:  # the office extra's JSON library (a night's document parsed in a quarter of the standard library's time)
    from orjson import loads as fast_loads
except ImportError:  # an office installed without it: the same answers, slower
    fast_loads = json.loads


def document_entries(document: bytes) -> list[dict]:
    """The entries a stored batch document holds (an upload's body entries, or a migrated batch's)."""
    try:
        data = fast_loads(bytes(document))
    except ValueError:
        data = json.loads(bytes(document))
    if data.get("format") == MIGRATED_FORMAT:
        return data["entries"]
    return data["body"]["entries"]


def stored_entries(unit_pk: int, epoch: int, first: int = 1, last: int | None = None) -> list[dict]:
    """The unit's entries of that journal epoch from seq ``first`` to ``last`` (all: None), in seq order,
    each once, read from the documents of the batches that brought them."""
    batches = JournalBatch.objects.filter(unit_id=unit_pk, epoch=epoch, entries__gt=0, last_seq__gte=first)
    if last is not None:  # its new entries start at or before ``last``
        batches = batches.filter(last_seq__lte=F("entries") + (last - 1))
    found = []
    for last_seq, count, document in batches.order_by("last_seq").values_list("last_seq", "entries", "document"):
        lo, hi = max(first, last_seq - count + 1), last_seq if last is None else min(last, last_seq)
        if lo > hi or document is None:
            continue
        found.extend(e for e in document_entries(document) if lo <= e["seq"] <= hi)
    return found


def stored_hashes(unit_pk: int, epoch: int, first: int, last: int) -> dict[int, str]:
    """seq -> hash of the unit's stored entries from ``first`` to ``last`` (an overlapping upload's check)."""
    return {e["seq"]: e["hash"] for e in stored_entries(unit_pk, epoch, first, last)}


def verify_stored(unit_pk: int, epoch: int) -> tuple[int, str | None]:
    """The unit's stored journal of that epoch checked again: (entries, None) when every entry's hash
    recomputes and chains from GENESIS_HASH at seq 1 with no seq missing; else (entries read, what is wrong)."""
    prev, expected, count = GENESIS_HASH, 1, 0
    for e in stored_entries(unit_pk, epoch):
        if e["seq"] != expected:
            return count, f"seq {expected} missing (next stored: {e['seq']})"
        digest = chain_hash(prev, canonical_entry(e["seq"], e["ts_us"], e["kind"], e["session_id"],
                                                  e.get("employee_id"), e.get("item"), e.get("amount_cents"),
                                                  e.get("detail")))
        if e.get("prev_hash") != prev or digest != e["hash"]:
            return count, f"hash chain broken at seq {e['seq']}"
        prev, expected, count = digest, expected + 1, count + 1
    return count, None
