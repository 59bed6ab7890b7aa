"""The charging journal: append-only, hash-chained, durable before the vending board hears of it.

Every step of a purchase is one entry (session_begun, vend_approved,
vend_succeeded = the charge, vend_voided, outcome_unknown, review_settled).
Each entry's hash is sha256(previous hash + canonical JSON of the entry), so a
changed, deleted or reordered row breaks the chain at that row; the head table
records the last seq/hash so a truncated tail is caught too. Each append is its
own ``BEGIN IMMEDIATE ... COMMIT`` on the WAL db opened with synchronous=FULL:
when ``approve()`` returns the approval survives a power cut.

Charges are summed only from chained rows. The one derived table, journal_open,
just finds the sessions still in flight quickly; verify cross-checks it and it
is rebuilt from the chain when missing. Verification lives in journal_verify.py,
the signed export for the nightly sync in journal_export.py.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import JournalCorrupt, JournalError, JournalRefused

if TYPE_CHECKING:
    from .journal_verify import VerifyReport

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
_COLUMNS = "seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail, prev_hash, hash"


def canonical_entry(seq, ts_us, kind, session_id, employee_id, item, amount_cents, detail) -> bytes:
    """The bytes an entry's hash covers: sorted-key compact JSON, so any reader can recompute it."""
    return json.dumps(
        {"seq": seq, "ts_us": ts_us, "kind": kind, "session_id": session_id, "employee_id": employee_id,
         "item": item, "amount_cents": amount_cents, "detail": detail},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    ).encode("utf-8")


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


class Journal:
    """The charging journal on the unit's one db connection (see storage.open_db)."""

    def __init__(self, conn: sqlite3.Connection, clock=time.time):
        self.conn = conn
        self._clock = clock
        self._lock = threading.RLock()
        self._owns_conn = False
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
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal_open'").fetchone():
                        for statement in _OPEN_INDEX_SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        self._rebuild_open_index()
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot set up the charging journal: {exc}") from None

    @classmethod
    def open(cls, state_dir: Path | str, clock=time.time) -> "Journal":
        """A journal owning its own connection to <state_dir>/unit.db (closed by close())."""
        from .storage import open_db

        conn = open_db(state_dir)
        try:
            journal = cls(conn, clock=clock)
        except BaseException:
            conn.close()
            raise
        journal._owns_conn = True
        return journal

    def close(self) -> None:
        if self._owns_conn:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- appending -----------------------------------------------------------
    def _append(self, kind: str, session_id: str, decide) -> Entry:
        """Append one entry in its own durable transaction.

        ``decide(entries_of_session)`` runs inside the transaction and returns either an
        existing Entry (an idempotent repeat: nothing written) or a dict of the new entry's
        fields (employee_id, item, amount_cents, detail); it raises JournalRefused to refuse.
        """
        with self._lock:
            if self.conn.in_transaction:
                raise JournalError("journal append inside another transaction would not be durable on return")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write the charging journal: {exc}") from None
            try:
                decided = decide(self._session_entries(session_id))
                if isinstance(decided, Entry):
                    self.conn.execute("ROLLBACK")
                    return decided
                head = self.conn.execute("SELECT seq, hash FROM journal_head WHERE id = 1").fetchone()
                last = self.conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
                if head is None or tuple(head) != (tuple(last) if last else (0, GENESIS_HASH)):
                    raise JournalCorrupt(
                        f"journal head {tuple(head) if head else 'missing'} does not match the last entry "
                        f"{tuple(last) if last else 'none'}; nothing written (run `vendor-node journal verify`)")
                seq = head[0] + 1
                ts_us = int(round(self._clock() * 1e6))
                fields = (decided.get("employee_id"), decided.get("item"), decided.get("amount_cents"),
                          decided.get("detail"))
                digest = chain_hash(head[1], canonical_entry(seq, ts_us, kind, session_id, *fields))
                entry = Entry(seq, ts_us, kind, session_id, *fields, head[1], digest)
                self.conn.execute(f"INSERT INTO journal ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                  tuple(entry.as_dict().values()))
                self.conn.execute("UPDATE journal_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
                self._update_open_index(entry)
                self.conn.execute("COMMIT")
                return entry
            except BaseException as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JournalError(f"cannot write the charging journal: {exc}") from None
                raise

    def _update_open_index(self, entry: Entry) -> None:
        if entry.kind == SESSION_BEGUN:
            self.conn.execute("INSERT INTO journal_open VALUES (?, 'begun', ?)", (entry.session_id, entry.seq))
        elif entry.kind == VEND_APPROVED:
            self.conn.execute("UPDATE journal_open SET state = 'approved', seq = ? WHERE session_id = ?",
                              (entry.seq, entry.session_id))
        elif entry.kind == OUTCOME_UNKNOWN:
            self.conn.execute("UPDATE journal_open SET state = 'unknown' WHERE session_id = ?", (entry.session_id,))
        else:  # succeeded, voided, review_settled: nothing left open
            self.conn.execute("DELETE FROM journal_open WHERE session_id = ?", (entry.session_id,))

    def _rebuild_open_index(self) -> None:
        """Recompute journal_open from the chain (inside the caller's transaction)."""
        self.conn.execute("DELETE FROM journal_open")
        for row in self.conn.execute(f"SELECT {_COLUMNS} FROM journal ORDER BY seq").fetchall():
            self._update_open_index(Entry(*row))

    def open_index(self) -> dict[str, tuple[str, int]]:
        """session -> (state, seq) as the derived index holds it (verify compares it with the chain)."""
        return {r[0]: (r[1], r[2]) for r in self.conn.execute("SELECT session_id, state, seq FROM journal_open")}

    def _session_entries(self, session_id) -> list[Entry]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM journal WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()
        return [Entry(*r) for r in rows]

    @staticmethod
    def _state(session_id, entries) -> tuple[Entry | None, Entry | None]:
        """(approval, outcome) of a known session; JournalRefused for an unknown one."""
        if not entries:
            raise JournalRefused(f"session {session_id!r} is unknown to the journal; nothing written")
        approval = next((e for e in entries if e.kind == VEND_APPROVED), None)
        outcome = next((e for e in entries if e.kind in OUTCOMES), None)
        return approval, outcome

    @staticmethod
    def _closed(session_id, outcome, what) -> JournalRefused:
        return JournalRefused(f"session {session_id} is already closed ({outcome.kind}"
                              f"{' ' + outcome.detail if outcome.detail else ''} at seq {outcome.seq}); "
                              f"{what} not written")

    # --- the purchase steps ------------------------------------------------------
    def begin_session(self) -> str:
        """A new session id, journaled (a hand was recognised or the board opened a session)."""
        session_id = uuid.uuid4().hex
        self._append(SESSION_BEGUN, session_id, lambda entries: {})
        return session_id

    def approve(self, session_id: str, employee_id: str, item, amount_cents: int) -> Entry:
        """Record the approval, committed (fsync'd) before returning: only then tell the board."""
        if not isinstance(employee_id, str) or not employee_id:
            raise JournalRefused(f"approve: employee_id must be a non-empty string, got {employee_id!r}")
        if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
            raise JournalRefused(f"approve: amount_cents must be a positive whole number of cents, "
                                 f"got {amount_cents!r}")
        if item is None or isinstance(item, bool) or not isinstance(item, (str, int)) or str(item) == "":
            raise JournalRefused(f"approve: item must be a non-empty string or number, got {item!r}")
        item = str(item)

        def decide(entries):
            approval, outcome = self._state(session_id, entries)
            if outcome is not None:
                raise self._closed(session_id, outcome, "approval")
            if approval is not None:
                if (approval.employee_id, approval.item, approval.amount_cents) == (employee_id, item, amount_cents):
                    return approval
                raise JournalRefused(f"session {session_id} already has a different approval (seq "
                                     f"{approval.seq}); one vend per session, nothing written")
            return {"employee_id": employee_id, "item": item, "amount_cents": amount_cents}

        return self._append(VEND_APPROVED, session_id, decide)

    def succeed(self, session_id: str) -> Entry:
        """The charge, for the approved amount. A repeat returns the existing charge, never a second one."""
        def decide(entries):
            approval, outcome = self._state(session_id, entries)
            if outcome is not None and outcome.kind == VEND_SUCCEEDED:
                return outcome
            if outcome is not None:
                raise self._closed(session_id, outcome, "charge")
            if approval is None:
                raise JournalRefused(f"session {session_id} has no approval; no charge written")
            return {"employee_id": approval.employee_id, "item": approval.item,
                    "amount_cents": approval.amount_cents}

        return self._append(VEND_SUCCEEDED, session_id, decide)

    def void(self, session_id: str, reason: str) -> Entry:
        """Close a session without a charge: the vend failed, was cancelled, timed out or was refused."""
        if reason not in VOID_REASONS:
            raise JournalRefused(f"void: reason must be one of {', '.join(VOID_REASONS)}, got {reason!r}")

        def decide(entries):
            approval, outcome = self._state(session_id, entries)
            if outcome is not None and outcome.kind == VEND_VOIDED:
                return outcome
            if outcome is not None:
                raise self._closed(session_id, outcome, "void")
            fields = {"detail": reason}
            if approval is not None:
                fields.update(employee_id=approval.employee_id, item=approval.item)
            return fields

        return self._append(VEND_VOIDED, session_id, decide)

    def mark_outcome_unknown(self, session_id: str) -> Entry:
        """After a power cut the board could not say whether the snack dropped: no charge, held for review."""
        def decide(entries):
            approval, outcome = self._state(session_id, entries)
            if outcome is not None and outcome.kind == OUTCOME_UNKNOWN:
                return outcome
            if outcome is not None:
                raise self._closed(session_id, outcome, "outcome_unknown")
            if approval is None:
                raise JournalRefused(f"session {session_id} has no approval, so nothing can have dropped; "
                                     "void it ('interrupted') instead")
            return {"employee_id": approval.employee_id, "item": approval.item,
                    "amount_cents": approval.amount_cents}

        return self._append(OUTCOME_UNKNOWN, session_id, decide)

    def settle_review(self, session_id: str, charged: bool, note: str = "") -> Entry:
        """A technician's verdict on an outcome_unknown session: charge the approved amount, or not."""
        def decide(entries):
            _, outcome = self._state(session_id, entries)
            done = next((e for e in entries if e.kind == REVIEW_SETTLED), None)
            if outcome is None or outcome.kind != OUTCOME_UNKNOWN:
                raise JournalRefused(f"session {session_id} is not marked outcome_unknown; nothing to review")
            if done is not None:
                if (done.amount_cents > 0) == charged:
                    return done
                raise JournalRefused(f"session {session_id} was already reviewed at seq {done.seq}; "
                                     "nothing written")
            return {"employee_id": outcome.employee_id, "item": outcome.item,
                    "amount_cents": outcome.amount_cents if charged else 0,
                    "detail": ("charged" if charged else "not charged") + (f": {note}" if note else "")}

        return self._append(REVIEW_SETTLED, session_id, decide)

    # --- recovery ----------------------------------------------------------------
    def _open_with_state(self, state: str) -> list[Approval]:
        rows = self.conn.execute(
            "SELECT j.session_id, j.employee_id, j.item, j.amount_cents, j.ts_us, j.seq FROM journal_open o "
            "JOIN journal j ON j.seq = o.seq WHERE o.state = ? ORDER BY o.seq", (state,)).fetchall()
        return [Approval(r[0], r[1], r[2], r[3], r[4] / 1e6, r[5]) for r in rows]

    def open_approvals(self) -> list[Approval]:
        """Approvals with no outcome (the power went at the board): settle each from the board's report."""
        return self._open_with_state("approved")

    def open_unapproved_sessions(self) -> list[str]:
        """Sessions begun but neither approved nor closed (cut before approval)."""
        return [r[0] for r in self.conn.execute(
            "SELECT session_id FROM journal_open WHERE state = 'begun' ORDER BY seq")]

    def void_interrupted_sessions(self) -> int:
        """At start-up: close sessions cut before any approval (nothing can have dropped)."""
        sessions = self.open_unapproved_sessions()
        for session_id in sessions:
            self.void(session_id, "interrupted")
        return len(sessions)

    def unknown_outcomes(self) -> list[Approval]:
        """Sessions marked outcome_unknown still awaiting a technician's review."""
        return self._open_with_state("unknown")

    def session_entries(self, session_id: str) -> list[Entry]:
        return self._session_entries(session_id)

    # --- money ---------------------------------------------------------------------
    def charged_cents(self, employee_id: str, since: float) -> int:
        """Charges (vend succeeded, or charged on review) of one employee at or after ``since``."""
        row = self.conn.execute(
            f"SELECT COALESCE(SUM(amount_cents), 0) FROM journal WHERE employee_id = ? AND ts_us >= ? "
            f"AND {_CHARGE_SQL}", (employee_id, int(since * 1e6))).fetchone()
        return row[0]

    def charged_today_cents(self, employee_id: str, day_start: float) -> int:
        return self.charged_cents(employee_id, day_start)

    def committed_cents(self, employee_id: str, since: float) -> int:
        """What authorization must count: charges since ``since``, every approval still in flight (it
        will be charged now, whenever it was approved) and outcome_unknown approvals since ``since``."""
        row = self.conn.execute(
            "SELECT COALESCE(SUM(j.amount_cents), 0) FROM journal_open o JOIN journal j ON j.seq = o.seq "
            "WHERE j.employee_id = ? AND (o.state = 'approved' OR (o.state = 'unknown' AND j.ts_us >= ?))",
            (employee_id, int(since * 1e6))).fetchone()
        return self.charged_cents(employee_id, since) + row[0]

    def unsynced_total_cents(self) -> int:
        """All charges the back office has not acknowledged yet (the unit's offline exposure)."""
        row = self.conn.execute(
            f"SELECT COALESCE(SUM(amount_cents), 0) FROM journal WHERE seq > "
            f"(SELECT uploaded_upto_seq FROM journal_sync WHERE id = 1) AND {_CHARGE_SQL}").fetchone()
        return row[0]

    # --- sync watermark ----------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        row = self.conn.execute("SELECT seq, hash FROM journal_head WHERE id = 1").fetchone()
        if row is None:
            raise JournalCorrupt("the journal head record is missing; run `vendor-node journal verify`")
        return row[0], row[1]

    def uploaded_upto_seq(self) -> int:
        return self.conn.execute("SELECT uploaded_upto_seq FROM journal_sync WHERE id = 1").fetchone()[0]

    def entries(self, after_seq: int = 0, upto_seq: int | None = None) -> list[Entry]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM journal WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after_seq, upto_seq if upto_seq is not None else 2 ** 62)).fetchall()
        return [Entry(*r) for r in rows]

    def mark_uploaded(self, upto_seq: int) -> int:
        """The back office holds every entry up to ``upto_seq``; returns the new watermark (never moves back)."""
        if isinstance(upto_seq, bool) or not isinstance(upto_seq, int) or upto_seq < 0:
            raise JournalRefused(f"mark_uploaded: upto_seq must be a whole number >= 0, got {upto_seq!r}")
        with self._lock:
            head_seq, _ = self.head()
            if upto_seq > head_seq:
                raise JournalRefused(f"mark_uploaded: seq {upto_seq} is past the last entry (seq {head_seq}); "
                                     "nothing changed")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute("UPDATE journal_sync SET uploaded_upto_seq = MAX(uploaded_upto_seq, ?) "
                                  "WHERE id = 1", (upto_seq,))
                # a pending batch that overlaps what is now uploaded is dropped: the next export starts after it
                self.conn.execute("UPDATE journal_sync SET pending_batch_id = NULL, pending_first_seq = NULL, "
                                  "pending_last_seq = NULL, pending_created_us = NULL "
                                  "WHERE id = 1 AND pending_first_seq <= uploaded_upto_seq")
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise JournalError(f"cannot record the upload: {exc}") from None
            return self.uploaded_upto_seq()

    def export(self, out_path, signing_key, unit_id: str = ""):
        """Write the not-yet-uploaded entries as one signed batch (see journal_export.export_batch)."""
        from .journal_export import export_batch

        return export_batch(self, out_path, signing_key, unit_id)

    # --- verification ------------------------------------------------------------------
    def verify(self) -> "VerifyReport":
        """Walk the whole chain; a VerifyReport whose problems name each bad seq and what differs."""
        from .journal_verify import verify_journal

        return verify_journal(self)

    def check(self) -> None:
        """Raise JournalCorrupt naming the first bad entry unless the whole chain verifies."""
        report = self.verify()
        if not report.ok:
            raise JournalCorrupt(str(report))


# --- benchmark helper (used by `vendor-node bench accounts` and `journal bench`) -------------
def bench_journal_append(n: int = 1000, authorize=None, state_dir: Path | str | None = None) -> dict:
    """Time ``n`` purchases on a real WAL/synchronous=FULL db: approve alone (the durable append),
    authorize+approve when ``authorize(employee_id, price_cents)`` is given, and succeed.
    Returns milliseconds: {"approve": {"p50","p95","max"}, "authorize_approve": ..., "succeed": ...}."""
    import statistics
    import tempfile

    def summary(samples):
        samples = sorted(samples)
        return {"p50": statistics.median(samples), "p95": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
                "max": samples[-1], "n": len(samples)}

    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=state_dir) as tmp:
        journal = Journal.open(tmp)
        try:
            approve_ms, total_ms, succeed_ms = [], [], []
            for i in range(n):
                employee = f"bench-{i % 50}"
                session_id = journal.begin_session()
                t0 = time.perf_counter()
                if authorize is not None:
                    authorize(employee, 150)
                t1 = time.perf_counter()
                journal.approve(session_id, employee, "A1", 150)
                t2 = time.perf_counter()
                journal.succeed(session_id)
                t3 = time.perf_counter()
                approve_ms.append((t2 - t1) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
                succeed_ms.append((t3 - t2) * 1e3)
        finally:
            journal.close()
    return {"approve": summary(approve_ms), "authorize_approve": summary(total_ms), "succeed": summary(succeed_ms)}
