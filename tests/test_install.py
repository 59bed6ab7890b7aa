"""scripts/install.sh, the parts that run without installing anything: the udev rule it writes for a USB
adapter, its refusals, and the pinned requirements that keep the OS's numpy (never run as root here)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install.sh"


def _run(*args: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


def _fake_udevadm(tmp_path: Path, properties: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "udevadm").write_text(f"#!/bin/sh\ncat <<'EOF'\n{properties}EOF\n")
    (bin_dir / "udevadm").chmod(0o755)
    return bin_dir


def test_the_usb_adapter_rule_matches_vendor_product_and_serial(tmp_path):
    bin_dir = _fake_udevadm(tmp_path, "DEVNAME=/dev/ttyACM0\nID_VENDOR_ID=0483\nID_MODEL_ID=5740\n"
                                      "ID_SERIAL_SHORT=MDB123456\nSUBSYSTEM=tty\n")
    result = _run("--print-udev-rule", "/dev/ttyACM0", path_prefix=bin_dir)
    assert result.returncode == 0, result.stderr
    rules = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert rules == ['SUBSYSTEM=="tty", ATTRS{idVendor}=="0483", ATTRS{idProduct}=="5740", '
                     'ATTRS{serial}=="MDB123456", SYMLINK+="vendor-mdb", GROUP="dialout", MODE="0660"']


def test_a_device_that_is_not_usb_is_refused_with_the_reason(tmp_path):
    bin_dir = _fake_udevadm(tmp_path, "DEVNAME=/dev/ttyAMA0\nSUBSYSTEM=tty\n")
    result = _run("--print-udev-rule", "/dev/ttyAMA0", path_prefix=bin_dir)
    assert result.returncode == 1 and "not a USB serial adapter" in result.stderr


def test_bad_arguments_exit_2_before_anything_happens():
    result = _run("--frobnicate")
    assert result.returncode == 2 and "unknown argument: --frobnicate" in result.stderr
    result = _run("--build-wheelhouse", "/nonexistent/wheels", "--os", "buster")
    assert result.returncode == 2 and "--os must be bookworm or trixie" in result.stderr
    assert not Path("/nonexistent/wheels").exists()
    result = _run("--wheelhouse")
    assert result.returncode == 2 and "needs a value" in result.stderr


def test_pinned_requirements_never_bring_their_own_numpy():
    lines = [line.split("#")[0].strip() for line in (ROOT / "deploy" / "pi-requirements.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", pin) for pin in pins), pins
    assert not any(pin.lower().startswith("numpy") for pin in pins)  # the OS's numpy, never a wheel
    script = INSTALL.read_text()
    assert "--system-site-packages" in script and "os-numpy-constraint.txt" in script
    assert "/usr/lib/python3/dist-packages/" in script  # the install checks which numpy the venv imports
    assert "--no-deps" in script  # the package itself never re-resolves its dependencies


def test_a_32_bit_os_is_refused_with_the_reason(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uname").write_text("#!/bin/sh\necho armv7l\n")
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # were the check broken: the root check stops it
    for tool in ("uname", "id"):
        (bin_dir / tool).chmod(0o755)
    result = _run(path_prefix=bin_dir)
    assert result.returncode == 1, result.stderr
    assert "32-bit OS (armv7l)" in result.stderr and "no 32-bit ARM wheels" in result.stderr
