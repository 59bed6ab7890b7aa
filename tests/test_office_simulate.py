"""`simulate --office URL` end to end: a running office (--demo, SQLite), a simulated unit provisioned with
the office's fleet keys and registered by its fingerprint (the technician's commands), customers, the
sync; the office's ledger holds exactly what the unit's journal charged."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_office_support import OfficeProcess

pytest.importorskip("django")
pytestmark = pytest.mark.slow


def vendor_node(*args, timeout=300) -> str:
    done = subprocess.run([sys.executable, "-m", "vendor_node", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_simulated_unit_syncs_with_the_office(tmp_path):
    office = OfficeProcess(f"sqlite:///{tmp_path / 'office.db'}", None, demo=True).start()
    keys, unit = tmp_path / "fleet-keys", tmp_path / "unit"
    try:
        vendor_node("provision", "--state-dir", unit, "--unit-id", "sim-test-1",
                    "--fleet-public-key", keys / "fleet_public_key.pem", "--fleet-template-key", keys / "fleet_template.key")
        fingerprint = vendor_node("unit", "fingerprint", "--state-dir", unit).split("fingerprint", 1)[1].strip()
        office.command("register-unit", "sim-test-1", "--fingerprint", fingerprint)
        report_file = tmp_path / "report.json"
        out = vendor_node("simulate", "--office", office.base, "--state-dir", unit, "--customers", "8", "--synthetic",
                          "--quiet", "--report", report_file)
        report = json.loads(report_file.read_text())
        assert report["office"]["unit_id"] == "sim-test-1"
        assert report["office"]["charged_cents"] == report["charged_cents"] > 0, out
        again = vendor_node("simulate", "--office", office.base, "--state-dir", unit, "--customers", "4",
                            "--synthetic", "--quiet", "--report", report_file)  # the kept state goes on
        second = json.loads(report_file.read_text())
        assert second["office"]["charged_cents"] == report["charged_cents"] + second["charged_cents"], again
        assert second["office"]["unit_charged_cents_all_runs"] == second["office"]["charged_cents"]
        assert "sim-test-1" in office.command("register-unit", "sim-test-1", "--exist-ok",
                                              "--fingerprint", fingerprint)
    finally:
        office.stop()
