"""THE KILL TEST: SIGKILL a purchasing process at random points, restart it, and check the money.

tests/kill_driver.py runs purchases against a real state dir (WAL, synchronous=FULL)
with a file ledger standing in for the vending board's own record of what dropped.
This test kills it again and again, half the time after a random delay and half
the time right after it announces a randomly chosen step, then lets a last run
recover, and checks: zero double charges, zero lost charges for snacks that
dropped, no charge for a snack that did not drop, an intact chain, exactly one
outcome per session, every approval the board saw journaled first, funds and
daily caps kept (authorization is B1's real AccountStore over a signed bundle),
and the batches the simulated nightly sync uploaded cover the acknowledged
journal exactly, chained, with no gap or overlap.

Seedable: KILL_SEED=<int> (default 20261124); KILL_POINTS=<int> (default 220).
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.money.accounts import AccountStore
from vendor_node.money.bundle import Bundle, EmployeeRecord, encode_bundle, write_bundle_file
from vendor_node.config import Config
from vendor_node.money.keys import KeyStore, public_key_to_pem
from vendor_node.money.journal import (OUTCOME_UNKNOWN, OUTCOMES, SESSION_BEGUN, VEND_APPROVED, VEND_SUCCEEDED,
                                 VEND_VOIDED, Journal)

sys.path.insert(0, str(Path(__file__).parent))
from kill_driver import (DAILY_CAP_CENTS, EMPLOYEES, FUNDS_CENTS, UNSYNCED_CAP_CENTS,  # noqa: E402
                         BoardLedger)

DRIVER = Path(__file__).with_name("kill_driver.py")
SEED = int(os.environ.get("KILL_SEED", "20261124"))
KILL_POINTS = int(os.environ.get("KILL_POINTS", "220"))
STEP_MARKERS = ["open", "recover", "recover-settle", "recover-interrupted", "recover-replay", "recovered",
                "begin", "authorize", "approve", "board-receive", "board-vend", "settle", "done",
                "sync-export", "sync-upload", "sync-ack"]
MAIN_STEPS = ["begin", "authorize", "approve", "board-receive", "board-vend", "settle"]
ROUND_TIMEOUT_S = 20.0


class LineReader:
    """Non-blocking line reader over a pipe."""

    def __init__(self, pipe):
        self.pipe = pipe
        os.set_blocking(pipe.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(pipe, selectors.EVENT_READ)
        self.buffer = b""

    def read_lines(self, timeout: float) -> list[str] | None:
        """Complete lines available within ``timeout`` ([] if none); None at end of output."""
        if not self.selector.select(timeout):
            return []
        chunk = self.pipe.read()
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def close(self):
        self.selector.close()
        self.pipe.close()


class Driver:
    """One run of tests/kill_driver.py: forked by the zygote (fast restart) or a fresh interpreter."""

    def __init__(self, reader: LineReader, stderr_log: Path, proc: subprocess.Popen | None = None):
        self.reader, self.proc, self.stderr_log = reader, proc, stderr_log
        self.pid = proc.pid if proc else None
        self.status: int | None = None  # waitpid status (zygote) or return code (fresh)
        self.markers: list[str] = []

    @classmethod
    def fresh(cls, argv: list[str], stderr_path: Path) -> "Driver":
        with open(stderr_path, "ab") as err:
            proc = subprocess.Popen([sys.executable, str(DRIVER), *argv], stdout=subprocess.PIPE, stderr=err)
        return cls(LineReader(proc.stdout), stderr_path, proc)

    @property
    def ended(self) -> bool:
        return self.status is not None

    def _pump(self, timeout: float) -> bool:
        """Take in what the driver announced; False once it has ended."""
        if self.ended:
            return False
        lines = self.reader.read_lines(timeout)
        if lines is None:  # a fresh process closed its stdout
            self.status = self.proc.wait()
            self.reader.close()
            return False
        for line in lines:
            if line.startswith("pid ") and self.proc is None:
                self.pid = int(line.split()[1])
            elif line.startswith("exit ") and self.proc is None:
                self.status = int(line.split()[2])
            else:
                self.markers.append(line)
        return not self.ended

    def wait_for(self, name: str, occurrence: int, deadline: float, give_up_after_begins: int | None = None) -> bool:
        """Until ``name`` has been announced ``occurrence`` times (or, for steps that happen only
        sometimes, until that many purchases began); False if the driver ended first."""
        while self.markers.count(name) < occurrence and not (
                give_up_after_begins and self.markers.count("begin") >= give_up_after_begins):
            if time.monotonic() > deadline:
                self._kill()
                pytest.fail(f"driver stuck; markers so far: {self.markers[-10:]}")
            if not self._pump(0.05):
                return False
        return True

    def _kill(self) -> None:
        while self.pid is None and self._pump(0.05):
            pass
        if not self.ended:
            os.kill(self.pid, signal.SIGKILL)
        while self._pump(1.0):
            pass

    def kill_now(self) -> str | None:
        """SIGKILL; the last marker it announced is the step it died in (None if it had exited)."""
        self._pump(0.0)
        if self.ended:
            self._check_exit_ok()
            return None
        self._kill()
        if self.markers and self.markers[-1] == "exit":
            return None
        return self.markers[-1] if self.markers else None

    def finish(self, timeout: float = ROUND_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while self._pump(0.05):
            if time.monotonic() > deadline:
                self._kill()
                pytest.fail(f"driver did not finish; markers: {self.markers[-10:]}")
        self._check_exit_ok()

    def _check_exit_ok(self):
        assert self.status == 0, f"driver failed (status {self.status}):\n{self.stderr_log.read_text()[-3000:]}"


def _provision(state_dir: Path, bundles_dir: Path) -> None:
    """A unit loaded the way a technician does it: pinned fleet key, one signed snapshot bundle."""
    cfg = Config().replace(unit={"state_dir": state_dir})
    fleet = Ed25519PrivateKey.generate()
    keys = KeyStore.from_config(cfg)
    keys.pin_fleet_public_key(public_key_to_pem(fleet.public_key()))
    keys.install_fleet_template_key(os.urandom(32))
    now = time.time()
    bundle = Bundle(kind="snapshot", version=1, base_version=None, created=now - 60, expires=now + 7 * 86400,
                    unit_id=cfg.unit.unit_id, policy={"per_day_cap_cents": DAILY_CAP_CENTS, "unsynced_total_cap_cents": UNSYNCED_CAP_CENTS},
                    employees=[EmployeeRecord(e, f"Employee {e}", funds_cents=FUNDS_CENTS) for e in EMPLOYEES],
                    deletions=[], templates=[])
    bundles_dir.mkdir()
    write_bundle_file(bundles_dir / "v1.vnb", encode_bundle(bundle, fleet))
    with AccountStore.open(cfg) as store:
        store.import_bundle(bundles_dir / "v1.vnb")


def _server_problems(server_dir: Path, entries, uploaded_upto: int, public_key) -> list[str]:
    """The uploaded batches must tile seq 1..N with no gap or overlap, chain to each other, match the
    journal entry for entry, and include everything the unit counts as uploaded."""
    from vendor_node.money.journal_export import read_batch

    by_seq = {e.seq: e for e in entries}
    bodies = sorted((read_batch(p, public_key) for p in server_dir.glob("*.json")), key=lambda b: b["first_seq"])
    problems, expected_first, prev_hash = [], 1, "0" * 64
    for body in bodies:
        if body["first_seq"] != expected_first:
            problems.append(f"batch {body['batch_id']} starts at seq {body['first_seq']}, expected {expected_first}")
        if body["prev_hash"] != prev_hash:
            problems.append(f"batch {body['batch_id']} does not chain to the batch before it")
        for item in body["entries"]:
            ours = by_seq.get(item["seq"])
            if ours is None or ours.as_dict() != item:
                problems.append(f"batch {body['batch_id']} seq {item['seq']} differs from the journal")
        expected_first, prev_hash = body["last_seq"] + 1, body["last_hash"]
    if uploaded_upto > expected_first - 1:
        problems.append(f"the unit counts seq {uploaded_upto} as uploaded but the server has up to {expected_first - 1}")
    if uploaded_upto not in {0} | {b["last_seq"] for b in bodies}:
        problems.append(f"the upload watermark {uploaded_upto} is not the end of an uploaded batch")
    return problems


def _audit(state_dir: Path, ledger: Path, server_dir: str | None = None) -> dict:
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
        unit_exposure = journal.unsynced_total_cents() + sum(a.amount_cents for a in journal.unknown_outcomes())
        uploaded_upto = journal.uploaded_upto_seq()
    signing_key = KeyStore(state_dir).load_signing_key()
    server_problems = _server_problems(Path(server_dir) if server_dir else state_dir.parent / "server", entries, uploaded_upto, signing_key.public_key())
    sessions: dict[str, list] = collections.defaultdict(list)
    for entry in entries:
        sessions[entry.session_id].append(entry)
    charges = collections.Counter(e.session_id for e in entries if e.kind == VEND_SUCCEEDED)
    dropped = {s for s, ev in board_events.items() if "dropped" in ev}
    approvals = {e.session_id: e for e in entries if e.kind == VEND_APPROVED}
    outcome_counts = {s: sum(e.kind in OUTCOMES for e in es) for s, es in sessions.items()}
    charged_per_day = collections.Counter()  # local calendar day, as the daily cap counts it
    for e in entries:
        if e.kind == VEND_SUCCEEDED:
            charged_per_day[(e.employee_id, datetime.date.fromtimestamp(e.ts))] += e.amount_cents
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
        "over_daily_cap": sorted(k for k, cents in charged_per_day.items() if cents > DAILY_CAP_CENTS),
        "over_funds": sorted(e for e, cents in charged_by_journal.items() if cents > FUNDS_CENTS),
        "unit_exposure_over_cap": int(unit_exposure > UNSYNCED_CAP_CENTS),
        "server_problems": server_problems,
        "uploaded_upto_seq": uploaded_upto,
        "refusals": sum(e.kind == VEND_VOIDED and e.detail == "refused" for e in entries),
        "open_after_recovery": len(open_approvals) + len(open_unapproved),
    }


@pytest.mark.slow
def _kill_rounds(tmp_path, state_dir: Path, ledger: Path, kill_points: int, extra_argv=(), before_round=None,
                 before_recovery=None):
    """Kill the driver at ``kill_points`` random points (half after a random delay, half right after a chosen
    step), then let a fresh interpreter recover (after ``before_recovery(run_recovery)``, which may try a
    recovery of its own first); returns (kills per step, the audit, a one-line summary)."""
    started = time.monotonic()
    rng = random.Random(SEED)
    kills_at = collections.Counter()
    rounds = fresh_runs = 0
    ended_by_full_disk = []
    stderr_log = tmp_path / "driver-stderr.log"
    with open(stderr_log, "wb") as err:
        zygote_proc = subprocess.Popen([sys.executable, str(DRIVER), "--zygote"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=err)
    zygote_lines = LineReader(zygote_proc.stdout)
    try:
        while sum(kills_at.values()) < kill_points:
            rounds += 1
            assert rounds < kill_points * 3, f"too few rounds ended in a kill: {kills_at}"
            if before_round is not None:
                before_round(rng)
            argv = ["--state-dir", str(state_dir), "--ledger", str(ledger), "--seed", str(SEED * 10_000 + rounds),
                    *extra_argv]
            if rounds % 10 == 0:  # now and then a whole new interpreter, as after a real power cut
                driver = Driver.fresh(argv, stderr_log)
                fresh_runs += 1
            else:
                zygote_proc.stdin.write((json.dumps(argv) + "\n").encode())
                zygote_proc.stdin.flush()
                driver = Driver(zygote_lines, stderr_log)
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            if rng.random() < 0.5:  # at a random moment once the interpreter is up
                if not driver.wait_for("open", 1, deadline):
                    driver.finish()
                    continue
                end = time.monotonic() + rng.uniform(0.0, 0.15)
                while time.monotonic() < end and driver._pump(max(0.0, end - time.monotonic())):
                    pass
            else:  # right after a randomly chosen step announced itself, plus a random sliver
                name = rng.choice(STEP_MARKERS + MAIN_STEPS)  # the purchase steps weighted double
                occurrence = rng.randint(1, 3) if name in MAIN_STEPS + ["done"] else 1
                # recovery steps happen only when something was left open, a sync every few dozen purchases
                give_up = 1 if name.startswith("recover-") else 40 if name.startswith("sync-") else None
                if not driver.wait_for(name, occurrence, deadline, give_up):
                    driver.finish()
                    continue
                time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.003)]))
            where = driver.kill_now()
            if where is not None:
                kills_at[where] += 1
            if "disk-full" in driver.markers:
                ended_by_full_disk.append(rounds)
    finally:
        zygote_proc.stdin.close()
        zygote_proc.wait(ROUND_TIMEOUT_S)
        zygote_lines.close()
    assert "Traceback" not in stderr_log.read_text(), stderr_log.read_text()

    def run_recovery() -> list[str]:
        """A fresh interpreter that only recovers; returns what it announced."""
        driver = Driver.fresh(["--state-dir", str(state_dir), "--ledger", str(ledger), "--seed", str(SEED),
                               "--purchases", "0", *extra_argv], stderr_log)
        driver.finish()
        return driver.markers

    if before_recovery is not None:
        before_recovery(run_recovery)
    final_markers = run_recovery()
    assert "recovered" in final_markers, f"the last recovery did not finish: {final_markers}"
    audit = _audit(state_dir, ledger, *(extra_argv[1:2] if "--server-dir" in extra_argv else ()))
    summary = (f"{sum(kills_at.values())} kill points in {rounds} runs ({fresh_runs} fresh interpreters, the rest "
               f"forked, {len(ended_by_full_disk)} ended by a full disk), {time.monotonic() - started:.1f} s; "
               f"kills per step: {dict(sorted(kills_at.items()))}")
    return kills_at, audit, summary


def _assert_money_intact(audit) -> None:
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
    assert audit["over_daily_cap"] == []
    assert audit["over_funds"] == []
    assert audit["unit_exposure_over_cap"] == 0
    assert audit["server_problems"] == []
    assert audit["open_after_recovery"] == 0


def test_sigkill_at_random_points_never_double_charges_or_loses_a_charge(tmp_path):
    state_dir, ledger = tmp_path / "state", tmp_path / "board.ledger"
    _provision(state_dir, tmp_path / "bundles")
    kills_at, audit, summary = _kill_rounds(tmp_path, state_dir, ledger, KILL_POINTS)
    print(f"\nkill test: {summary}")
    print({k: (v if isinstance(v, int) else len(v)) for k, v in audit.items()})

    _assert_money_intact(audit)
    assert audit["uploaded_upto_seq"] > 0, "the simulated nightly sync should have run"
    assert audit["charges"] > 50, "the driver should have completed many purchases"
    if KILL_POINTS >= 200:  # the kills really spread over every purchase step (authorize is a quick read)
        for step in MAIN_STEPS:
            wanted = 1 if step == "authorize" else 3
            assert kills_at[step] >= wanted, f"only {kills_at[step]} kills in step {step!r}: {kills_at}"
        assert kills_at["recover-settle"] >= 1 and kills_at["sync-export"] + kills_at["sync-upload"] >= 1, kills_at


def test_sigkill_while_the_disk_fills_never_double_charges_or_loses_a_charge(tmp_path):
    """50 kill points with the unit's state on an 8 MiB disk that fills up and empties between runs: a full
    disk ends a run as the unit goes out of service, the next run with room recovers, the money stays exact."""
    import contextlib

    from test_journal_faults import fill

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        state_dir, ledger, server = disk / "state", tmp_path / "board.ledger", tmp_path / "server"
        _provision(state_dir, tmp_path / "bundles")
        full_runs = []

        def squeeze(rng):
            """Before each run: leave the disk as it is, fill it to a random last few KiB, or free it."""
            filler = disk / "filler"
            choice = rng.random()
            if choice < 0.35:
                with contextlib.suppress(FileNotFoundError):
                    filler.unlink()
                fill(disk)
                spare = rng.choice([0, 4096, 16384, 65536, 262144])
                if spare:
                    with open(filler, "r+b") as handle:
                        handle.truncate(max(0, filler.stat().st_size - spare))
                full_runs.append(spare)
            elif choice < 0.65:
                with contextlib.suppress(FileNotFoundError):
                    filler.unlink()

        def full_then_room(run_recovery):
            """A start-up on a disk with no byte left goes out of service cleanly (or recovers, if it needs no
            room); once there is room again, the next start-up recovers what is open."""
            with contextlib.suppress(FileNotFoundError):
                (disk / "filler").unlink()
            fill(disk)
            markers = run_recovery()
            assert markers[-1] in {"disk-full", "exit"}, markers
            (disk / "filler").unlink()

        kills_at, audit, summary = _kill_rounds(tmp_path, state_dir, ledger, 50,
                                                ["--server-dir", str(server), "--disk-may-fill"], squeeze,
                                                full_then_room)
        print(f"\nkill test with a filling disk: {summary}; {len(full_runs)} runs began on a nearly full disk")
        print({k: (v if isinstance(v, int) else len(v)) for k, v in audit.items()})
        _assert_money_intact(audit)
        assert len(full_runs) >= 10 and audit["charges"] > 20
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
