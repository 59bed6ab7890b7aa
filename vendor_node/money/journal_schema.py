"""The charging journal's format: entry kinds, tables, the hash chain, and the derived open index.

An entry's hash is sha256(previous hash + canonical JSON of the entry), so a
changed, deleted or reordered row breaks the chain at that row (journal_verify
walks it). The one derived table, journal_open, only finds the sessions still in
flight quickly; it is kept in each append's transaction and rebuilt from the
chain whenever it is missing. Appending and the queries live in journal.py.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass

from ..errors import JournalError
from .storage import transaction

GENESIS_HASH = "0" * 64

SESSION_BEGUN = "session_begun"
VEND_APPROVED = "vend_approved"
VEND_SUCCEEDED = "vend_succeeded"
VEND_VOIDED = "vend_voided"
OUTCOME_UNKNOWN = "outcome_unknown"
REVIEW_SETTLED = "review_settled"  # a technician's verdict on an outcome_unknown session
KINDS = (SESSION_BEGUN, VEND_APPROVED, VEND_SUCCEEDED, VEND_VOIDED, OUTCOME_UNKNOWN, REVIEW_SETTLED)
OUTCOMES = (VEND_SUCCEEDED, VEND_VOIDED, OUTCOME_UNKNOWN)  # exactly one per session
VOID_REASONS = ("failed", "cancelled", "timeout", "refused", "interrupted")
_CHARGE_SQL = f"(kind = '{VEND_SUCCEEDED}' OR (kind = '{REVIEW_SETTLED}' AND amount_cents > 0))"

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    session_id TEXT NOT NULL,
    employee_id TEXT,
    item TEXT,
    amount_cents INTEGER,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_session ON journal(session_id);
CREATE INDEX IF NOT EXISTS journal_by_employee ON journal(employee_id, kind, ts_us);
CREATE TABLE IF NOT EXISTS journal_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal_sync (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    uploaded_upto_seq INTEGER NOT NULL,
    pending_batch_id TEXT, pending_first_seq INTEGER, pending_last_seq INTEGER, pending_created_us INTEGER
);
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
    BEGIN SELECT RAISE(ABORT, 'the charging journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
    BEGIN SELECT RAISE(ABORT, 'the charging journal is append-only'); END;
INSERT OR IGNORE INTO journal_head VALUES (1, 0, '{GENESIS_HASH}');
INSERT OR IGNORE INTO journal_sync (id, uploaded_upto_seq) VALUES (1, 0);
COMMIT;
"""
# Derived, not money: the sessions still open ('begun', 'approved') or awaiting review ('unknown'),
# with the seq of their begin/approval, so recovery and every authorization find them without
# scanning the whole journal. Kept in the same transaction as each append; verify cross-checks it
# against the chain and it is rebuilt from the chain whenever it is missing.
_OPEN_INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_open (session_id TEXT PRIMARY KEY, state TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS journal_open_by_state ON journal_open(state, seq);
"""
# Derived, not money: one row per charge with running totals (the employee's and the unit's, up to and
# including that charge), so funds, day caps and the unsynced total are index seeks, flat however long
# the history. Kept in the same transaction as each append; rebuilt from the (verified) chain at every
# start-up and whenever it is missing, so a hand-edited total never outlives a restart.
_CHARGE_TOTALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_charges (
    seq INTEGER PRIMARY KEY, employee_id TEXT NOT NULL, ts_us INTEGER NOT NULL, amount_cents INTEGER NOT NULL,
    employee_total INTEGER NOT NULL, unit_total INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_charges_by_employee ON journal_charges(employee_id, seq);
CREATE INDEX IF NOT EXISTS journal_charges_by_day ON journal_charges(employee_id, ts_us);
"""
_COLUMNS = "seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail, prev_hash, hash"


def is_charge(entry) -> bool:
    """The entries that charge money: a vend success, or a review that decided "charged"."""
    return entry.kind == VEND_SUCCEEDED or (entry.kind == REVIEW_SETTLED and (entry.amount_cents or 0) > 0)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_STRING = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) quotes a str with
_SORTED = '{"amount_cents":%s,"detail":%s,"employee_id":%s,"item":%s,"kind":%s,"seq":%s,"session_id":%s,"ts_us":%s}'


class _NotPlain(Exception):
    """A value canonical_entry leaves to json.dumps (a float or bool never comes from a unit, but may be passed)."""


def _scalar(value) -> str:
    kind = type(value)
    if kind is str:
        return _STRING(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    raise _NotPlain


def canonical_entry(seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail) -> bytes:
    """The bytes an entry's hash covers: sorted-key compact JSON, exactly ``json.dumps(entry, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``, so any reader can recompute it. Written out for the usual
    types (the office checks 600 entries per upload; json.dumps builds an encoder per call), json.dumps for
    any other."""
    try:
        return (_SORTED % tuple(map(_scalar, (amount_cents, detail, employee_id, item, kind, seq, session_id,
                                              ts_us)))).encode("utf-8")
    except _NotPlain:
        return _CANONICAL.encode({"seq": seq, "ts_us": ts_us, "kind": kind, "session_id": session_id,
                                  "employee_id": employee_id, "item": item, "amount_cents": amount_cents,
                                  "detail": detail}).encode("utf-8")


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    ts_us: int
    kind: str
    session_id: str
    employee_id: str | None
    item: str | None
    amount_cents: int | None
    detail: str | None
    prev_hash: str
    hash: str

    @property
    def ts(self) -> float:
        return self.ts_us / 1e6

    def computed_hash(self) -> str:
        return chain_hash(self.prev_hash, canonical_entry(
            self.seq, self.ts_us, self.kind, self.session_id, self.employee_id, self.item,
            self.amount_cents, self.detail))

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in _COLUMNS.split(", ")}


@dataclass(frozen=True)
class Approval:
    """An approval with no outcome yet: after a power cut the board's next report settles it."""

    session_id: str
    employee_id: str
    item: str
    amount_cents: int
    approved_at: float
    seq: int


def set_up_tables(conn: sqlite3.Connection) -> None:
    """Create the journal's tables on first start, and the open index (from the chain) when it is missing."""
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal'").fetchone()
        has_index = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_open'").fetchone()
        if not (exists and has_index):
            if conn.in_transaction:
                raise JournalError("cannot create the journal inside another transaction")
            if not exists:  # first start: everything in one transaction (idempotent if raced)
                conn.executescript(_SCHEMA)
            with transaction(conn, JournalError, "cannot set up the charging journal"):
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal_open'").fetchone():
                    for statement in _OPEN_INDEX_SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    rebuild_open_index(conn)
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal_charges'").fetchone():
            if conn.in_transaction:
                raise JournalError("cannot create the journal's totals inside another transaction")
            with transaction(conn, JournalError, "cannot set up the journal's running totals"):
                rebuild_charge_totals(conn)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot set up the charging journal: {exc}") from None


def update_charge_totals(conn: sqlite3.Connection, entry: Entry) -> None:
    """Add a charge's row with its running totals (inside the append's transaction); other entries add nothing."""
    if not is_charge(entry):
        return
    employee = conn.execute("SELECT employee_total FROM journal_charges WHERE employee_id = ? ORDER BY seq DESC "
                            "LIMIT 1", (entry.employee_id,)).fetchone()
    unit = conn.execute("SELECT unit_total FROM journal_charges ORDER BY seq DESC LIMIT 1").fetchone()
    conn.execute("INSERT INTO journal_charges VALUES (?, ?, ?, ?, ?, ?)",
                 (entry.seq, entry.employee_id, entry.ts_us, entry.amount_cents,
                  (employee[0] if employee else 0) + entry.amount_cents, (unit[0] if unit else 0) + entry.amount_cents))


def rebuild_charge_totals(conn: sqlite3.Connection) -> None:
    """Recompute journal_charges from the chain (inside the caller's transaction): one pass in SQL."""
    for statement in _CHARGE_TOTALS_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("DELETE FROM journal_charges")
    conn.execute(
        "INSERT INTO journal_charges (seq, employee_id, ts_us, amount_cents, employee_total, unit_total) "
        "SELECT seq, employee_id, ts_us, amount_cents, "
        "SUM(amount_cents) OVER (PARTITION BY employee_id ORDER BY seq), SUM(amount_cents) OVER (ORDER BY seq) "
        f"FROM journal WHERE {_CHARGE_SQL}")


def update_open_index(conn: sqlite3.Connection, entry: Entry) -> None:
    """Move ``entry``'s session in journal_open (inside the append's transaction)."""
    if entry.kind == SESSION_BEGUN:
        conn.execute("INSERT INTO journal_open VALUES (?, 'begun', ?)", (entry.session_id, entry.seq))
    elif entry.kind == VEND_APPROVED:
        conn.execute("UPDATE journal_open SET state = 'approved', seq = ? WHERE session_id = ?",
                     (entry.seq, entry.session_id))
    elif entry.kind == OUTCOME_UNKNOWN:
        conn.execute("UPDATE journal_open SET state = 'unknown' WHERE session_id = ?", (entry.session_id,))
    else:  # succeeded, voided, review_settled: nothing left open
        conn.execute("DELETE FROM journal_open WHERE session_id = ?", (entry.session_id,))


def rebuild_open_index(conn: sqlite3.Connection) -> None:
    """Recompute journal_open from the chain (inside the caller's transaction)."""
    conn.execute("DELETE FROM journal_open")
    for row in conn.execute(f"SELECT {_COLUMNS} FROM journal ORDER BY seq").fetchall():
        update_open_index(conn, Entry(*row))
