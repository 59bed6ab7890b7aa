"""`vendor-node simulate` end to end on drawn hands (and on real photos when ../shared/handdata is present)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vendor_node.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def simulate(tmp_path, *extra, customers=12, state="state", report="report.json"):
    args = ["simulate", "--customers", str(customers), "--state-dir", str(tmp_path / state),
            "--report", str(tmp_path / report), "--seed", "3", *extra]
    code = main(args)
    return code, json.loads((tmp_path / report).read_text())


def check_consistent(report):
    assert report["charges_equal_vends"] is True
    assert report["journal_chain_ok"] is True
    assert report["charged"] == report["vended"]
    assert report["purchases_recorded"] == report["customers"]
    lat = report["trigger_to_board_ms"]
    assert lat["n"] > 0 and lat["p50"] <= lat["p95"] <= lat["max"]
    ident = report["identification"]
    assert sum(v for k, v in ident.items() if k != "wrong_payer") == report["purchases_recorded"]
    assert ident["wrong_payer"] == 0  # nobody is ever charged for someone else's hand


def test_small_run_on_drawn_hands_prints_each_purchase_and_reports(tmp_path, capsys):
    code, report = simulate(tmp_path, "--synthetic", "--employees", "4")
    assert code == 0
    check_consistent(report)
    assert report["hand_images"] == "synthetic hands"
    out = capsys.readouterr().out
    assert out.count("purchase ") >= report["customers"]  # one readable line per purchase
    assert "charges == vends: True" in out
    for key in ("approved", "refused", "vended", "charged", "voided"):
        assert key in report


def test_state_dir_is_kept_between_runs(tmp_path):
    simulate(tmp_path, "--synthetic", "--employees", "3", customers=4)
    people = (tmp_path / "state" / "sim_people.json").read_text()
    code, report = simulate(tmp_path, "--synthetic", "--employees", "3", customers=4, report="second.json")
    assert code == 0
    check_consistent(report)
    assert (tmp_path / "state" / "sim_people.json").read_text() == people  # the same employees, not re-provisioned


def test_run_killed_midway_continues_from_a_consistent_state(tmp_path):
    state = tmp_path / "state"
    command = [sys.executable, "-m", "vendor_node.cli", "simulate", "--customers", "500", "--state-dir", str(state),
               "--synthetic", "--employees", "3", "--seed", "5"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 6 and time.monotonic() < deadline:  # a few purchases in, then the power goes
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.startswith("purchase ")
        assert seen >= 6, "the simulation printed no purchases"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    code, report = simulate(tmp_path, "--synthetic", "--employees", "3", customers=4, report="after.json")
    assert code == 0
    check_consistent(report)
    from vendor_node.money.journal import Journal

    with Journal.open(state) as journal:
        assert journal.verify().ok
        assert journal.open_approvals() == [] and journal.open_unapproved_sessions() == []


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--customers", "0", "--state-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--customers" in capsys.readouterr().err


@pytest.mark.handdata
def test_small_run_on_real_photos(tmp_path, handdata):
    code, report = simulate(tmp_path, "--dataset", str(handdata / "coep_dev"), "--employees", "6", customers=10)
    assert report["hand_images"] == "real photos"
    check_consistent(report)
    assert code == 0


def test_selftest_passes_on_a_provisioned_sim_unit_and_fails_on_an_empty_one(tmp_path, capsys):
    simulate(tmp_path, "--synthetic", "--employees", "2", customers=2)
    assert main(["selftest", "--sim", "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for check in ("config", "keys", "model", "camera", "gpio", "serial", "journal", "accounts"):
        assert f"PASS  {check}" in out
    empty = tmp_path / "empty"
    assert main(["selftest", "--sim", "--state-dir", str(empty)]) == 3  # exit code = number of failed checks
    out = capsys.readouterr().out
    assert out.count("FAIL  ") == 3 and "not provisioned" in out
    assert "FAIL  keys" in out and "FAIL  journal" in out and "PASS  serial" in out
    assert not empty.exists() or not any(empty.rglob("*.key"))  # a selftest never creates keys or a db
