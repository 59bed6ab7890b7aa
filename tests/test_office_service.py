"""The office's systemd unit: systemd-analyze accepts it, and its command line is one the CLI parses."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vendor_node.cli import build_parser

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "vendor-node-office.service"
INSTALLED_BINARY = "/opt/vendor-node/venv/bin/vendor-node"


def _exec_start() -> str:
    return next(line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_office_unit(tmp_path):
    binary = Path(sys.executable).with_name("vendor-node")
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    result = subprocess.run(["systemd-analyze", "verify", UNIT.name], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, "\n".join(problems)


def test_the_office_serves_on_loopback_behind_tls_with_a_real_server():
    words = shlex.split(_exec_start().replace("${VENDOR_NODE_OFFICE_DB}", "postgresql://office@db/office"))
    assert words[0] == INSTALLED_BINARY
    args = build_parser().parse_args(words[1:])
    assert (args.command, args.office_command) == ("office", "serve")
    assert args.bind.startswith("127.0.0.1:") and args.behind_tls and not args.demo
    text = UNIT.read_text()
    assert "User=vendor-node-office" in text and "NoNewPrivileges=yes" in text
