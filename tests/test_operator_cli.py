"""The operator's command line on a Pi: --version, --json where machines read, selftest's causes and exit code,
and log lines that carry their journald priority."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vendor_node.assets import active_manifest_path
from vendor_node import __version__
from vendor_node.cli import main
from vendor_node.cli.logs import JournalPrefixFormatter, prefix_lines, syslog_priority
from vendor_node.money.journal import Journal

CSV = "employee_id,display_name,funds,status,funding,per_purchase_cap,per_day_cap\nE1,Ann Smith,20.00,,,,\n"


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch):
    monkeypatch.delenv("VENDOR_NODE_CONFIG", raising=False)
    monkeypatch.delenv("VENDOR_NODE_HARDWARE", raising=False)


def run(*argv):
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def provisioned(tmp_path, capsys):
    """A unit right after `provision`: keys, no database, no bundle."""
    fleet, state = tmp_path / "fleet", tmp_path / "state"
    assert run("fleet", "keygen", "--out", str(fleet)) == 0
    assert run("provision", "--fleet-public-key", str(fleet / "fleet_public_key.pem"), "--unit-id", "U1",
               "--state-dir", str(state)) == 0
    capsys.readouterr()
    return types.SimpleNamespace(tmp=tmp_path, fleet=fleet, state=state)


def import_bundle(unit, capsys, version=7):
    (unit.tmp / "staff.csv").write_text(CSV)
    bundle = unit.tmp / "b.vnb"
    assert run("fleet", "bundle", "--employees", str(unit.tmp / "staff.csv"), "--signing-key",
               str(unit.fleet / "fleet_signing.key"), "--unit-id", "U1", "--version", str(version),
               "--out", str(bundle)) == 0
    assert run("accounts", "import", str(bundle), "--state-dir", str(unit.state)) == 0
    capsys.readouterr()


def selftest_json(capsys, *argv) -> tuple[int, dict]:
    code = run("selftest", "--sim", "--json", *argv)
    return code, json.loads(capsys.readouterr().out)


def test_version_names_package_model_and_bundle(provisioned, tmp_path, capsys, monkeypatch):
    config = tmp_path / "unit.toml"
    config.write_text(f'[unit]\nstate_dir = "{provisioned.state}"\n')
    assert run("--config", str(config), "--version") == 0
    out = capsys.readouterr().out
    manifest = json.loads(active_manifest_path(Path(__file__).resolve().parents[1] / "firmware_assets").read_text())
    assert f"vendor-node {__version__}" in out
    assert f"model {manifest['model_id']} {manifest['model_file']} sha256 {manifest['sha256'][:16]}" in out
    assert "bundle none" in out
    assert not (provisioned.state / "unit.db").exists()  # --version never creates a database
    import_bundle(provisioned, capsys, version=7)
    monkeypatch.setenv("VENDOR_NODE_CONFIG", str(config))  # the service's way of naming the config
    assert run("--version") == 0
    assert "bundle v7 (snapshot" in capsys.readouterr().out


def test_selftest_right_after_provision_names_the_next_step(provisioned, capsys):
    code, report = selftest_json(capsys, "--state-dir", str(provisioned.state))
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["keys"]["ok"] and checks["journal"]["ok"]
    assert not checks["accounts"]["ok"] and "accounts import" in checks["accounts"]["detail"]
    assert "run `vendor-node provision`" not in json.dumps(report)  # it is provisioned: never say otherwise
    assert code == report["failed"] == 1
    assert not (provisioned.state / "unit.db").exists()  # a selftest never creates a database
    import_bundle(provisioned, capsys)
    code, report = selftest_json(capsys, "--state-dir", str(provisioned.state))
    assert code == 0 and report["failed"] == 0 and report["passed"] == len(report["checks"]) == 10


def test_selftest_names_the_config_file_it_loaded(provisioned, tmp_path, capsys, monkeypatch):
    config = tmp_path / "from-env.toml"
    config.write_text('[unit]\nunit_id = "U1"\n')
    monkeypatch.setenv("VENDOR_NODE_CONFIG", str(config))
    run("selftest", "--sim", "--state-dir", str(provisioned.state))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("PASS  config") and str(config) in first and "defaults" not in first


def test_a_broken_config_is_a_failed_check_naming_the_file_and_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[unit]\nhardwear = "pi"\n')
    code, report = selftest_json(capsys, "--config", str(config))
    assert code == 1 and report["config"] == str(config)
    assert report["checks"][0]["name"] == "config" and not report["checks"][0]["ok"]
    assert "hardwear" in report["checks"][0]["detail"] and str(config) in report["checks"][0]["detail"]


def test_a_missing_serial_device_is_named_with_its_fix(provisioned, tmp_path, capsys):
    config = tmp_path / "pi.toml"
    config.write_text('[board]\nport = "/dev/vendor-mdb-missing-in-test"\n')
    code = run("--config", str(config), "selftest", "--state-dir", str(provisioned.state))
    out = capsys.readouterr().out
    serial = next(line for line in out.splitlines() if line.startswith("FAIL  serial"))
    assert "/dev/vendor-mdb-missing-in-test: no such device" in serial and "udev" in serial
    assert "link is closed" not in serial
    assert code == out.count("FAIL  ") >= 1  # exit code = number of failed checks


def test_accounts_list_json_is_integer_cents_and_no_template(provisioned, capsys):
    import_bundle(provisioned, capsys)
    assert run("accounts", "list", "--json", "--state-dir", str(provisioned.state)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bundle"]["version"] == 7 and report["in_service"] is True
    assert report["employees"] == [{"id": "E1", "name": "Ann Smith", "status": "active", "funding": "prepaid",
                                    "funds_left_cents": 2000, "has_template": False, "last_used_at": None}]


def test_journal_open_json(tmp_path, capsys):
    state = tmp_path / "state"
    with Journal.open(state) as journal:
        session = journal.begin_session()
        journal.approve(session, "e1", "A1", 250)
        journal.mark_outcome_unknown(session)
    assert run("journal", "open", "--json", "--state-dir", str(state)) == 0
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    assert [(s["state"], s["employee_id"], s["amount_cents"]) for s in sessions] == [("unknown", "e1", 250)]


def test_every_line_of_a_record_carries_its_syslog_priority():
    assert [syslog_priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING,
                                                 logging.INFO, logging.DEBUG)] == [2, 3, 4, 6, 7]
    formatter = JournalPrefixFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("vendor_node", logging.ERROR, __file__, 1, "camera: %s", ("gone\nsecond line",), None)
    assert formatter.format(record) == "<3>vendor_node: camera: gone\n<3>second line"
    assert prefix_lines("a", 4) == "<4>a"


def _run_with_stderr(tmp_path, code: str, journal: bool) -> str:
    """Run ``code`` in a child whose stderr is a file; with ``journal`` that file poses as journald's stream."""
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as stream:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "VENDOR_NODE_CONFIG")}
        if journal:
            info = os.fstat(stream.fileno())
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        subprocess.run([sys.executable, "-c", code], stderr=stream, stdout=subprocess.DEVNULL, env=env,
                       timeout=120, check=False)
    return err.read_text()


def test_under_systemd_errors_reach_the_journal_at_priority_err(tmp_path):
    """What `journalctl -p err` filters on: journald reads the <N> prefix of each stderr line."""
    code = ("from vendor_node.cli import main; import sys; "
            "sys.exit(main(['journal', 'verify', '--state-dir', %r]))" % str(tmp_path / "nowhere"))
    lines = _run_with_stderr(tmp_path, code, journal=True).splitlines()
    assert lines and all(line.startswith("<") for line in lines)
    assert any(line.startswith("<3>vendor-node journal:") and "no unit database" in line for line in lines)
    plain = _run_with_stderr(tmp_path, code, journal=False)
    assert "<3>" not in plain and "no unit database" in plain  # a technician's terminal stays readable


def test_under_systemd_a_crash_is_logged_at_priority_crit_with_its_traceback(tmp_path):
    code = ("from vendor_node.cli.logs import setup_logging; setup_logging(); "
            "import logging; logging.getLogger('vendor_node').warning('low funds'); raise RuntimeError('boom')")
    lines = _run_with_stderr(tmp_path, code, journal=True).splitlines()
    assert "<4>vendor_node: low funds" in lines
    assert lines[1].startswith("<2>vendor_node: unexpected error")
    assert any("RuntimeError: boom" in line for line in lines)
    assert all(line.startswith("<2>") for line in lines[1:])  # the traceback is not split into info lines


def test_clock_sync_state_reads_the_kernels_answer():
    from vendor_node.devices.clock_sync import TIME_ERROR, clock_sync_state

    assert clock_sync_state(lambda buffer: TIME_ERROR).synchronized is False
    assert "not synchronized" in clock_sync_state(lambda buffer: TIME_ERROR).detail
    assert clock_sync_state(lambda buffer: 0).synchronized is True  # TIME_OK
    assert clock_sync_state().synchronized in (True, False)  # this machine's real answer, whatever it is


def test_a_pi_whose_clock_is_not_synchronized_fails_the_clock_check(provisioned, capsys, monkeypatch):
    from vendor_node.devices import clock_sync

    monkeypatch.setattr(clock_sync, "clock_sync_state",
                        lambda: clock_sync.ClockSync(False, None, "clock not synchronized (test)"))
    run("selftest", "--state-dir", str(provisioned.state))  # hardware "pi" by default
    out = capsys.readouterr().out
    assert "FAIL  clock    clock not synchronized (test); the service waits for it" in out


def test_bench_json_prints_the_recorded_figures_and_keeps_the_table_on_stderr(capsys, monkeypatch):
    from vendor_node import bench
    from vendor_node.bench.figures import record

    def fake_bench(what, args, cfg):  # stands in for a slow benchmark; the wiring is what is tested
        print("figure table for people")
        record("RSS steady", 120.5, "MB", 150.0)
        record("trigger->board p95", 75.0, "ms", 60.0)
        return 1

    monkeypatch.setattr(bench, "run", fake_bench)
    assert run("bench", "loop", "--json") == 1
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report == {"bench": "loop", "targets_met": False, "figures": [
        {"name": "RSS steady", "value": 120.5, "unit": "MB", "target": 150.0, "met": True},
        {"name": "trigger->board p95", "value": 75.0, "unit": "ms", "target": 60.0, "met": False}]}
    assert "figure table for people" in out.err
    record("outside any collection", 1.0, "x")  # a no-op: nothing collects it, nothing breaks


def test_gpio_that_cannot_be_driven_names_the_library_to_install(provisioned, capsys):
    try:
        import lgpio  # noqa: F401
        pytest.skip("lgpio is installed: the pins may be drivable here")
    except ImportError:
        pass
    code, report = selftest_json(capsys, "--state-dir", str(provisioned.state))  # --sim: mock pins work
    assert {c["name"]: c["ok"] for c in report["checks"]}["gpio"] is True
    run("selftest", "--state-dir", str(provisioned.state))  # hardware "pi" on a machine that is not a Pi
    gpio = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(("FAIL  gpio", "PASS  gpio")))
    if gpio.startswith("FAIL"):
        assert "python3-lgpio" in gpio and "--system-site-packages" in gpio, gpio
