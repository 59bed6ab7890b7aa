"""Purchase driver for the kill test (tests/test_kill_recovery.py): run it, SIGKILL it anywhere, run it again.

Each run first recovers (settles the journal's open approvals from the board's
ledger, voids sessions cut before approval, replays the board's last report to
prove a repeated report never charges twice), then makes purchases step by step:

    begin -> authorize (the real AccountStore: funds, daily cap, unit offline cap)
    -> approve (durable) -> board receives the approval -> board vends (dropped or failed)
    -> succeed / void

and, when the unsynced total nears the unit's offline cap, a "nightly sync": signed
export -> upload (a copy into the server folder, named by batch id) -> acknowledge.

The "vending board" is a file ledger, fsync'd per record and outside the db: it
stands for the machine's own memory of what it dropped, reported after a restart.
A marker line is written to stdout (unbuffered) before every step so the test can
kill inside a chosen step and knows where each kill landed.

``--zygote`` saves the interpreter's start-up (~100-170 ms, most of a run) per restart:
it imports everything once and forks one fresh driver process per request; the test
SIGKILLs that child. The zygote itself never opens the db, so no state crosses a restart.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import sys
import traceback
from pathlib import Path

from vendor_node.money.accounts import AccountStore
from vendor_node.config import Config
from vendor_node.errors import AccountsError, JournalError
from vendor_node.money.journal import Journal
from vendor_node.money.journal_export import acknowledge_batch, read_batch
from vendor_node.money.keys import KeyStore

EMPLOYEES = [f"emp-{i:04d}" for i in range(1000)]
FUNDS_CENTS = 1500  # prepaid, per employee (the bundle the test imports)
DAILY_CAP_CENTS = 1000  # policy per_day_cap_cents
UNSYNCED_CAP_CENTS = 25000  # policy unsynced_total_cap_cents
SYNC_AT_CENTS = 5000  # the driver "syncs" once this much is unsynced
PRICES = [75, 120, 150, 200, 250, 325]


def marker(name: str) -> None:
    os.write(1, name.encode() + b"\n")


class BoardLedger:
    """The vending machine's own durable record: `<session> <event> <employee> <amount>` lines."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def record(self, session_id: str, event: str, employee_id: str, amount_cents: int) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{session_id} {event} {employee_id} {amount_cents}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[tuple[str, str, str, int]]:
        """Complete lines only: a torn last line is a record the board never finished."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        records = []
        for line in text.split("\n")[:-1]:
            session_id, event, employee_id, amount = line.split(" ")
            records.append((session_id, event, employee_id, int(amount)))
        return records

    def report(self) -> dict[str, set[str]]:
        """session -> events the board remembers."""
        events: dict[str, set[str]] = {}
        for session_id, event, _, _ in self.read():
            events.setdefault(session_id, set()).add(event)
        return events


def recover(journal: Journal, board: BoardLedger) -> None:
    """What the service does at start-up, before it enables the reader."""
    marker("recover")
    report = board.report()
    for approval in journal.open_approvals():
        marker("recover-settle")
        events = report.get(approval.session_id, set())
        if "dropped" in events:
            journal.succeed(approval.session_id)
        elif "failed" in events:
            journal.void(approval.session_id, "failed")
        elif "received" in events:
            journal.mark_outcome_unknown(approval.session_id)  # mid-vend: the board cannot say
        else:
            journal.void(approval.session_id, "interrupted")  # the approval never reached the board
    marker("recover-interrupted")
    journal.void_interrupted_sessions()
    records = board.read()
    if records:  # the board repeats its last report after a restart: must be a no-op
        marker("recover-replay")
        session_id, event, _, _ = records[-1]
        if event == "dropped":
            journal.succeed(session_id)
        elif event == "failed":
            journal.void(session_id, "failed")
    marker("recovered")


def purchase(journal: Journal, store: AccountStore, board: BoardLedger, rng: random.Random) -> str:
    employee = rng.choice(EMPLOYEES)
    price = rng.choice(PRICES)
    item = f"{rng.choice('ABCD')}{rng.randint(1, 8)}"
    marker("begin")
    session_id = journal.begin_session()
    marker("authorize")
    decision = store.authorize(employee, price)
    if not decision.approved:
        marker("refuse")
        journal.void(session_id, "refused")
        return decision.reason_code
    if rng.random() < 0.08:
        marker("cancel")
        journal.void(session_id, "cancelled")
        return "cancelled"
    marker("approve")
    journal.approve(session_id, employee, item, price)
    marker("board-receive")
    board.record(session_id, "received", employee, price)
    marker("board-vend")
    result = "dropped" if rng.random() < 0.85 else "failed"
    board.record(session_id, result, employee, price)
    marker("settle")
    if result == "dropped":
        journal.succeed(session_id)
    else:
        journal.void(session_id, "failed")
    marker("done")
    return result


def sync(journal: Journal, signing_key, server_dir: Path, outgoing: Path) -> None:
    """The nightly sync: export (retry-safe), upload (copy to the server under its batch id), acknowledge."""
    marker("sync-export")
    info = journal.export(outgoing, signing_key, unit_id="kill-test")
    if info.entries == 0:
        return
    marker("sync-upload")
    read_batch(outgoing, signing_key.public_key())  # the server checks the signature
    uploaded = server_dir / f"{info.batch_id}.json"
    shutil.copyfile(outgoing, uploaded.with_suffix(".part"))
    os.replace(uploaded.with_suffix(".part"), uploaded)
    marker("sync-ack")
    acknowledge_batch(journal, outgoing, signing_key.public_key())


def zygote() -> int:
    """Requests on stdin, one JSON list of driver arguments a line; for each, fork a driver whose
    markers share our stdout, then report ``pid N`` and, once it is gone, ``exit N STATUS``."""
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the driver: a process of its own, killed with SIGKILL by the test
            code = 1
            try:
                code = main(argv)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.write(1, f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exit {pid} {status}\n".encode())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--purchases", type=int, default=400, help="purchases this run (0: recover only)")
    parser.add_argument("--server-dir", type=Path, help="where uploaded batches go (default: beside the state)")
    parser.add_argument("--disk-may-fill", action="store_true",
                        help="a full disk ends the run as the unit would go out of service (marker disk-full)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    cfg = Config().replace(unit={"state_dir": args.state_dir})
    server_dir = args.server_dir or args.state_dir.parent / "server"
    server_dir.mkdir(exist_ok=True)
    marker("open")
    try:
        with Journal.open(args.state_dir) as journal:
            store = AccountStore(cfg, journal.conn, journal=journal)
            signing_key = KeyStore.from_config(cfg).ensure_signing_key()
            board = BoardLedger(args.ledger)
            recover(journal, board)
            for _ in range(args.purchases):
                if journal.unsynced_total_cents() >= SYNC_AT_CENTS:
                    sync(journal, signing_key, server_dir, args.state_dir.parent / "outgoing.json")
                purchase(journal, store, board, rng)
    except (JournalError, AccountsError, OSError) as exc:
        if not args.disk_may_fill or not _disk_full(exc):
            raise
        marker("disk-full")  # out of service until there is room: the next run recovers what is open
        return 0
    marker("exit")
    return 0


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC as the OS says it, or as SQLite words it inside a JournalError/AccountsError."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    text = str(exc)
    return "full" in text or "disk I/O error" in text or "No space left" in text


if __name__ == "__main__":
    sys.exit(zygote() if sys.argv[1:] == ["--zygote"] else main())
