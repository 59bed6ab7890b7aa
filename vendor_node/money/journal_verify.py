"""`vendor-node journal verify`: walk the hash chain and say exactly where it breaks.

Besides the chain itself (seq gaps, prev_hash links, each entry's own hash, the
head record that catches a cut-off tail) it checks that every session's history
is possible: one approval, at most one outcome, a charge only for its approval.
A chain can only be valid with such a history if someone rewrote every hash
after it, which the back office's copy of the uploaded batches would expose.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from ..errors import JournalCorrupt
from .journal_schema import (_COLUMNS, GENESIS_HASH, KINDS, OUTCOME_UNKNOWN, OUTCOMES, REVIEW_SETTLED, SESSION_BEGUN,
                             VEND_APPROVED, VEND_SUCCEEDED, Entry)


@dataclass
class VerifyReport:
    entries: int
    head_seq: int
    head_hash: str
    problems: list[tuple[int, str]] = field(default_factory=list)  # (seq, what differs): chain breaks first

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        return self.problems[0][0] if self.problems else None

    def __str__(self) -> str:
        if self.ok:
            return f"journal OK: {self.entries} entries, head seq {self.head_seq} hash {self.head_hash[:16]}"
        lines = [f"journal BROKEN at seq {self.first_bad_seq}: {self.problems[0][1]}"]
        lines += [f"  also seq {seq}: {what}" for seq, what in self.problems[1:]]
        return "\n".join(lines)


def _link_problems(entry: Entry, prev_seq: int, prev_hash: str) -> list[str]:
    """What is wrong with one entry given the one before it (empty if nothing)."""
    differs = []
    if entry.seq != prev_seq + 1:
        differs.append(f"entries seq {prev_seq + 1}..{entry.seq - 1} are missing (deleted)")
    if entry.prev_hash != prev_hash:
        differs.append(f"its prev_hash {entry.prev_hash[:16]} is not the hash of the entry before it "
                       f"(seq {prev_seq}: {prev_hash[:16]}); rows were removed, reordered or rewritten")
    try:
        computed = entry.computed_hash()
    except (ValueError, TypeError) as exc:  # a damaged row: prev_hash not hex, a field of the wrong type
        differs.append(f"the entry is damaged and cannot be hashed ({exc})")
        return differs
    if computed != entry.hash:
        differs.append(f"its contents ({entry.kind}, session {entry.session_id[:12]}, employee "
                       f"{entry.employee_id}, amount_cents {entry.amount_cents}, detail {entry.detail}) "
                       f"hash to {computed[:16]} but the stored hash is {entry.hash[:16]}; "
                       "the entry was changed after it was written")
    if entry.kind not in KINDS:
        differs.append(f"unknown kind {entry.kind!r}")
    return differs


def check_range(journal, after_seq: int, upto_seq: int) -> None:
    """Raise JournalCorrupt unless entries after_seq+1..upto_seq chain from the stored entry at
    after_seq (an export checks only what it ships; `journal verify` walks everything)."""
    if after_seq == 0:
        prev_seq, prev_hash = 0, GENESIS_HASH
    else:
        row = journal.conn.execute("SELECT seq, hash FROM journal WHERE seq = ?", (after_seq,)).fetchone()
        if row is None:
            raise JournalCorrupt(f"journal BROKEN at seq {after_seq}: the entry is missing (deleted)")
        prev_seq, prev_hash = row
    for entry in journal.entries(after_seq, upto_seq):
        differs = _link_problems(entry, prev_seq, prev_hash)
        if differs:
            raise JournalCorrupt(f"journal BROKEN at seq {entry.seq}: {'; '.join(differs)}")
        prev_seq, prev_hash = entry.seq, entry.hash
    if prev_seq != upto_seq:
        raise JournalCorrupt(f"journal BROKEN at seq {prev_seq + 1}: entries seq {prev_seq + 1}..{upto_seq} "
                             "are missing (deleted)")
    head = journal.conn.execute("SELECT seq, hash FROM journal_head WHERE id = 1").fetchone()
    if head is not None and head[0] == upto_seq and head[1] != prev_hash:
        raise JournalCorrupt(f"journal BROKEN at seq {upto_seq}: the head records hash {head[1][:16]} but the "
                             f"entry hashes to {prev_hash[:16]}")


def verify_journal(journal) -> VerifyReport:
    """Walk the whole chain; every problem names its seq and what differs (chain order)."""
    problems: list[tuple[int, str]] = []
    prev_seq, prev_hash, count = 0, GENESIS_HASH, 0
    sessions: dict[str, list[Entry]] = {}
    try:
        for row in journal.conn.execute(f"SELECT {_COLUMNS} FROM journal ORDER BY seq"):
            entry = Entry(*row)
            count += 1
            differs = _link_problems(entry, prev_seq, prev_hash)
            if differs:
                problems.append((entry.seq, "; ".join(differs)))
            sessions.setdefault(entry.session_id, []).append(entry)
            prev_seq, prev_hash = entry.seq, entry.hash
        head = journal.conn.execute("SELECT seq, hash FROM journal_head WHERE id = 1").fetchone()
        index = journal.open_index()
    except sqlite3.DatabaseError as exc:  # the file itself is damaged: say where the readable part ends
        problems.append((prev_seq + 1, f"the database file is damaged after seq {prev_seq} ({exc}); "
                         "restore it from the back office's copy of the uploaded batches"))
        return VerifyReport(count, prev_seq, prev_hash, problems)
    if head is None:
        problems.append((prev_seq + 1, "the journal head record is missing"))
        head = (prev_seq, prev_hash)
    elif tuple(head) != (prev_seq, prev_hash):
        if head[0] > prev_seq:
            what = f"entries seq {prev_seq + 1}..{head[0]} at the end were deleted"
        else:
            what = "entries were added without updating the head"
        problems.append((min(head[0], prev_seq) + 1, f"the head records seq {head[0]} hash {head[1][:16]} "
                         f"but the last entry is seq {prev_seq} hash {prev_hash[:16]}: {what}"))
    problems.extend(_shortened_problems(journal, head[0]))
    # chain breaks first (the tampering itself), then what follows from them or stands alone:
    # impossible session histories and a derived index that disagrees with the chain
    problems.sort(key=lambda p: p[0])
    problems.extend(sorted(_session_problems(sessions) + _open_index_problems(sessions, index),
                           key=lambda p: p[0]))
    return VerifyReport(count, head[0], head[1], problems)


def _session_problems(sessions: dict[str, list[Entry]]) -> list[tuple[int, str]]:
    """Chain-valid but impossible histories: a second charge, a charge without approval, ..."""
    problems = []
    for session_id, entries in sessions.items():
        kinds = [e.kind for e in entries]
        first = entries[0]
        if first.kind != SESSION_BEGUN:
            problems.append((first.seq, f"session {session_id[:12]} starts with {first.kind}, not session_begun"))
        if kinds.count(SESSION_BEGUN) > 1 or kinds.count(VEND_APPROVED) > 1:
            problems.append((entries[-1].seq, f"session {session_id[:12]} was begun or approved twice"))
        outcomes = [e for e in entries if e.kind in OUTCOMES]
        if len(outcomes) > 1:
            problems.append((outcomes[1].seq, f"session {session_id[:12]} has {len(outcomes)} outcomes "
                             f"({', '.join(e.kind for e in outcomes)}): a double charge or contradiction"))
        approval = next((e for e in entries if e.kind == VEND_APPROVED), None)
        for e in entries:
            if e.kind in (VEND_SUCCEEDED, OUTCOME_UNKNOWN) and (
                    approval is None or approval.seq > e.seq
                    or (e.employee_id, e.amount_cents) != (approval.employee_id, approval.amount_cents)):
                problems.append((e.seq, f"session {session_id[:12]}: {e.kind} does not match an earlier approval"))
            if e.kind == REVIEW_SETTLED and (OUTCOME_UNKNOWN not in kinds or kinds.count(REVIEW_SETTLED) > 1):
                problems.append((e.seq, f"session {session_id[:12]}: review without a single outcome_unknown"))
    return problems


def _open_index_problems(sessions: dict[str, list[Entry]], index: dict[str, tuple[str, int]]) -> list[tuple[int, str]]:
    """The derived journal_open table must list exactly the sessions the chain leaves open."""
    expected = {}
    for session_id, entries in sessions.items():
        state = None
        for e in entries:
            if e.kind == SESSION_BEGUN:
                state = ("begun", e.seq)
            elif e.kind == VEND_APPROVED and state is not None:
                state = ("approved", e.seq)
            elif e.kind == OUTCOME_UNKNOWN and state is not None:
                state = ("unknown", state[1])
            else:
                state = None
        if state is not None:
            expected[session_id] = state
    problems = []
    for session_id in sorted(set(expected) | set(index), key=lambda s: (expected.get(s) or index.get(s))[1]):
        if expected.get(session_id) != index.get(session_id):
            seq = (expected.get(session_id) or index.get(session_id))[1]
            problems.append((seq, f"the open-session index says {index.get(session_id)} for session "
                             f"{session_id[:12]} but the chain says {expected.get(session_id)} "
                             "(an open approval could be missed at recovery)"))
    return problems


def _shortened_problems(journal, head_seq: int) -> list[tuple[int, str]]:
    """Committed entries beyond the head, by the high-water mark kept beside the database (journal_guard.py)."""
    mark = getattr(journal, "mark", None)
    if mark is None:
        return []
    try:
        _, _, high_water = mark.read()
    except JournalCorrupt as exc:
        return [(head_seq + 1, str(exc))]
    if head_seq >= high_water:
        return []
    return [(head_seq + 1, f"the journal was SHORTENED: entries up to seq {high_water} were committed but it ends at "
             f"seq {head_seq} (seq {head_seq + 1}..{high_water} lost: a deleted WAL or an older copy of the database)")]
