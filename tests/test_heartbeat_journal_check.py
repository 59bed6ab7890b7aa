"""The heartbeat's journal check is incremental: each night it verifies only what was written since the
last verified position (the start-up mark or its own), yet a change at or after that position, or a
shortened journal, is still reported; the whole walk stays in `journal verify`."""
from __future__ import annotations

import pytest

from vendor_node.money.journal import Journal
from vendor_node.money.journal_guard import HEARTBEAT_MARK_NAME, check_integrity, verify_for_heartbeat


@pytest.fixture
def journal(tmp_path):
    opened = Journal.open(tmp_path / "state")
    yield opened
    opened.close()


def _buy(journal, n, cents=100):
    for _ in range(n):
        session = journal.begin_session()
        journal.approve(session, "E1", "A1", cents)
        journal.succeed(session)


def _tamper(journal, sql):
    journal.conn.execute("DROP TRIGGER IF EXISTS journal_no_update")
    journal.conn.execute(sql)


def test_each_heartbeat_checks_only_the_new_entries(journal, tmp_path):
    _buy(journal, 10)  # 30 entries
    ok, text = verify_for_heartbeat(journal)
    assert ok and "seq 1..30" in text  # the first check walks everything once
    ok, text = verify_for_heartbeat(journal)
    assert ok and "nothing new since seq 30" in text  # nothing new since the last heartbeat: nothing walked
    assert (tmp_path / "state" / HEARTBEAT_MARK_NAME).is_file()
    _buy(journal, 2)
    ok, text = verify_for_heartbeat(journal)
    assert ok and "seq 31..36" in text


def test_a_change_after_the_verified_position_is_reported(journal, tmp_path):
    _buy(journal, 4)
    assert verify_for_heartbeat(journal)[0]
    _buy(journal, 2)
    _tamper(journal, "UPDATE journal SET amount_cents = 1 WHERE seq = 15")
    ok, text = verify_for_heartbeat(journal)
    assert not ok and text.startswith("journal BROKEN at seq 15")


def test_the_verified_position_itself_changed_is_reported(journal, tmp_path):
    _buy(journal, 4)
    assert verify_for_heartbeat(journal)[0]
    _tamper(journal, "UPDATE journal SET hash = '" + "0" * 64 + "' WHERE seq = 12")
    ok, text = verify_for_heartbeat(journal)
    assert not ok and "journal BROKEN at seq 12" in text and "verified earlier" in text


def test_an_earlier_change_is_left_to_journal_verify(journal, tmp_path):
    _buy(journal, 4)
    assert verify_for_heartbeat(journal)[0]
    _tamper(journal, "UPDATE journal SET amount_cents = 1 WHERE seq = 3")
    assert verify_for_heartbeat(journal)[0]  # incremental by design: seq 3 was verified before
    report = journal.verify()  # the whole walk (selftest, `journal verify`) still finds it
    assert not report.ok and report.first_bad_seq == 3


def test_the_start_up_mark_is_a_starting_point_too(journal, tmp_path):
    _buy(journal, 5)
    check_integrity(journal)  # what the unit does at start-up: verified up to seq 15
    _buy(journal, 1)
    ok, text = verify_for_heartbeat(journal)
    assert ok and "seq 16..18" in text


def test_a_shortened_journal_is_reported_from_the_mark_file_tail(journal, tmp_path):
    from vendor_node.money.journal_guard import MARK_NAME, _note_line

    _buy(journal, 300)  # a mark file longer than the tail the heartbeat reads
    assert verify_for_heartbeat(journal)[0]
    with open(tmp_path / "state" / MARK_NAME, "ab") as mark:
        mark.write(_note_line(905, "ab" * 32))  # committed once, gone now (a deleted WAL)
    ok, text = verify_for_heartbeat(journal)
    assert not ok and "SHORTENED" in text and "seq 905" in text
