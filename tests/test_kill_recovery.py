"""THE KILL TEST: SIGKILL a purchasing process at random points, restart it, and check the money.

tests/kill_driver.py runs purchases against a real state dir (WAL, synchronous=FULL)
with a file ledger standing in for the vending board's own record of what dropped.
This test kills it again and again, half the time after a random delay and half
the time right after it announces a randomly chosen step, then lets a last run
recover, and checks: zero double charges, zero lost charges for snacks that
dropped, no charge for a snack that did not drop, an intact chain, exactly one
outcome per session, every approval the board saw journaled first, caps kept.

Seedable: KILL_SEED=<int> (default 20261124); KILL_POINTS=<int> (default 220).
"""
from __future__ import annotations

import collections
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vendor_node.journal import (OUTCOME_UNKNOWN, OUTCOMES, SESSION_BEGUN, VEND_APPROVED, VEND_SUCCEEDED,
                                 VEND_VOIDED, Journal)

sys.path.insert(0, str(Path(__file__).parent))
from kill_driver import DAILY_CAP_CENTS, BoardLedger  # noqa: E402

DRIVER = Path(__file__).with_name("kill_driver.py")
SEED = int(os.environ.get("KILL_SEED", "20261124"))
KILL_POINTS = int(os.environ.get("KILL_POINTS", "220"))
STEP_MARKERS = ["open", "recover", "recover-settle", "recover-interrupted", "recover-replay", "recovered",
                "begin", "authorize", "approve", "board-receive", "board-vend", "settle", "done"]
MAIN_STEPS = ["begin", "authorize", "approve", "board-receive", "board-vend", "settle"]
ROUND_TIMEOUT_S = 20.0
DAY_ROUNDS = 20


class Driver:
    def __init__(self, state_dir: Path, ledger: Path, seed: int, day_start: float, purchases: int = 400):
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--state-dir", str(state_dir), "--ledger", str(ledger),
             "--seed", str(seed), "--purchases", str(purchases), "--day-start", repr(day_start)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""
        self.markers: list[str] = []

    def _pump(self, timeout: float) -> bool:
        """Read what is there; False at end of output."""
        if not self.selector.select(timeout):
            return True
        chunk = self.proc.stdout.read()
        if not chunk:
            return False
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        self.markers += [line.decode() for line in lines]
        return True

    def wait_for(self, name: str, occurrence: int, deadline: float, give_up_on: str | None = None) -> bool:
        """Until ``name`` has been announced ``occurrence`` times (or ``give_up_on`` once, for steps
        that happen only sometimes); False if the driver ended first."""
        while self.markers.count(name) < occurrence and not (give_up_on and give_up_on in self.markers):
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"driver stuck; markers so far: {self.markers[-10:]}")
            if not self._pump(0.05) and self.proc.poll() is not None:
                return False
        return True

    def kill_now(self) -> str | None:
        """SIGKILL; the last marker it announced is the step it died in (None if it had exited)."""
        if self.proc.poll() is not None:
            self.finish()
            return None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        while self._pump(0.0):
            pass
        self.close()
        return self.markers[-1] if self.markers and self.markers[-1] != "exit" else None

    def finish(self, timeout: float = ROUND_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while self._pump(0.05):
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"driver did not finish; markers: {self.markers[-10:]}")
        self.proc.wait(timeout)
        err = self.proc.stderr.read().decode()
        self.close()
        assert self.proc.returncode == 0, f"driver failed (rc {self.proc.returncode}):\n{err}"

    def close(self):
        self.selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _audit(state_dir: Path, ledger: Path, day_starts: list[float]) -> dict:
    """Compare the journal with what the board says dropped; returns counts of each kind of error."""
    board = BoardLedger(ledger)
    board_events: dict[str, set[str]] = collections.defaultdict(set)
    board_amounts: dict[str, tuple[str, int]] = {}
    for session_id, event, employee, amount in board.read():
        board_events[session_id].add(event)
        board_amounts[session_id] = (employee, amount)
    with Journal.open(state_dir) as journal:
        report = journal.verify()
        entries = journal.entries()
        open_approvals = journal.open_approvals()
        open_unapproved = journal.open_unapproved_sessions()
        charged_by_journal = {e: journal.charged_cents(e, 0) for e in {a[0] for a in board_amounts.values()}}
    sessions: dict[str, list] = collections.defaultdict(list)
    for entry in entries:
        sessions[entry.session_id].append(entry)
    charges = collections.Counter(e.session_id for e in entries if e.kind == VEND_SUCCEEDED)
    dropped = {s for s, ev in board_events.items() if "dropped" in ev}
    approvals = {e.session_id: e for e in entries if e.kind == VEND_APPROVED}
    outcome_counts = {s: sum(e.kind in OUTCOMES for e in es) for s, es in sessions.items()}
    charged_per_day = collections.Counter()
    for e in entries:
        if e.kind == VEND_SUCCEEDED:
            day = max(i for i, start in enumerate(day_starts) if e.ts_us >= int(start * 1e6))
            charged_per_day[(e.employee_id, day)] += e.amount_cents
    dropped_cents = collections.Counter()
    for s in dropped:
        dropped_cents[board_amounts[s][0]] += board_amounts[s][1]
    return {
        "chain_problems": report.problems,
        "sessions": len(sessions),
        "approvals": len(approvals),
        "charges": sum(charges.values()),
        "outcome_unknown": sum(e.kind == OUTCOME_UNKNOWN for e in entries),
        "voids": sum(e.kind == VEND_VOIDED for e in entries),
        "double_charges": sorted(s for s, n in charges.items() if n > 1),
        "lost_charges": sorted(dropped - set(charges)),
        "charges_without_drop": sorted(set(charges) - dropped),
        "sessions_without_one_outcome": sorted(s for s, n in outcome_counts.items() if n != 1),
        "sessions_not_begun_first": sorted(s for s, es in sessions.items() if es[0].kind != SESSION_BEGUN),
        "board_saw_unjournaled_approval": sorted(s for s in board_events if s not in approvals),
        "board_amount_differs": sorted(s for s in board_events if s in approvals and
                                       (approvals[s].employee_id, approvals[s].amount_cents) != board_amounts[s]),
        "unknown_but_board_has_result": sorted(
            e.session_id for e in entries if e.kind == OUTCOME_UNKNOWN
            and board_events.get(e.session_id, set()) & {"dropped", "failed"}),
        "balance_mismatch": sorted(e for e, cents in charged_by_journal.items() if cents != dropped_cents[e]),
        "over_cap": sorted(k for k, cents in charged_per_day.items() if cents > DAILY_CAP_CENTS),
        "refusals": sum(e.kind == VEND_VOIDED and e.detail == "refused" for e in entries),
        "open_after_recovery": len(open_approvals) + len(open_unapproved),
    }


@pytest.mark.slow
def test_sigkill_at_random_points_never_double_charges_or_loses_a_charge(tmp_path):
    started = time.monotonic()
    rng = random.Random(SEED)
    state_dir, ledger = tmp_path / "state", tmp_path / "board.ledger"
    day_starts = [time.time() - 60]  # a new "day" every DAY_ROUNDS runs, so caps bite but do not block all
    kills_at = collections.Counter()
    rounds = 0
    while sum(kills_at.values()) < KILL_POINTS:
        rounds += 1
        if rounds % DAY_ROUNDS == 0:
            day_starts.append(time.time())
        day_start = day_starts[-1]
        assert rounds < KILL_POINTS * 3, f"too few rounds ended in a kill: {kills_at}"
        driver = Driver(state_dir, ledger, seed=SEED * 10_000 + rounds, day_start=day_start)
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        if rng.random() < 0.5:  # at a random moment
            end = time.monotonic() + rng.uniform(0.0, 0.2)
            while time.monotonic() < end and driver._pump(max(0.0, end - time.monotonic())):
                pass
        else:  # right after a randomly chosen step announced itself, plus a random sliver
            name = rng.choice(STEP_MARKERS + MAIN_STEPS)  # the purchase steps weighted double
            occurrence = rng.randint(1, 3) if name in MAIN_STEPS + ["done"] else 1
            give_up_on = "begin" if name.startswith("recover-") else None  # no open approval this time
            if not driver.wait_for(name, occurrence, deadline, give_up_on):
                driver.finish()
                continue
            time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.003)]))
        where = driver.kill_now()
        if where is not None:
            kills_at[where] += 1
    final = Driver(state_dir, ledger, seed=SEED, day_start=day_starts[-1], purchases=0)  # recover only
    final.finish()
    audit = _audit(state_dir, ledger, day_starts)
    elapsed = time.monotonic() - started
    print(f"\nkill test: {sum(kills_at.values())} kill points in {rounds} runs, {elapsed:.1f} s; "
          f"kills per step: {dict(sorted(kills_at.items()))}")
    print({k: (v if isinstance(v, int) else len(v)) for k, v in audit.items()})

    assert audit["chain_problems"] == []
    assert audit["double_charges"] == []
    assert audit["lost_charges"] == []
    assert audit["charges_without_drop"] == []
    assert audit["sessions_without_one_outcome"] == []
    assert audit["sessions_not_begun_first"] == []
    assert audit["board_saw_unjournaled_approval"] == []
    assert audit["board_amount_differs"] == []
    assert audit["unknown_but_board_has_result"] == []
    assert audit["balance_mismatch"] == []
    assert audit["over_cap"] == []
    assert audit["open_after_recovery"] == 0
    assert audit["charges"] > 50, "the driver should have completed many purchases"
    for step in MAIN_STEPS:  # the kills really spread over every purchase step
        assert kills_at[step] >= 3, f"only {kills_at[step]} kills in step {step!r}: {kills_at}"
    assert kills_at["recover-settle"] >= 1, kills_at
