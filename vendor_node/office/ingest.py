"""Units' signed journal batches into the ledger: signature, hash chain, idempotent by (unit, journal, seq).

The batch is the file `journal export` writes. Its signature must verify with the unit's own
registered key; every entry's hash must recompute and chain from the office's last ingested
(seq, hash) for that unit. A batch starting past last+1 is a gap: refused (409) and flagged on
the unit, never papered over. A batch already ingested answers the same signed receipt again.
A batch that does not continue the journal the office holds (a unit reinstalled with a fresh journal)
is refused and flagged until a technician accepts the new journal (``units.accept_new_journal``): it
is then the unit's next journal epoch, ingested from seq 1, the old one's entries kept as they were.
"""
from __future__ import annotations

from .setup import importable

importable()

import base64
import binascii
import json
import time

from cryptography.exceptions import InvalidSignature
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ..errors import UnitRequestRefused
from ..money.journal_export import BATCH_FORMAT, BATCH_VERSION, _canonical
from ..money.journal_schema import KINDS, REVIEW_SETTLED, VEND_SUCCEEDED, canonical_entry, chain_hash
from .journal_store import stored_hashes
from .models import Charge, ChargePending, ChargeTotal, JournalBatch, Unit, hot_cursor
from .units import UNIT_REQUEST_FIELDS, lock_and_stamp_sync, unit_from_row

_ENTRY_FIELDS = {"seq": int, "ts_us": int, "kind": str, "session_id": str, "prev_hash": str, "hash": str}
_NULLABLE = {"employee_id": str, "item": str, "amount_cents": int, "detail": str}


def _bad(message: str) -> UnitRequestRefused:
    return UnitRequestRefused(400, message)


_HEAD, _TAIL = b'{"body":', b',"signature":"'


try:  # the office extra's JSON library: a night's batch parsed in a quarter of the standard library's time,
    # each entry's canonical bytes made in a third of `canonical_entry`'s (the same bytes for what an entry holds:
    # ints of 64 bits, strings, null; tests/test_office_ingest_fast.py compares them)
    from orjson import dumps as _fast_dumps, loads as _fast_loads
except ImportError:  # an office installed without it: the same answers, slower
    _fast_dumps, _fast_loads = None, json.loads


def _signed_as_sent(data: bytes, public_key) -> dict | None:
    """The body when the upload is laid out as `journal export` writes it (the canonical document, so the signed
    bytes are a slice of it) and the signature verifies over that slice: the body is parsed once and never
    re-encoded to check the signature (a night's batch: re-encoding cost as much as the hash chain). None
    otherwise: the general path decides (also for what orjson refuses and the standard library reads: NaN,
    integers past 64 bits, lone surrogates; so every answer is the standard library's)."""
    cut = data.rfind(_TAIL)
    if not data.startswith(_HEAD) or cut < 0 or not data.rstrip(b"\n").endswith(b'"}'):
        return None
    signed, signature = data[len(_HEAD):cut], data[cut + len(_TAIL):].rstrip(b"\n")[:-2]
    try:
        public_key.verify(base64.b64decode(signature, validate=True), signed)
        body = _fast_loads(signed)
    except (binascii.Error, InvalidSignature, ValueError):
        return None
    return body if isinstance(body, dict) else None


def parse_batch(data: bytes, unit: Unit, public_key) -> tuple[dict, list[tuple]]:
    """The verified batch body and its charges' row values (_CHARGE_ROW order, as read once by the checks:
    every entry is checked, only the charges become rows); UnitRequestRefused (400/401/403) naming what is
    wrong."""
    body = _signed_as_sent(data, public_key)
    if body is None:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(f"body: not a journal batch (bad JSON: {exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get("body"), dict) \
                or not isinstance(document.get("signature"), str):
            raise _bad("body: not a journal batch (expected 'body' and 'signature')")
        body = document["body"]
        try:
            public_key.verify(base64.b64decode(document["signature"], validate=True), _canonical(body))
        except (binascii.Error, InvalidSignature, ValueError):
            raise UnitRequestRefused(401, "signature: the batch is not signed by this unit's key (altered or "
                                          "another unit's)") from None
    if body.get("format") != BATCH_FORMAT or body.get("version") != BATCH_VERSION:
        raise _bad(f"body.format: expected {BATCH_FORMAT} version {BATCH_VERSION}")
    if body.get("unit_id") != unit.unit_id:
        raise UnitRequestRefused(403, f"body.unit_id: batch of unit {body.get('unit_id')!r}, not {unit.unit_id!r}")
    for name in ("first_seq", "last_seq"):
        if isinstance(body.get(name), bool) or not isinstance(body.get(name), int) or body[name] < 0:
            raise _bad(f"body.{name}: missing or not a non-negative integer")
    for name in ("batch_id", "prev_hash", "last_hash"):
        if not isinstance(body.get(name), str) or not body[name] or len(body[name]) > 80:
            raise _bad(f"body.{name}: missing or not a short string")
    entries = body.get("entries")
    if not isinstance(entries, list):
        raise _bad("body.entries: expected a list")
    expected = max(0, body["last_seq"] - body["first_seq"] + 1)
    if len(entries) != expected:
        raise _bad(f"body.entries: {len(entries)} entries for seq {body['first_seq']}..{body['last_seq']}")
    prev, first, fields = body["prev_hash"], body["first_seq"], []
    for i, entry in enumerate(entries):  # the hot loop of an upload: each field read once, one type test per
        # field (JSON gives no int or str subclasses but bool, which `type(...) is int` refuses); the slow path
        # names what is wrong
        if type(entry) is not dict:
            _refuse_entry_fields(entry, f"body.entries[{i}]")
        get = entry.get
        seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail, entry_prev, entry_hash = (
            get("seq"), get("ts_us"), get("kind"), get("session_id"), get("employee_id"), get("item"),
            get("amount_cents"), get("detail"), get("prev_hash"), get("hash"))
        if not (type(seq) is int and type(ts_us) is int and type(kind) is str and type(session_id) is str
                and type(entry_prev) is str and type(entry_hash) is str and type(employee_id) in _STR_OR_NONE
                and type(item) in _STR_OR_NONE and type(amount_cents) in _INT_OR_NONE
                and type(detail) in _STR_OR_NONE):
            _refuse_entry_fields(entry, f"body.entries[{i}]")
        if kind not in KINDS:
            raise _bad(f"body.entries[{i}].kind: unknown kind {kind!r}")
        if seq != first + i:
            raise _bad(f"body.entries[{i}].seq: {seq} breaks the sequence (expected {first + i})")
        computed = chain_hash(prev, _canonical_entry(seq, ts_us, kind, session_id, employee_id, item, amount_cents,
                                                     detail))
        if entry_prev != prev or entry_hash != computed:
            if entry_prev != prev or entry_hash != chain_hash(prev, canonical_entry(
                    seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail)):  # the reference decides
                raise UnitRequestRefused(409, f"body.entries[{i}]: hash chain broken at seq {seq}")
            computed = entry_hash
        prev = computed
        if amount_cents and (kind == VEND_SUCCEEDED or (kind == REVIEW_SETTLED and amount_cents > 0)):
            fields.append((seq, ts_us, kind, employee_id, item, amount_cents))
    if prev != body["last_hash"]:
        raise UnitRequestRefused(409, "body.last_hash: does not match the last entry's hash")
    return body, fields


_STR_OR_NONE, _INT_OR_NONE = (str, type(None)), (int, type(None))


def _canonical_entry(seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail) -> bytes:
    """`canonical_entry`'s bytes by orjson when installed (keys written in sorted order; anything orjson cannot
    write, such as an integer past 64 bits, the reference way)."""
    if _fast_dumps is not None:
        try:
            return _fast_dumps({"amount_cents": amount_cents, "detail": detail, "employee_id": employee_id,
                                "item": item, "kind": kind, "seq": seq, "session_id": session_id, "ts_us": ts_us})
        except TypeError:  # orjson.JSONEncodeError
            pass
    return canonical_entry(seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail)


def _refuse_entry_fields(entry, where: str) -> None:
    """The field an entry got wrong, named (the fast check in `parse_batch` only says that one is)."""
    if not isinstance(entry, dict):
        raise _bad(f"{where}: expected an object")
    for name, kind in _ENTRY_FIELDS.items():
        if isinstance(entry.get(name), bool) or not isinstance(entry.get(name), kind):
            raise _bad(f"{where}.{name}: missing or not {kind.__name__}")
    for name, kind in _NULLABLE.items():
        value = entry.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise _bad(f"{where}.{name}: not {kind.__name__}")
    raise _bad(f"{where}: a field of the wrong type")  # not reached: the fast check and this one agree


def receipt_for(unit: Unit, batch: JournalBatch) -> dict:
    return {"kind": "journal", "unit_id": unit.unit_id, "batch_id": batch.batch_id, "last_seq": batch.last_seq,
            "last_hash": batch.last_hash, "ingested_at": batch.ingested_at}


def ingest_batch(unit: Unit, data: bytes, public_key) -> dict:
    """Ingest one batch; returns the receipt (unsigned). Safe to call again with the same batch."""
    body, charges = parse_batch(data, unit, public_key)
    first, last = body["first_seq"], body["last_seq"]
    for _attempt in range(3):
        try:
            with transaction.atomic():
                locked, done = _lock_and_find_batch(unit.pk, body["batch_id"])
                if done is not None:
                    if (done.last_seq, done.last_hash) != (last, body["last_hash"]):
                        raise UnitRequestRefused(409, f"body.batch_id: {body['batch_id']} was ingested with "
                                                      "different entries")
                    return receipt_for(locked, done)
                receipt, pending_id = _ingest_locked(locked, body, charges, data)
            if pending_id is not None and pending_id % FOLD_EVERY_UPLOADS == 0:  # after the commit, never in it
                fold_pending_charges()
            return receipt
        except _GapRefused as exc:
            Unit.objects.filter(pk=unit.pk).update(gap=exc.gap[:300])  # flagged after the rollback
            raise
        except _OtherJournal as exc:
            Unit.objects.filter(pk=unit.pk).update(refused=exc.why[:300])
            raise
        except IntegrityError:
            continue  # a concurrent upload of the same batch won: answer its receipt on the next pass
    raise UnitRequestRefused(409, "body: the batch is being ingested concurrently; retry")


def _lock_and_find_batch(unit_pk: int, batch_id: str) -> tuple[Unit, JournalBatch | None]:
    """The unit row locked and its last sync stamped (`lock_and_stamp_sync`), and its batch of this id in its
    current journal if already ingested (what a receipt names): on PostgreSQL in one round trip."""
    if connection.vendor != "postgresql":  # SQLite has no UPDATE inside WITH
        locked = lock_and_stamp_sync(unit_pk)
        with hot_cursor() as cursor:
            cursor.execute(f"SELECT last_seq, last_hash, ingested_at FROM {JournalBatch._meta.db_table} "
                           "WHERE unit_id = %s AND epoch = %s AND batch_id = %s", [unit_pk, locked.journal_epoch, batch_id])
            return locked, _batch_from(locked, batch_id, cursor.fetchone())
    with hot_cursor() as cursor:
        cursor.execute(
            f"WITH u AS (UPDATE {Unit._meta.db_table} SET last_sync_at = %s WHERE id = %s RETURNING "
            f"{', '.join(UNIT_REQUEST_FIELDS)}) SELECT u.*, b.last_seq, b.last_hash, b.ingested_at FROM u "
            f"LEFT JOIN {JournalBatch._meta.db_table} b ON b.unit_id = u.id AND b.epoch = u.journal_epoch "
            "AND b.batch_id = %s", [connection.ops.adapt_datetimefield_value(timezone.now()), unit_pk, batch_id])
        row = cursor.fetchone()
    if row is None:
        raise Unit.DoesNotExist(f"unit pk {unit_pk}")
    locked = unit_from_row(row[:len(UNIT_REQUEST_FIELDS)])
    found = row[len(UNIT_REQUEST_FIELDS):]
    return locked, _batch_from(locked, batch_id, None if found[0] is None else found)


def _batch_from(unit: Unit, batch_id: str, row) -> JournalBatch | None:
    return None if row is None else JournalBatch(unit=unit, epoch=unit.journal_epoch, batch_id=batch_id,
                                                 last_seq=row[0], last_hash=row[1], ingested_at=row[2])


def _ingest_locked(unit: Unit, body: dict, charges: list[tuple], document: bytes) -> tuple[dict, int | None]:
    """The receipt, and the id of the upload's pending charges row (None without a charge)."""
    first, last = body["first_seq"], body["last_seq"]
    if first > unit.last_seq + 1 and last >= first:
        raise _GapRefused(f"batch {body['batch_id']} starts at seq {first} but the office has up to seq "
                          f"{unit.last_seq}: entries {unit.last_seq + 1}..{first - 1} missing")
    # the batch's start must chain onto what the office holds
    if first - 1 == unit.last_seq:
        anchor = unit.last_hash
    elif first - 1 == 0:
        anchor = "0" * 64
    else:
        anchor = stored_hashes(unit.pk, unit.journal_epoch, first - 1, first - 1).get(first - 1)
    if anchor != body["prev_hash"]:
        raise _OtherJournal(f"body.prev_hash: does not continue this unit's journal as the office holds it at "
                            f"seq {first - 1}")
    entries = body["entries"]
    held_count = max(0, unit.last_seq - first + 1)  # seqs run first, first + 1, ... (parse_batch checked)
    overlap, new = entries[:held_count], entries[held_count:]
    if overlap:
        held = stored_hashes(unit.pk, unit.journal_epoch, overlap[0]["seq"], overlap[-1]["seq"])
        for e in overlap:
            if held.get(e["seq"]) != e["hash"]:
                raise _OtherJournal(f"body.entries: seq {e['seq']} differs from the entry already ingested "
                                    "(chain mismatch)")
    new_charges = [row for row in charges if row[0] > unit.last_seq] if overlap else charges
    _insert_charges(unit.pk, unit.journal_epoch, new_charges)
    if new:
        unit.last_seq, unit.last_hash = new[-1]["seq"], new[-1]["hash"]
        unit.gap = unit.refused = ""
    batch = JournalBatch(unit=unit, epoch=unit.journal_epoch, batch_id=body["batch_id"], first_seq=first,
                         last_seq=last, last_hash=body["last_hash"], ingested_at=round(time.time(), 6),
                         entries=len(new))
    pending_id = _record_batch(batch, unit, _pending_charges(new_charges), document)
    return receipt_for(unit, batch), pending_id


_CHARGE_ROW = ("seq", "ts_us", "kind", "employee_id", "item", "charged_cents")  # as parse_batch returns them
_CHARGE_COLUMNS = ("unit_id", "epoch", *_CHARGE_ROW)
_EMPLOYEE, _CHARGE = _CHARGE_ROW.index("employee_id"), _CHARGE_ROW.index("charged_cents")


def _insert_charges(unit_pk: int, epoch: int, charges: list[tuple]) -> None:
    """The new charges in one statement: COPY on PostgreSQL (binary: no integer printed as text by psycopg and
    parsed back by the server), one prepared INSERT on SQLite. The other entries are not rows: they are in
    the batch's document (`journal_store`)."""
    if not charges:
        return
    head = (unit_pk, epoch)
    rows = [head + values for values in charges]
    table, columns = Charge._meta.db_table, ", ".join(_CHARGE_COLUMNS)
    with hot_cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_charge_column_types())
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(_CHARGE_COLUMNS))})",
                               rows)


_column_types: list[str] = []


def _charge_column_types() -> list[str]:
    """The charges' column types as binary COPY needs them exactly (an int4 column refuses an int8 value)."""
    if not _column_types:
        fields = {field.column: field for field in Charge._meta.concrete_fields}
        _column_types[:] = [fields[name].db_type(connection).split("(")[0] for name in _CHARGE_COLUMNS]
    return _column_types


def _pending_charges(charges: list[tuple]) -> str | None:
    """The new charges per employee as the JSON of one pending row, None without a charge. One new row per
    upload (same transaction as the entries), so two units' uploads never wait on each other: a running total
    per employee updated here made every upload wait for the one before it to commit (most uploads touch most
    employees): under 50 concurrent units that queue, not the CPU, set the pace."""
    sums: dict[str, int] = {}
    for values in charges:
        employee_id, charge = values[_EMPLOYEE], values[_CHARGE]
        if employee_id:
            sums[employee_id] = sums.get(employee_id, 0) + charge
    if not sums:
        return None
    return _fast_dumps(sums).decode() if _fast_dumps is not None else json.dumps(sums, separators=(",", ":"))


def _record_batch(batch: JournalBatch, unit: Unit, charges: str | None, document: bytes) -> int | None:
    """The batch row (its document: the upload as received), the unit's journal position and the pending
    charges (their row's id returned): plain statements (the ORM's building cost more than their execution),
    on PostgreSQL one round trip (SQLite has no INSERT in WITH)."""
    insert_batch = (f"INSERT INTO {JournalBatch._meta.db_table} (unit_id, epoch, batch_id, first_seq, last_seq, "
                    "last_hash, ingested_at, entries, document) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")
    update_unit = f"UPDATE {Unit._meta.db_table} SET last_seq = %s, last_hash = %s, gap = %s, refused = %s WHERE id = %s"
    insert_pending = (f"INSERT INTO {ChargePending._meta.db_table} (charges) VALUES (%s{'::jsonb' if connection.vendor == 'postgresql' else ''}) "
                      "RETURNING id")
    batch_values = [unit.pk, batch.epoch, batch.batch_id, batch.first_seq, batch.last_seq, batch.last_hash,
                    batch.ingested_at, batch.entries, bytes(document)]
    unit_values = [unit.last_seq, unit.last_hash, unit.gap, unit.refused, unit.pk]
    with hot_cursor() as cursor:
        if connection.vendor == "postgresql":
            if charges is None:
                cursor.execute(f"WITH b AS ({insert_batch}) {update_unit}", batch_values + unit_values)
                return None
            cursor.execute(f"WITH b AS ({insert_batch}), u AS ({update_unit}) {insert_pending}",
                           batch_values + unit_values + [charges])
            return cursor.fetchone()[0]
        cursor.execute(insert_batch, batch_values)
        cursor.execute(update_unit, unit_values)
        if charges is None:
            return None
        cursor.execute(insert_pending, [charges])
        return cursor.fetchone()[0]


_FOLD_LOCK = 0x766E_6664  # "vnfd": the PostgreSQL advisory lock of a fold in progress
FOLD_EVERY_UPLOADS = 10  # office-wide: the upload whose pending row's id is a multiple of this folds (after its
# commit), so readers add up about this many pending rows at most and a fold (the running totals of every employee
# the uploads since the last one touched: most of them) is paid once per this many uploads. A fold every 0.2 s in
# each process (before) ran ~20 times a second under load, a fold per one or two uploads.


def fold_pending_charges() -> None:
    """Move the pending charges into the running totals, in one transaction. On PostgreSQL one process folds
    at a time and one that finds a fold running skips it (the rows wait for the next fold): an upload never
    waits for a fold. Readers count each charge exactly once before, during and after (`charged_by_employee`).
    On PostgreSQL the fold is one statement the database runs on its own (no JSON read into Python): under
    load the folds keep up, so every bundle's sum of the pending rows stays short."""
    pending, totals = ChargePending._meta.db_table, ChargeTotal._meta.db_table
    if connection.vendor == "postgresql":
        with hot_cursor() as cursor:  # one statement, one transaction: the lock, the rows moved, the sums added
            cursor.execute(
                f"WITH fold AS (SELECT pg_try_advisory_xact_lock(%s) AS mine), "
                f"moved AS (DELETE FROM {pending} WHERE (SELECT mine FROM fold) RETURNING charges), "
                f"sums AS (SELECT p.key AS employee_id, sum(p.value::bigint) AS cents FROM moved, "
                "jsonb_each_text(moved.charges) p GROUP BY p.key) "
                f"INSERT INTO {totals} (employee_id, charged_cents) SELECT employee_id, cents FROM sums "
                f"ORDER BY employee_id ON CONFLICT (employee_id) DO UPDATE SET charged_cents = "
                f"{totals}.charged_cents + excluded.charged_cents", [_FOLD_LOCK])
        return
    with transaction.atomic():
        rows = list(ChargePending.objects.order_by("id").values_list("id", "charges"))
        if not rows:
            return
        sums: dict[str, int] = {}
        for _, charges in rows:  # SQLite's JSON column: text, or already read as a dict by Django
            for employee_id, cents in (json.loads(charges) if isinstance(charges, str) else charges).items():
                sums[employee_id] = sums.get(employee_id, 0) + cents
        ordered = sorted(sums.items())
        with hot_cursor() as cursor:
            for start in range(0, len(ordered), 400):  # one statement per chunk: one round trip, not one per row
                chunk = ordered[start:start + 400]
                cursor.execute(
                    f"INSERT INTO {totals} (employee_id, charged_cents) VALUES {', '.join(['(%s, %s)'] * len(chunk))} "
                    f"ON CONFLICT (employee_id) DO UPDATE SET charged_cents = {totals}.charged_cents + "
                    "excluded.charged_cents", [value for row in chunk for value in row])
        ChargePending.objects.filter(id__in=[pk for pk, _ in rows]).delete()


class _OtherJournal(UnitRequestRefused):
    """The batch is not this unit's journal as the office holds it: flagged on the unit. After a reinstall
    (a fresh journal from seq 1) a technician accepts the new journal on the unit's page."""

    def __init__(self, why: str):
        super().__init__(409, f"{why}; if the unit was reinstalled with a fresh journal, a technician accepts "
                              "it on the unit's page in the office (\"unit reinstalled: accept a new journal\")")
        self.why = why


class _GapRefused(UnitRequestRefused):
    def __init__(self, gap: str):
        super().__init__(409, f"journal gap: {gap}; upload the missing entries first")
        self.gap = gap
