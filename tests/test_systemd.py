"""The systemd units: `systemd-analyze verify` accepts them, and they keep the properties the unit relies on."""
from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vendor_node.cli import build_parser

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
UNITS = ["vendor-node.service", "vendor-node-sync.service", "vendor-node-sync.timer"]  # what install.sh puts on a unit
ALL_UNITS = UNITS + ["vendor-node-office.service"]  # and the back office's, on an office server
INSTALLED_BINARY = "/opt/vendor-node/venv/bin/vendor-node"


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str
    # repeated keys (DeviceAllow=) would clash in configparser: keep the last, the test checks raw text for those
    parser.read_string((SYSTEMD / name).read_text(encoding="utf-8"))
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    # verify insists that ExecStart exists: point it at this checkout's vendor-node, as install.sh does at /opt
    binary = Path(sys.executable).with_name("vendor-node")
    assert binary.exists(), f"{binary}: install the package (pip install -e .) first"
    for name in ALL_UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED_BINARY, str(binary)), encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", *ALL_UNITS], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, "\n".join(problems)


def test_service_is_notify_with_a_watchdog_and_restarts():
    service = read_unit("vendor-node.service")["Service"]
    assert service["Type"] == "notify"
    assert 10 <= int(service["WatchdogSec"]) <= 120
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"] == f"{INSTALLED_BINARY} run"


def test_service_runs_as_a_dedicated_user_with_hardware_groups_and_hardening():
    service = read_unit("vendor-node.service")["Service"]
    assert service["User"] == "vendor-node"
    assert set(service["SupplementaryGroups"].split()) == {"video", "gpio", "dialout", "i2c"}
    assert service["StateDirectory"] == "vendor-node"
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "DevicePolicy": "closed"}.items():
        assert service[key] == value, key
    text = (SYSTEMD / "vendor-node.service").read_text(encoding="utf-8")
    for device in ("char-video4linux", "char-gpiochip", "char-ttyAMA", "char-ttyUSB", "char-i2c"):
        assert f"DeviceAllow={device} rw" in text


def test_stop_timeout_outlasts_a_vend_in_flight():
    from vendor_node.config import BoardConfig

    service = read_unit("vendor-node.service")["Service"]
    assert int(service["TimeoutStopSec"]) > BoardConfig().vend_outcome_timeout_s


def test_nightly_sync_timer():
    timer = read_unit("vendor-node-sync.timer")["Timer"]
    assert timer["Persistent"] == "true"
    assert timer["RandomizedDelaySec"]
    assert timer["Unit"] == "vendor-node-sync.service"
    assert "*-*-*" in timer["OnCalendar"]  # daily
    sync = read_unit("vendor-node-sync.service")["Service"]
    assert sync["Type"] == "oneshot" and sync["User"] == "vendor-node"


def test_sync_command_is_one_the_cli_accepts():
    command = shlex.split(read_unit("vendor-node-sync.service")["Service"]["ExecStart"])
    assert command[0] == INSTALLED_BINARY
    args = build_parser().parse_args(command[1:])
    assert args.command == "sync"


def test_install_script_installs_every_unit():
    script = (Path(__file__).resolve().parents[1] / "scripts" / "install.sh").read_text(encoding="utf-8")
    for name in UNITS:
        assert name in script
    for needed in ("python3-picamera2", "python3-lgpio", "--system-site-packages", "video,gpio,dialout"):
        assert needed in script


# --- the example config that install.sh puts in /etc/vendor-node ------------------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "firmware_assets" / "config.example.toml"


def test_config_example_parses_with_the_strict_loader_and_lists_every_key():
    import dataclasses
    import re

    from vendor_node.config import Config, parse_config

    text = EXAMPLE.read_text(encoding="utf-8")
    cfg = parse_config(text, str(EXAMPLE))
    defaults = Config()
    for section in dataclasses.fields(Config):
        values, default_values = getattr(cfg, section.name), getattr(defaults, section.name)
        assert re.search(rf"^\[{section.name}\]$", text, re.M), section.name
        for key in dataclasses.fields(type(default_values)):
            assert re.search(rf"^#?\s*{key.name}\s*=", text, re.M), f"{section.name}.{key.name} missing"
            if key.name != "assets_dir":  # the example points at the installed copy
                assert getattr(values, key.name) == getattr(default_values, key.name), f"{section.name}.{key.name}"
    # the commented-out keys are valid too once a technician sets them
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    parse_config(uncommented, "uncommented example")


DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _offline_security_supported() -> bool:
    if shutil.which("systemd-analyze") is None:
        return False
    probe = subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True, text=True, timeout=60)
    return "--offline" in probe.stdout


@pytest.mark.skipif(not _offline_security_supported(), reason="systemd-analyze security --offline needs systemd >= 250")
@pytest.mark.parametrize("name", ["vendor-node.service", "vendor-node-sync.service", "vendor-node-office.service"])
def test_security_exposure_is_at_most_2(tmp_path, name):
    binary = Path(sys.executable).with_name("vendor-node")
    text = (SYSTEMD / name).read_text(encoding="utf-8").replace(INSTALLED_BINARY, str(binary))
    (tmp_path / name).write_text(text, encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    import re

    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def test_service_waits_for_a_synchronized_clock_with_a_bounded_wait():
    unit = read_unit("vendor-node.service")["Unit"]
    assert "time-sync.target" in unit["Wants"].split()  # After= alone never pulls the target in
    assert "time-sync.target" in unit["After"].split()
    drop_in = configparser.ConfigParser()
    drop_in.read_string((DEPLOY / "time-wait-sync-bounded.conf").read_text(encoding="utf-8"))
    assert 0 < int(drop_in["Service"]["TimeoutStartSec"]) <= 300
    script = (Path(__file__).resolve().parents[1] / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert "systemd-time-wait-sync.service.d" in script and "enable systemd-time-wait-sync" in script


def test_log_lines_carry_their_priority_prefix():
    assert read_unit("vendor-node.service")["Service"]["SyslogLevelPrefix"] == "yes"


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed")
def test_udev_rule_parses_and_names_the_adapter(tmp_path):
    rule = DEPLOY / "99-vendor-mdb.rules"
    result = subprocess.run(["udevadm", "verify", str(rule)], capture_output=True, text=True, timeout=60)
    if "Unknown command" in result.stderr or "unknown" in result.stderr.lower() and result.returncode:
        pytest.skip("udevadm verify needs systemd >= 254")
    assert result.returncode == 0, result.stdout + result.stderr


def test_udev_rule_gives_the_uart_a_stable_name_and_the_dialout_group():
    lines = [line for line in (DEPLOY / "99-vendor-mdb.rules").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ['SUBSYSTEM=="tty", KERNEL=="ttyAMA0", SYMLINK+="vendor-mdb", GROUP="dialout", MODE="0660"']
