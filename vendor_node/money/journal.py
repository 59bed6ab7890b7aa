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
is rebuilt from the chain when missing. The entry format, tables and that index
live in journal_schema.py, verification in journal_verify.py, the signed export
for the nightly sync in journal_export.py, the append benchmark in bench/journal.py.
"""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import JournalCorrupt, JournalError, JournalRefused
from .journal_schema import (_COLUMNS, GENESIS_HASH, OUTCOME_UNKNOWN, OUTCOMES,
                             REVIEW_SETTLED, SESSION_BEGUN, VEND_APPROVED, VEND_SUCCEEDED, VEND_VOIDED,
                             VOID_REASONS, Approval, Entry, canonical_entry, chain_hash, rebuild_charge_totals,
                             set_up_tables, update_charge_totals, update_open_index)
from .journal_guard import JournalMark
from .storage import HoldsConnection, open_owning, transaction

if TYPE_CHECKING:
    from .journal_verify import VerifyReport



class Journal(HoldsConnection):
    """The charging journal on the unit's one db connection (see storage.open_db); a context manager."""

    def __init__(self, conn: sqlite3.Connection, clock=time.time):
        self.conn = conn
        self._clock = clock
        self._lock = threading.RLock()
        self._floor: tuple[float, float] | None = None  # (newest entry's time, time.monotonic() then)
        set_up_tables(conn)
        self.mark = JournalMark.beside(conn)  # high-water mark beside unit.db (journal_guard.py)

    def close(self) -> None:
        if self.mark is not None:
            self.mark.close()
        super().close()

    @classmethod
    def open(cls, state_dir: Path | str, clock=time.time) -> "Journal":
        """A journal owning its own connection to <state_dir>/unit.db (closed by close())."""
        return open_owning(state_dir, lambda conn: cls(conn, clock=clock))

    # --- appending -----------------------------------------------------------
    def _append(self, kind: str, session_id: str, decide) -> Entry:
        """Append one entry in its own durable transaction.

        ``decide(entries_of_session)`` runs inside the transaction and returns either an
        existing Entry (an idempotent repeat: nothing written) or a dict of the new entry's
        fields (employee_id, item, amount_cents, detail); it raises JournalRefused to refuse.
        After the COMMIT the entry is noted in the high-water mark file beside the database.
        """
        with self._lock:
            entry, written = self._append_in_transaction(kind, session_id, decide)
            if written and self.mark is not None:
                self.mark.note(entry.seq, entry.hash)
            return entry

    def _append_in_transaction(self, kind: str, session_id: str, decide) -> tuple[Entry, bool]:
        with self._lock, transaction(
                self.conn, JournalError, "cannot write the charging journal",
                nested="journal append inside another transaction would not be durable on return"):
            decided = decide(self._session_entries(session_id))
            if isinstance(decided, Entry):
                self.conn.execute("ROLLBACK")
                return decided, False
            head = self.conn.execute("SELECT seq, hash FROM journal_head WHERE id = 1").fetchone()
            last = self.conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
            if head is None or tuple(head) != (tuple(last) if last else (0, GENESIS_HASH)):
                raise JournalCorrupt(
                    f"journal head {tuple(head) if head else 'missing'} does not match the last entry "
                    f"{tuple(last) if last else 'none'}; nothing written (run `vendor-node journal verify`)")
            seq = head[0] + 1
            ts_us = int(round(self.trusted_now() * 1e6))
            fields = (decided.get("employee_id"), decided.get("item"), decided.get("amount_cents"),
                      decided.get("detail"))
            digest = chain_hash(head[1], canonical_entry(seq, ts_us, kind, session_id, *fields))
            entry = Entry(seq, ts_us, kind, session_id, *fields, head[1], digest)
            self.conn.execute(f"INSERT INTO journal ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                              tuple(entry.as_dict().values()))
            self.conn.execute("UPDATE journal_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
            update_open_index(self.conn, entry)
            update_charge_totals(self.conn, entry)
        self._floor = (ts_us / 1e6, time.monotonic())
        return entry, True

    # --- time that cannot go backwards for money -----------------------------------
    def trusted_now(self) -> float:
        """The time money is judged by: the wall clock, but never earlier than the newest entry plus the time
        that has passed since (counted on the monotonic clock).

        A Pi has no real-time clock: after a reboot without network it restores an older saved time, and a
        clock set back would otherwise reopen a day's cap or make an old bundle young again. Entries are
        stamped with this time, so the journal's times never go backwards either.
        """
        with self._lock:
            if self._floor is None:
                row = self.conn.execute("SELECT ts_us FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
                self._floor = ((row[0] if row else 0) / 1e6, time.monotonic())
            newest, at = self._floor
            return max(self._clock(), newest + (time.monotonic() - at))

    def clock_behind_s(self) -> float:
        """How far the wall clock is behind the trusted time (0 when it is not): a fault worth reporting."""
        return max(0.0, self.trusted_now() - self._clock())

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
        """Charges (vend succeeded, or charged on review) of one employee at or after ``since``: two index seeks
        on the running totals (entries are stamped with the trusted time, so time order is journal order)."""
        latest = self.conn.execute("SELECT employee_total FROM journal_charges WHERE employee_id = ? "
                                   "ORDER BY seq DESC LIMIT 1", (employee_id,)).fetchone()
        if latest is None:
            return 0
        before = self.conn.execute("SELECT employee_total FROM journal_charges WHERE employee_id = ? AND ts_us < ? "
                                   "ORDER BY ts_us DESC, seq DESC LIMIT 1", (employee_id, int(since * 1e6))).fetchone()
        return latest[0] - (before[0] if before else 0)

    def charged_after_seq_cents(self, employee_id: str, after_seq: int) -> int:
        """One employee's charges with seq > ``after_seq``: two index seeks on the running totals."""
        latest = self.conn.execute("SELECT employee_total FROM journal_charges WHERE employee_id = ? "
                                   "ORDER BY seq DESC LIMIT 1", (employee_id,)).fetchone()
        if latest is None:
            return 0
        before = self.conn.execute("SELECT employee_total FROM journal_charges WHERE employee_id = ? AND seq <= ? "
                                   "ORDER BY seq DESC LIMIT 1", (employee_id, after_seq)).fetchone()
        return latest[0] - (before[0] if before else 0)

    def rebuild_totals(self) -> None:
        """Recompute the running totals from the chain (at start-up, after the chain was verified)."""
        with self._lock, transaction(self.conn, JournalError, "cannot rebuild the journal's running totals",
                                     nested="rebuilding totals inside another transaction"):
            rebuild_charge_totals(self.conn)

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
        """All charges the back office has not acknowledged yet (the unit's offline exposure): two index seeks."""
        latest = self.conn.execute("SELECT unit_total FROM journal_charges ORDER BY seq DESC LIMIT 1").fetchone()
        if latest is None:
            return 0
        before = self.conn.execute(
            "SELECT unit_total FROM journal_charges WHERE seq <= (SELECT uploaded_upto_seq FROM journal_sync "
            "WHERE id = 1) ORDER BY seq DESC LIMIT 1").fetchone()
        return latest[0] - (before[0] if before else 0)

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
            with transaction(self.conn, JournalError, "cannot record the upload"):
                self.conn.execute("UPDATE journal_sync SET uploaded_upto_seq = MAX(uploaded_upto_seq, ?) "
                                  "WHERE id = 1", (upto_seq,))
                # a pending batch that overlaps what is now uploaded is dropped: the next export starts after it
                self.conn.execute("UPDATE journal_sync SET pending_batch_id = NULL, pending_first_seq = NULL, "
                                  "pending_last_seq = NULL, pending_created_us = NULL "
                                  "WHERE id = 1 AND pending_first_seq <= uploaded_upto_seq")
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
