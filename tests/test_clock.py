"""Money does not move with the wall clock: a Pi without a real-time clock may boot an hour, a day or 50 years
behind. Funds are counted by journal position, and day caps and bundle age by the journal's trusted time
(never earlier than its newest entry plus the time since), so a clock set back gives nothing back."""
from __future__ import annotations

import time

import pytest

from vendor_node.money.accounts import AccountStore
from vendor_node.money.bundle import EmployeeRecord
from vendor_node.money.journal import Journal
from vendor_node.money.storage import open_db

from test_accounts import HOUR, NOW, buy, cfg, fleet, store  # noqa: F401 (fixtures)

DAY = 24 * HOUR


def rebooted(cfg, wall_offset_s: float) -> AccountStore:
    """The unit after a restart whose wall clock is ``wall_offset_s`` off (negative: behind)."""
    conn = open_db(cfg.state_dir)
    return AccountStore(cfg, conn, Journal(conn, clock=lambda: time.time() + wall_offset_s))


@pytest.mark.parametrize("behind_s", [HOUR, DAY, NOW])  # an hour, a day, back to 1970
def test_spent_funds_stay_spent_whatever_the_clock_says(store, fleet, cfg, behind_s):
    store.import_bundle(fleet.bundle(1, [EmployeeRecord("E1", "Ann", funds_cents=500)],
                                     policy={"per_day_cap_cents": 100_000}))
    for _ in range(3):
        buy(store, "E1", 150)
    after = rebooted(cfg, -behind_s)
    try:
        assert after.journal.clock_behind_s() > behind_s - 60
        refused = after.authorize("E1", 100)
        assert (refused.approved, refused.reason_code) == (False, "insufficient_funds")
        assert after.authorize("E1", 50).approved
    finally:
        after.conn.close()


@pytest.mark.parametrize("behind_s", [HOUR, DAY, NOW])
def test_a_clock_set_back_does_not_reopen_todays_cap(store, fleet, cfg, behind_s):
    store.import_bundle(fleet.bundle(1, [EmployeeRecord("E1", "Ann", funds_cents=100_000)],
                                     policy={"per_day_cap_cents": 1500}))
    for _ in range(10):
        buy(store, "E1", 150)
    assert store.authorize("E1", 100).reason_code == "daily_limit"
    after = rebooted(cfg, -behind_s)
    try:
        assert after.authorize("E1", 100).reason_code == "daily_limit"
        assert after.out_of_service_reason() is None  # serving goes on, judged on the trusted time
    finally:
        after.conn.close()


def test_an_old_bundle_does_not_become_young_when_the_clock_goes_back(store, fleet, cfg):
    store.import_bundle(fleet.bundle(1, [EmployeeRecord("E1", "Ann", funds_cents=1000)], created=NOW - 80 * HOUR,
                                     expires=NOW + DAY))
    assert "h old" in store.out_of_service_reason()
    after = rebooted(cfg, -20 * HOUR)  # the wall clock now says the bundle is 60 h old
    try:
        assert "h old" in after.out_of_service_reason()
    finally:
        after.conn.close()


def test_journal_times_never_go_backwards(store, fleet, cfg):
    store.import_bundle(fleet.bundle(1, [EmployeeRecord("E1", "Ann", funds_cents=10_000)]))
    buy(store, "E1", 100)
    before = store.journal.entries()[-1].ts_us
    after = rebooted(cfg, -DAY)
    try:
        buy(after, "E1", 100)
        stamped = [e.ts_us for e in after.journal.entries()]
        assert stamped == sorted(stamped) and stamped[-1] >= before
    finally:
        after.conn.close()
