"""Issue 14's target: hand-first purchases survive a machine that answers C,START busy three times before
starting the session. The whole unit (PurchaseLoop, journal, accounts) against the simulator; every
session must be started, every item charged once at its price. MDB_BUSY_PURCHASES sets how many (1,000
for the figure in the report; the slow test runs that many)."""
from __future__ import annotations

import os

import pytest

from vendor_node.sim.simulate import SimUnit, journal_summary

from test_service import FAST_RETRY, VMC_FAST, MarkerRecognizer, buy, cfg, marker_gallery  # noqa: F401

BUSY_VMC = dict(VMC_FAST, start_busy=3, think_s=0.005, vend_time_s=0.01, status_delay_s=0.005)


def run_busy_purchases(cfg, count: int) -> dict:  # noqa: F811
    cfg = cfg.replace(board={"start_retry_s": 0.02, "start_attempts": 12})
    outcomes: dict[str, int] = {}
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=BUSY_VMC, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        assert unit.wait_in_service(5.0), unit.loop.faults
        for i in range(count):
            purchase, customer = buy(unit, 1, selection=(50 + i % 7 * 10, f"A{i % 9}"))
            outcomes[purchase.outcome] = outcomes.get(purchase.outcome, 0) + 1
        summary = journal_summary(unit.journal, 0)
        vmc = unit.vmc
        assert unit.error is None
        return {"outcomes": outcomes, "busy_answers": vmc.start_busy_answers, "vended": vmc.vended_count,
                "vended_cents": vmc.vended_cents, "charged": summary["charged"],
                "charged_cents": summary["charged_cents"], "wrong_price_vends": vmc.wrong_price_vends,
                "protocol_errors": list(vmc.protocol_errors)}


def check(result: dict, count: int) -> None:
    assert result["outcomes"] == {"vended": count}, result  # 0 failed sessions
    assert result["busy_answers"] == 3 * count  # every session met three busy answers first
    assert (result["charged"], result["charged_cents"]) == (result["vended"], result["vended_cents"]) == \
        (count, result["vended_cents"])  # 0 wrong charges, 0 lost
    assert result["wrong_price_vends"] == 0 and result["protocol_errors"] == []


def test_hand_first_purchases_survive_three_busy_starts(cfg):  # noqa: F811
    check(run_busy_purchases(cfg, 15), 15)


@pytest.mark.slow
def test_a_thousand_hand_first_purchases_with_busy_starts(cfg):  # noqa: F811
    count = int(os.environ.get("MDB_BUSY_PURCHASES", "1000"))
    result = run_busy_purchases(cfg.replace(accounts={"per_day_cap_cents": 10_000_000,
                                                     "unsynced_total_cap_cents": 100_000_000}), count)
    print(f"\n{count} hand-first purchases, START busy x3 each: {result}")
    check(result, count)
