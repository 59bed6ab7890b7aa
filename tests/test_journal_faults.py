"""The unit and its journal under disk and database faults: a full disk at start-up and mid-run, flipped bytes,
a deleted WAL, an altered charge. Each ends out of service or serving correctly, with charges equal to vends,
and every message names what is wrong (never a traceback).

The full-disk tests put the state folder on a real 8 MiB tmpfs (root only; skipped where mounting is refused).
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from vendor_node.cli import main
from vendor_node.errors import JournalCorrupt
from vendor_node.money.journal import Journal
from vendor_node.money.journal_guard import MARK_NAME, check_integrity
from vendor_node.money.storage import DB_NAME
from vendor_node.sim.provision import provision_bundle
from vendor_node.sim.simulate import SimUnit

from test_service import (EMPLOYEES, FAST_RETRY, VMC_FAST, MarkerRecognizer, buy, charges_match_vends, make_cfg,
                          marker_gallery)

TEMPLATES = {"E1": bytes([1, 1]), "E2": bytes([1, 2]), "E3": bytes([1, 3])}


def wait_for(predicate, timeout=10.0, every=0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a disk that really fills up (ENOSPC from the kernel, not a mock)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(folder) -> os.PathLike:
    """Fill the disk under ``folder`` to the last byte; returns the filler to delete to make room again."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def sim_unit(cfg):
    return SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                   loop_options=FAST_RETRY)


def test_a_full_disk_at_boot_is_out_of_service_not_a_crash_then_serves(small_disk, tmp_path):
    """`vendor-node run` on a full disk: up (READY) but out of service, the watchdog fed; serving once room is back."""
    import socket
    import threading

    from vendor_node.devices.notify import Notifier
    from vendor_node.sim.vmc_sim import VendingMachineSimulator
    from vendor_node.unit.assemble import run_unit

    cfg = make_cfg(small_disk)
    provision_bundle(cfg, EMPLOYEES, TEMPLATES)
    filler = fill(small_disk)
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(30)
    stop, result = threading.Event(), {}
    with VendingMachineSimulator(**VMC_FAST) as machine:
        def run():
            result["code"] = run_unit(cfg, stop, board_port=machine.port_path, notifier=Notifier(address=path),
                                      store_retry_s=0.1)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            message = server.recv(1024).decode()
            assert message.startswith("READY=1\nSTATUS=out of service (journal)"), message
            assert not machine.wait_until(lambda: machine.reader_state == "enabled", 0.5)  # the machine shows no reader
            os.unlink(filler)
            while not message.startswith("READY=1\nSTATUS=in service"):
                message = server.recv(1024).decode()
            assert machine.wait_until(lambda: machine.reader_state == "enabled", 5.0)
        finally:
            stop.set()
            thread.join(30)
    server.close()
    assert result.get("code") == 0


def test_start_up_recovery_on_a_full_disk_is_out_of_service_then_finishes(small_disk):
    """An approval left open by a power cut must be settled at start; with the disk full that waits, never crashes."""
    cfg = make_cfg(small_disk)
    provision_bundle(cfg, EMPLOYEES, TEMPLATES)
    with Journal.open(cfg.state_dir) as journal:
        session = journal.begin_session()
        journal.approve(session, "E1", "A1", 150)  # the power went before the board said
        keep_open = sqlite3.connect(cfg.state_dir / DB_NAME)  # keeps the WAL files, so the database still opens
        keep_open.execute("SELECT 1 FROM journal").fetchone()
        filler = fill(small_disk)
        with sim_unit(cfg) as unit:
            assert wait_for(lambda: "journal" in unit.loop.faults), unit.loop.faults
            assert wait_for(lambda: unit.loop.counts["journal_retries"] >= 3)
            assert "journal" in unit.loop.faults and unit.error is None
            os.unlink(filler)
            assert unit.wait_in_service(10.0), unit.loop.faults
            assert not unit.journal.open_approvals()  # settled (outcome unknown: the board cannot say any more)
            purchase, _ = buy(unit, 1)
            assert purchase.outcome == "vended" and charges_match_vends(unit)
        keep_open.close()
    assert unit.error is None


def test_a_disk_filling_mid_run_stops_approvals_without_flapping_and_loses_no_charge(small_disk):
    cfg = make_cfg(small_disk)
    provision_bundle(cfg, EMPLOYEES, TEMPLATES)
    with sim_unit(cfg) as unit:
        assert unit.wait_in_service(5.0), unit.loop.faults
        assert buy(unit, 1)[0].outcome == "vended"
        filler = fill(small_disk)
        outcomes = []
        for _ in range(3):  # the purchases the full disk meets: served correctly or refused, never half-charged
            if "journal" in unit.loop.faults:
                break
            outcomes.append(buy(unit, 1)[0].outcome)
        assert wait_for(lambda: "journal" in unit.loop.faults), (outcomes, unit.loop.faults)
        retries = unit.loop.counts["journal_retries"]
        assert wait_for(lambda: unit.loop.counts["journal_retries"] >= retries + 3)
        assert "journal" in unit.loop.faults, "cleared while the disk was still full"
        os.unlink(filler)
        assert unit.wait_in_service(10.0), unit.loop.faults
        assert buy(unit, 1)[0].outcome == "vended"
        assert charges_match_vends(unit)
        assert not unit.journal.open_approvals()
    assert unit.error is None


def _journal_with_purchases(state_dir, purchases=60) -> None:
    with Journal.open(state_dir) as journal:
        for i in range(purchases):
            session = journal.begin_session()
            journal.approve(session, f"E{i % 3 + 1}", "A1", 100 + i)
            journal.succeed(session)
        journal.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_flipped_bytes_are_reported_as_messages_never_tracebacks(tmp_path, capsys):
    clean = tmp_path / "clean"
    _journal_with_purchases(clean)
    rng = random.Random(11)
    size = (clean / DB_NAME).stat().st_size
    detected = 0
    for trial in range(8):
        state = tmp_path / f"flip{trial}"
        shutil.copytree(clean, state)
        with open(state / DB_NAME, "r+b") as db:
            for _ in range(4):
                offset = rng.randrange(100, size)
                db.seek(offset)
                byte = db.read(1)
                db.seek(offset)
                db.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        code = main(["journal", "verify", "--state-dir", str(state)])
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err
        assert code in (0, 1)
        if code == 1:
            detected += 1
            assert "BROKEN" in out.err or "damaged" in out.err or "database" in out.err, out.err
        code = main(["selftest", "--sim", "--state-dir", str(state)])
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err and "ValueError" not in out.out
    assert detected >= 4, f"only {detected} of 8 damaged databases were noticed"


def test_a_deleted_wal_is_a_shortened_journal_the_unit_refuses(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    provision_bundle(cfg, EMPLOYEES, TEMPLATES)
    # a writer killed with entries only in the WAL (no checkpoint), then the WAL file deleted
    code = ("import sys\nfrom vendor_node.money.journal import Journal\n"
            "j = Journal.open(sys.argv[1])\nj.conn.execute('PRAGMA wal_autocheckpoint=0')\n"
            "for i in range(30):\n    s = j.begin_session(); j.approve(s, 'E1', 'A1', 150); j.succeed(s)\n"
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(cfg.state_dir)], check=False)
    (cfg.state_dir / f"{DB_NAME}-wal").unlink()
    assert main(["journal", "verify", "--state-dir", str(cfg.state_dir)]) == 1
    assert "SHORTENED" in capsys.readouterr().err
    with sim_unit(cfg) as unit:
        assert wait_for(lambda: "journal" in unit.loop.faults)
        assert "SHORTENED" in unit.loop.faults["journal"]
        assert not unit.vmc.wait_until(lambda: unit.vmc.reader_state == "enabled", 1.0)  # the machine shows no reader
        assert not unit.vmc.vended
    assert unit.error is None


def test_an_altered_charge_keeps_the_unit_out_of_service_naming_the_entry(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    provision_bundle(cfg, EMPLOYEES, TEMPLATES)
    _journal_with_purchases(cfg.state_dir, purchases=20)
    conn = sqlite3.connect(cfg.state_dir / DB_NAME)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")  # what someone with the card and the sqlite3 tool can do
    seq = conn.execute("SELECT seq FROM journal WHERE kind = 'vend_succeeded' ORDER BY seq LIMIT 1 OFFSET 5"
                       ).fetchone()[0]
    conn.execute("UPDATE journal SET amount_cents = 1 WHERE seq = ?", (seq,))
    conn.commit()
    conn.close()
    assert main(["journal", "verify", "--state-dir", str(cfg.state_dir)]) == 1
    assert f"BROKEN at seq {seq}" in capsys.readouterr().err
    with Journal.open(cfg.state_dir) as journal, pytest.raises(JournalCorrupt, match=f"BROKEN at seq {seq}"):
        check_integrity(journal)
    with sim_unit(cfg) as unit:
        assert wait_for(lambda: "journal" in unit.loop.faults)
        assert f"seq {seq}" in unit.loop.faults["journal"]
        assert not unit.vmc.wait_until(lambda: unit.vmc.reader_state == "enabled", 1.0)  # the machine shows no reader
        assert not unit.vmc.vended
    assert unit.error is None


def test_the_start_up_check_is_incremental_from_the_verified_mark(tmp_path):
    state = tmp_path / "state"
    _journal_with_purchases(state, purchases=10)
    with Journal.open(state) as journal:
        assert "seq 1..30" in check_integrity(journal)
        session = journal.begin_session()
        journal.approve(session, "E1", "A1", 100)
        assert "seq 31..32" in check_integrity(journal)
    assert (state / MARK_NAME).read_text().count("\n") == 1  # compacted to the verified mark


def test_a_read_only_state_folder_is_named_as_such_by_every_command(tmp_path, capsys):
    """A card remounted read-only (a common SD-card failure): sync, verify and selftest say so, no traceback."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    cfg = make_cfg(tmp_path)
    provision_bundle(cfg, EMPLOYEES, TEMPLATES)
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if subprocess.run(["mount", "--bind", str(cfg.state_dir), str(frozen)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        assert subprocess.run(["mount", "-o", "remount,ro,bind", str(frozen)], capture_output=True).returncode == 0
        folder = tmp_path / "sync"
        folder.mkdir()
        for argv in (["sync", "--folder", str(folder)], ["journal", "verify"], ["selftest", "--sim"]):
            code = main([*argv, "--state-dir", str(frozen)])
            out = capsys.readouterr()
            assert code != 0 and "Traceback" not in out.out + out.err, argv
            assert "read-only file system" in out.out + out.err, (argv, out.out + out.err)
    finally:
        subprocess.run(["umount", "-l", str(frozen)], capture_output=True)
