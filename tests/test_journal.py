"""The charging journal: durable approvals, idempotent outcomes, recovery queries, tamper detection, export."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.money import storage
from vendor_node.errors import JournalCorrupt, JournalError, JournalRefused
from vendor_node.money.journal import (GENESIS_HASH, REVIEW_SETTLED, VEND_SUCCEEDED, VEND_VOIDED,
                                 Journal, canonical_entry, chain_hash)
from vendor_node.bench.journal import bench_journal_append
from vendor_node.money.journal_export import acknowledge_batch, read_batch
from vendor_node.money.storage import open_db


class FakeClock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def journal(tmp_path, clock):
    j = Journal.open(tmp_path / "state", clock=clock)
    yield j
    j.close()


def purchase(journal, employee="e1", amount=150, item="A1", outcome="succeed"):
    session = journal.begin_session()
    journal.approve(session, employee, item, amount)
    if outcome == "succeed":
        journal.succeed(session)
    elif outcome == "void":
        journal.void(session, "failed")
    return session


def head(journal):
    return journal.head()


def tamper(journal, sql, params=()):
    """What someone with the db file can do: drop the append-only triggers and edit rows."""
    conn = journal.conn
    conn.execute("DROP TRIGGER IF EXISTS journal_no_update")
    conn.execute("DROP TRIGGER IF EXISTS journal_no_delete")
    conn.execute(sql, params)


# --- the purchase steps ------------------------------------------------------------
def test_a_purchase_is_chained_and_charged_once(journal):
    session = purchase(journal)
    entries = journal.entries()
    assert [e.kind for e in entries] == ["session_begun", "vend_approved", "vend_succeeded"]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in zip(entries, entries[1:]):
        assert after.prev_hash == before.hash
        assert after.seq == before.seq + 1
    charge = entries[2]
    assert (charge.session_id, charge.employee_id, charge.item, charge.amount_cents) == (session, "e1", "A1", 150)
    assert charge.hash == chain_hash(charge.prev_hash, canonical_entry(
        charge.seq, charge.ts_us, charge.kind, session, "e1", "A1", 150, None))
    assert journal.verify().ok


def test_approval_is_committed_before_approve_returns(tmp_path, journal):
    session = journal.begin_session()
    journal.approve(session, "e1", "A1", 150)
    other = sqlite3.connect(tmp_path / "state" / "unit.db")  # another process's view, e.g. after a power cut
    rows = other.execute("SELECT kind, session_id FROM journal WHERE kind = 'vend_approved'").fetchall()
    other.close()
    assert rows == [("vend_approved", session)]
    assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_succeed_twice_charges_once(journal):
    session = journal.begin_session()
    journal.approve(session, "e1", "A1", 150)
    first = journal.succeed(session)
    again = journal.succeed(session)
    assert again == first
    assert journal.charged_cents("e1", 0) == 150
    assert sum(e.kind == VEND_SUCCEEDED for e in journal.entries()) == 1


def test_repeated_void_and_unknown_are_no_ops(journal):
    s1 = journal.begin_session()
    journal.approve(s1, "e1", "A1", 150)
    assert journal.void(s1, "timeout") == journal.void(s1, "timeout")
    s2 = journal.begin_session()
    journal.approve(s2, "e1", "A1", 150)
    assert journal.mark_outcome_unknown(s2) == journal.mark_outcome_unknown(s2)
    assert len(journal.entries()) == 6


def test_repeating_the_same_approval_is_a_no_op_but_a_different_one_is_refused(journal):
    session = journal.begin_session()
    first = journal.approve(session, "e1", "A1", 150)
    assert journal.approve(session, "e1", "A1", 150) == first
    seq = head(journal)
    with pytest.raises(JournalRefused, match="different approval"):
        journal.approve(session, "e1", "A1", 300)
    assert head(journal) == seq


@pytest.mark.parametrize("call, message", [
    (lambda j, s: j.succeed(s), "already closed"),
    (lambda j, s: j.mark_outcome_unknown(s), "already closed"),
    (lambda j, s: j.approve(s, "e1", "A1", 150), "already closed"),
])
def test_outcome_for_a_closed_session_is_refused_and_nothing_written(journal, call, message):
    session = journal.begin_session()
    journal.approve(session, "e1", "A1", 150)
    journal.void(session, "cancelled")
    before = head(journal)
    with pytest.raises(JournalRefused, match=message):
        call(journal, session)
    assert head(journal) == before
    assert journal.charged_cents("e1", 0) == 0


def test_void_after_charge_is_refused(journal):
    session = purchase(journal)
    before = head(journal)
    with pytest.raises(JournalRefused, match=r"already closed \(vend_succeeded"):
        journal.void(session, "failed")
    assert head(journal) == before
    assert journal.charged_cents("e1", 0) == 150


@pytest.mark.parametrize("call", [
    lambda j: j.succeed("nosuchsession"),
    lambda j: j.void("nosuchsession", "failed"),
    lambda j: j.mark_outcome_unknown("nosuchsession"),
    lambda j: j.approve("nosuchsession", "e1", "A1", 150),
])
def test_unknown_session_is_refused_and_nothing_written(journal, call):
    purchase(journal)
    before = head(journal)
    with pytest.raises(JournalRefused, match="unknown to the journal"):
        call(journal)
    assert head(journal) == before


def test_charge_without_approval_is_refused(journal):
    session = journal.begin_session()
    with pytest.raises(JournalRefused, match="no approval"):
        journal.succeed(session)
    with pytest.raises(JournalRefused, match="void it"):
        journal.mark_outcome_unknown(session)
    assert journal.void(session, "cancelled").kind == VEND_VOIDED


@pytest.mark.parametrize("employee, item, amount, fragment", [
    ("e1", "A1", 0, "amount_cents"),
    ("e1", "A1", -5, "amount_cents"),
    ("e1", "A1", 1.5, "amount_cents"),
    ("e1", "A1", "150", "amount_cents"),
    ("e1", "A1", True, "amount_cents"),
    ("", "A1", 150, "employee_id"),
    (None, "A1", 150, "employee_id"),
    ("e1", None, 150, "item"),
    ("e1", "", 150, "item"),
])
def test_bad_approval_arguments_are_refused(journal, employee, item, amount, fragment):
    session = journal.begin_session()
    before = head(journal)
    with pytest.raises(JournalRefused, match=fragment):
        journal.approve(session, employee, item, amount)
    assert head(journal) == before
    assert journal.open_unapproved_sessions() == [session]


def test_bad_void_reason_is_refused(journal):
    session = journal.begin_session()
    with pytest.raises(JournalRefused, match="reason must be one of"):
        journal.void(session, "because")


def test_append_inside_someone_elses_transaction_is_refused(journal):
    journal.conn.execute("BEGIN")
    try:
        with pytest.raises(JournalError, match="inside another transaction"):
            journal.begin_session()
    finally:
        journal.conn.execute("ROLLBACK")


def test_rows_cannot_be_updated_or_deleted_through_sql(journal):
    purchase(journal)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        journal.conn.execute("UPDATE journal SET amount_cents = 1 WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        journal.conn.execute("DELETE FROM journal WHERE seq = 3")


# --- recovery -------------------------------------------------------------------------
def test_open_approvals_survive_a_restart_and_are_settled_once(tmp_path, clock):
    state = tmp_path / "state"
    with Journal.open(state, clock=clock) as j:
        dropped = j.begin_session()
        j.approve(dropped, "e1", "A1", 150)
        failed = j.begin_session()
        j.approve(failed, "e2", "B2", 200)
        unclear = j.begin_session()
        j.approve(unclear, "e3", "C3", 250)
        cut = j.begin_session()  # power went before approval
    with Journal.open(state, clock=clock) as j:  # "after the power cut"
        assert [a.session_id for a in j.open_approvals()] == [dropped, failed, unclear]
        assert j.open_approvals()[0].amount_cents == 150
        assert j.open_unapproved_sessions() == [cut]
        j.succeed(dropped)
        j.void(failed, "failed")
        j.mark_outcome_unknown(unclear)
        assert j.void_interrupted_sessions() == 1
        assert j.open_approvals() == [] and j.open_unapproved_sessions() == []
        assert [a.session_id for a in j.unknown_outcomes()] == [unclear]
        j.succeed(dropped)  # the board repeats its report: no second charge
        assert j.charged_cents("e1", 0) == 150
        assert j.charged_cents("e3", 0) == 0
        assert j.verify().ok


def test_review_settles_an_unknown_outcome_once(journal):
    session = journal.begin_session()
    journal.approve(session, "e1", "A1", 150)
    journal.mark_outcome_unknown(session)
    assert journal.committed_cents("e1", 0) == 150  # held until reviewed
    entry = journal.settle_review(session, charged=True, note="camera shows the drop")
    assert entry.kind == REVIEW_SETTLED and entry.amount_cents == 150
    assert journal.settle_review(session, charged=True) == entry
    with pytest.raises(JournalRefused, match="already reviewed"):
        journal.settle_review(session, charged=False)
    assert journal.charged_cents("e1", 0) == 150
    assert journal.unknown_outcomes() == []
    other = purchase(journal, outcome="void")
    with pytest.raises(JournalRefused, match="not marked outcome_unknown"):
        journal.settle_review(other, charged=True)
    assert journal.verify().ok


def test_open_index_is_rebuilt_when_missing(tmp_path, clock):
    state = tmp_path / "state"
    with Journal.open(state, clock=clock) as j:
        s = j.begin_session()
        j.approve(s, "e1", "A1", 150)
        j.conn.execute("DROP TABLE journal_open")  # e.g. a db from before the index existed
    with Journal.open(state, clock=clock) as j:
        assert [a.session_id for a in j.open_approvals()] == [s]
        assert j.verify().ok


# --- money queries -----------------------------------------------------------------------
def test_charged_committed_and_unsynced(journal, clock):
    purchase(journal, "e1", 100)
    clock.now += 3600
    since = clock.now
    purchase(journal, "e1", 200)
    purchase(journal, "e1", 400, outcome="void")
    in_flight = journal.begin_session()
    journal.approve(in_flight, "e1", "A1", 50)
    purchase(journal, "e2", 300)
    assert journal.charged_cents("e1", 0) == 300
    assert journal.charged_cents("e1", since) == 200
    assert journal.charged_today_cents("e1", since) == 200
    assert journal.committed_cents("e1", since) == 250
    assert journal.committed_cents("e2", since) == 300
    assert journal.charged_cents("nobody", 0) == 0
    assert journal.unsynced_total_cents() == 600
    journal.mark_uploaded(3)  # the first purchase is uploaded
    assert journal.unsynced_total_cents() == 500
    assert journal.mark_uploaded(1) == 3  # never moves back


@pytest.mark.parametrize("bad", [-1, 10_000, "3", True])
def test_mark_uploaded_refuses_bad_seq(journal, bad):
    purchase(journal)
    with pytest.raises(JournalRefused):
        journal.mark_uploaded(bad)
    assert journal.uploaded_upto_seq() == 0


# --- tampering: verify names the first bad entry -------------------------------------------
@pytest.fixture
def six_purchases(journal):
    for i in range(6):
        purchase(journal, f"e{i % 2}", 100 + i)
    assert journal.verify().ok
    return journal


def test_changed_amount_is_named(six_purchases):
    tamper(six_purchases, "UPDATE journal SET amount_cents = 1 WHERE seq = 8")
    report = six_purchases.verify()
    assert not report.ok and report.first_bad_seq == 8
    assert "amount_cents 1" in report.problems[0][1] and "changed after it was written" in report.problems[0][1]
    assert str(report).startswith("journal BROKEN at seq 8:")


def test_changed_and_rehashed_entry_breaks_the_next_link(six_purchases):
    e = six_purchases.entries(7, 8)[0]
    forged = chain_hash(e.prev_hash, canonical_entry(e.seq, e.ts_us, e.kind, e.session_id, e.employee_id, e.item,
                                                     1, e.detail))
    tamper(six_purchases, "UPDATE journal SET amount_cents = 1, hash = ? WHERE seq = 8", (forged,))
    report = six_purchases.verify()
    assert report.first_bad_seq == 9  # the rewritten row looks fine; the link after it does not
    assert "prev_hash" in report.problems[0][1]
    assert any("does not match an earlier approval" in what for _, what in report.problems)


def test_deleted_row_is_named(six_purchases):
    tamper(six_purchases, "DELETE FROM journal WHERE seq = 5")
    report = six_purchases.verify()
    assert report.first_bad_seq == 6
    assert "seq 5..5 are missing" in report.problems[0][1]


def test_deleted_tail_is_caught_by_the_head(six_purchases):
    tamper(six_purchases, "DELETE FROM journal WHERE seq >= 17")
    report = six_purchases.verify()
    assert report.first_bad_seq == 17
    assert "entries seq 17..18 at the end were deleted" in str(report)


def test_reordered_rows_are_named(six_purchases):
    tamper(six_purchases, "UPDATE journal SET seq = -1 WHERE seq = 4")
    tamper(six_purchases, "UPDATE journal SET seq = 4 WHERE seq = 5")
    tamper(six_purchases, "UPDATE journal SET seq = 5 WHERE seq = -1")
    report = six_purchases.verify()
    assert report.first_bad_seq == 4
    assert "prev_hash" in report.problems[0][1]


def test_missing_head_and_lying_open_index_are_named(six_purchases):
    s = six_purchases.begin_session()
    six_purchases.approve(s, "e1", "A1", 100)
    six_purchases.conn.execute("DELETE FROM journal_open")  # an open approval would be missed at recovery
    report = six_purchases.verify()
    assert "open-session index" in str(report)
    six_purchases.conn.execute("DELETE FROM journal_head")
    assert "head record is missing" in str(six_purchases.verify())


def test_a_broken_journal_refuses_new_entries_and_keeps_what_it_has(six_purchases):
    tamper(six_purchases, "DELETE FROM journal WHERE seq = 18")
    s = six_purchases.conn.execute("SELECT session_id FROM journal WHERE seq = 16").fetchone()[0]
    rows_before = six_purchases.conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
    with pytest.raises(JournalCorrupt, match="does not match the last entry"):
        six_purchases.begin_session()
    with pytest.raises(JournalCorrupt):
        six_purchases.succeed(s)
    assert six_purchases.conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == rows_before
    with pytest.raises(JournalCorrupt, match="BROKEN at seq 18"):
        six_purchases.check()


# --- signed export ---------------------------------------------------------------------------
@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def test_export_is_signed_and_retry_safe_until_acknowledged(tmp_path, journal, key):
    purchase(journal, "e1", 150)
    purchase(journal, "e2", 250, outcome="void")
    info = journal.export(tmp_path / "b1.json", key, unit_id="unit-7")
    assert (info.first_seq, info.last_seq, info.entries, info.charged_cents) == (1, 6, 6, 150)
    body = read_batch(tmp_path / "b1.json", key.public_key())
    assert body["unit_id"] == "unit-7" and body["prev_hash"] == GENESIS_HASH
    assert [e["seq"] for e in body["entries"]] == list(range(1, 7))
    assert body["last_hash"] == journal.head()[1]

    purchase(journal, "e1", 99)  # arrives before the upload is confirmed
    again = journal.export(tmp_path / "b2.json", key, unit_id="unit-7")
    assert again.batch_id == info.batch_id
    assert (tmp_path / "b1.json").read_bytes() == (tmp_path / "b2.json").read_bytes()
    assert journal.unsynced_total_cents() == 249

    assert acknowledge_batch(journal, tmp_path / "b2.json", key.public_key()) == 6
    assert acknowledge_batch(journal, tmp_path / "b1.json", key.public_key()) == 6  # repeat: no-op
    assert journal.unsynced_total_cents() == 99
    nxt = journal.export(tmp_path / "b3.json", key, unit_id="unit-7")
    assert (nxt.first_seq, nxt.last_seq) == (7, 9) and nxt.batch_id != info.batch_id
    assert read_batch(tmp_path / "b3.json", key.public_key())["prev_hash"] == body["last_hash"]


def test_marking_part_of_a_pending_batch_uploaded_restarts_the_next_batch_after_it(tmp_path, journal, key):
    purchase(journal)
    purchase(journal)
    journal.export(tmp_path / "b1.json", key)
    journal.mark_uploaded(4)  # the sync confirmed only part of it
    info = journal.export(tmp_path / "b2.json", key)
    assert (info.first_seq, info.last_seq) == (5, 6)
    assert read_batch(tmp_path / "b2.json", key.public_key())["prev_hash"] == journal.entries(3, 4)[0].hash


def test_empty_export_writes_an_empty_batch(tmp_path, journal, key):
    info = journal.export(tmp_path / "b.json", key)
    assert info.entries == 0
    assert acknowledge_batch(journal, tmp_path / "b.json", key.public_key()) == 0


@pytest.mark.parametrize("make_path, fragment", [
    (lambda tmp: tmp / "no" / "such" / "dir" / "b.json", "does not exist"),
    (lambda tmp: tmp, "is a folder"),
])
def test_export_to_a_bad_path_fails_clearly_and_loses_nothing(tmp_path, journal, key, make_path, fragment):
    purchase(journal)
    before = (journal.head(), journal.unsynced_total_cents())
    with pytest.raises(JournalError, match=fragment):
        journal.export(make_path(tmp_path), key)
    assert (journal.head(), journal.unsynced_total_cents()) == before
    assert journal.export(tmp_path / "ok.json", key).entries == 3  # the retry works


def test_export_when_the_disk_fails_leaves_no_partial_file(tmp_path, journal, key, monkeypatch):
    purchase(journal)
    out = tmp_path / "b.json"
    out.write_text("previous batch")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full_disk)  # the atomic write lives in storage
    with pytest.raises(JournalError, match="No space left on device"):
        journal.export(out, key)
    monkeypatch.undo()
    assert out.read_text() == "previous batch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "state"]  # no temp file left
    assert journal.unsynced_total_cents() == 150
    journal.export(out, key)
    assert read_batch(out, key.public_key())["last_seq"] == 3


def test_export_refuses_a_broken_chain(tmp_path, journal, key):
    purchase(journal)
    tamper(journal, "UPDATE journal SET amount_cents = 1 WHERE seq = 3")
    with pytest.raises(JournalCorrupt, match="seq 3"):
        journal.export(tmp_path / "b.json", key)
    assert not (tmp_path / "b.json").exists()


def test_bad_batches_are_refused_on_ack(tmp_path, journal, key):
    purchase(journal)
    path = tmp_path / "b.json"
    journal.export(path, key)
    document = json.loads(path.read_text())
    document["body"]["last_seq"] = 99
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    with pytest.raises(JournalError, match="signature does not verify"):
        acknowledge_batch(journal, forged, key.public_key())
    with pytest.raises(JournalError, match="signature does not verify"):
        acknowledge_batch(journal, path, Ed25519PrivateKey.generate().public_key())  # another unit's key
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(JournalError, match="bad JSON"):
        acknowledge_batch(journal, truncated, key.public_key())
    with pytest.raises(JournalError, match="cannot read"):
        acknowledge_batch(journal, tmp_path / "missing.json", key.public_key())
    not_batch = tmp_path / "other.json"
    not_batch.write_text('{"hello": 1}')
    with pytest.raises(JournalError, match="not a journal batch"):
        acknowledge_batch(journal, not_batch, key.public_key())
    assert journal.uploaded_upto_seq() == 0 and journal.unsynced_total_cents() == 150


def test_ack_of_a_batch_that_is_not_pending_is_refused(tmp_path, journal, key):
    purchase(journal)
    journal.export(tmp_path / "b1.json", key)
    journal.mark_uploaded(3)  # acknowledged some other way
    purchase(journal)
    journal.export(tmp_path / "b2.json", key)
    journal.mark_uploaded(6)
    purchase(journal)
    journal.export(tmp_path / "b3.json", key)
    other_unit = Journal.open(tmp_path / "other")
    purchase(other_unit)
    purchase(other_unit)
    purchase(other_unit)
    purchase(other_unit)
    with pytest.raises(JournalRefused, match="not the one awaiting"):
        acknowledge_batch(other_unit, tmp_path / "b3.json", key.public_key())
    other_unit.close()
    assert acknowledge_batch(journal, tmp_path / "b1.json", key.public_key()) == 6  # old one: no-op


def test_shared_connection_from_storage(tmp_path):
    conn = open_db(tmp_path)
    j = Journal(conn)
    purchase(j)
    assert Journal(conn).charged_cents("e1", 0) == 150  # a second Journal on the same db sees it
    conn.close()


def test_bench_helper_reports_percentiles(tmp_path):
    result = bench_journal_append(5, authorize=lambda employee, price: None, state_dir=tmp_path)
    assert set(result) == {"approve", "authorize_approve", "succeed"}
    assert result["approve"]["n"] == 5 and result["approve"]["p50"] <= result["approve"]["max"]
    assert os.listdir(tmp_path) == []  # its scratch db is gone


def test_running_totals_equal_the_chain_after_any_mix_of_outcomes_and_survive_a_hand_edit(tmp_path):
    """Funds, day caps and the unsynced total read running totals; they must say what summing the chain says."""
    import random

    from vendor_node.money.journal_guard import check_integrity

    rng = random.Random(5)
    state = tmp_path / "state"
    clock_now = [1_700_000_000.0]
    journal = Journal.open(state, clock=lambda: clock_now[0])
    people = ["e1", "e2", "e3"]
    for i in range(300):
        clock_now[0] += rng.choice([1, 60, 3600])
        session = journal.begin_session()
        journal.approve(session, rng.choice(people), "A1", rng.randint(1, 500))
        outcome = rng.random()
        if outcome < 0.6:
            journal.succeed(session)
        elif outcome < 0.8:
            journal.void(session, "failed")
        else:
            journal.mark_outcome_unknown(session)
            journal.settle_review(session, charged=rng.random() < 0.5)
        if i == 150:
            journal.mark_uploaded(journal.head()[0])

    def by_chain(sql, args):
        return journal.conn.execute(f"SELECT COALESCE(SUM(amount_cents), 0) FROM journal WHERE {sql} AND "
                                    f"(kind = '{VEND_SUCCEEDED}' OR (kind = '{REVIEW_SETTLED}' AND amount_cents > 0))",
                                    args).fetchone()[0]

    def check():
        upto = journal.uploaded_upto_seq()
        assert journal.unsynced_total_cents() == by_chain("seq > ?", (upto,))
        for person in people:
            for after in (0, 100, 450, journal.head()[0]):
                assert journal.charged_after_seq_cents(person, after) == by_chain("employee_id = ? AND seq > ?",
                                                                                  (person, after))
            for since in (1_700_000_000.0, clock_now[0] - 86400, clock_now[0]):
                assert journal.charged_cents(person, since) == by_chain("employee_id = ? AND ts_us >= ?",
                                                                        (person, int(since * 1e6)))

    check()
    journal.conn.execute("UPDATE journal_charges SET employee_total = 0, unit_total = 0")  # someone edits the file
    assert check_integrity(journal).startswith("journal verified")  # the next start rebuilds from the chain
    check()
    journal.close()
