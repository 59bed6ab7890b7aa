"""Deletion you can prove, across the fleet: a running office (`office serve`, SQLite) and two units that
sync with it (templates enrolled from drawn hands at one, relayed sealed to the other), a manager's
deletion of one employee's biometric data and its propagation; then every file the office, the units and
the sync wrote (databases with -wal/-shm, logs, bundles, any backups) holds no template and no camera image
in the clear, the deleted employee's sealed template is gone from everything, and the audit row of the
deletion holds no biometric data."""
from __future__ import annotations

import html
import logging
import re
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

from test_office_support import OfficeProcess
from test_threat_model import _everything_written, _leaks, biometric_leaks, enroll_drawn_hands

from vendor_node.cli import main

pytest.importorskip("django")
pytestmark = pytest.mark.slow
PASSWORD = "scrub-test-long-password"


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch):
    monkeypatch.delenv("VENDOR_NODE_CONFIG", raising=False)
    monkeypatch.delenv("VENDOR_NODE_HARDWARE", raising=False)


def office_cli(office: OfficeProcess, *args: str, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-m", "vendor_node", "office", *args, "--db", office.db_url],
                          input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


class Manager:
    """A manager's browser session with the office: a cookie jar and Django's CSRF token."""

    def __init__(self, base: str, username: str):
        self.base, self.jar = base, CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.post("/login/", {"username": username, "password": PASSWORD})
        assert "/login/" not in self.get("/units/")[0], "the manager could not log in"

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(self.base + path, timeout=60) as answer:
            return answer.geturl(), answer.read().decode()

    def post(self, path: str, form: dict) -> str:
        page = self.get(path)[1]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({**form, "csrfmiddlewaretoken": token}).encode()
        with self.opener.open(urllib.request.Request(self.base + path, data=body), timeout=60) as answer:
            return answer.read().decode()


def unit_setup(tmp_path, name: str, office: OfficeProcess, fleet):
    state = tmp_path / name
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[unit]\nstate_dir = "{state}"\nunit_id = "{name}"\n\n[sync]\nserver_url = "{office.base}"\n\n'
                      f'[keys]\nmode = "otp"\notp_file = "{tmp_path / "boards" / name / "otp.key"}"\n')
    cli = lambda *argv: main(["--config", str(config), *argv])  # noqa: E731
    assert cli("keys", "program-otp", "--yes") == 0
    assert cli("provision", "--fleet-public-key", str(fleet / "fleet_public_key.pem"), "--unit-id", name,
               "--fleet-template-key", str(fleet / "fleet_template.key")) == 0
    return state, config, cli


def test_no_template_or_camera_image_in_the_clear_in_any_file_the_office_and_its_units_write(
        tmp_path, capsys, caplog):
    from vendor_node.config import load_config
    from vendor_node.hand.recognition import Recognizer
    from vendor_node.money.accounts import AccountStore
    from vendor_node.unit.keysource import unit_keystore, unit_template_guard

    caplog.set_level(logging.DEBUG)
    office_dir = tmp_path / "office"
    fleet = office_dir / "fleet-keys"  # the office's keys beside its database, as `office serve` finds them
    assert main(["fleet", "keygen", "--out", str(fleet)]) == 0
    office = OfficeProcess(f"sqlite:///{office_dir / 'office.db'}", None)
    office.log = office_dir / "office.log"  # the server's log is one of the files searched
    csv = tmp_path / "staff.csv"
    csv.write_text("employee_id,display_name,funds,status,funding,per_purchase_cap,per_day_cap\n"
                   "E1,Ann,10.00,,,,\nE2,Bob,10.00,,,,\n")
    office.start()
    try:
        office_cli(office, "create-user", "boss", "--role", "manager", stdin=PASSWORD + "\n")
        office_cli(office, "import-employees", str(csv))
        units = {}
        for name in ("U1", "U2"):
            units[name] = unit_setup(tmp_path, name, office, fleet)
            capsys.readouterr()
            assert units[name][2]("unit", "fingerprint") == 0
            fingerprint = capsys.readouterr().out.split("fingerprint", 1)[1].strip()
            office_cli(office, "register-unit", name, "--fingerprint", fingerprint)
        state1, config1, cli1 = units["U1"]
        state2, config2, cli2 = units["U2"]
        assert cli1("sync") == 0  # the office's employees arrive at U1
        frames = enroll_drawn_hands(cli1, tmp_path / "photos")
        assert cli1("sync") == 0  # sealed templates and the journal go up
        assert cli2("sync") == 0  # U2 gets both templates relayed, still sealed
        cfg1, cfg2 = load_config(config1), load_config(config2)
        with AccountStore.open(cfg2, keystore=unit_keystore(cfg2)) as store:
            assert set(store.templates()) == {"E1", "E2"}, "the office did not relay the templates"
        with sqlite3.connect(office_dir / "office.db") as db:
            sealed = dict(db.execute("SELECT e.employee_id, t.sealed FROM office_sealedtemplate t "
                                     "JOIN office_employee e ON t.employee_id = e.id").fetchall())
        sealed_e1 = sealed["E1"]
        db.close()

        manager = Manager(office.base, "boss")
        manager.post("/employees/E1/delete-biometrics/", {"confirm_id": "E1"})
        for cli in (cli1, cli2, cli1, cli2):  # each applies the deletion, then its heartbeat confirms it
            assert cli("sync") == 0
        deletions = re.search(r"Biometric deletions.*?</table>", manager.get("/units/")[1], re.S).group(0)
        row = re.search(r"<tr><td>E1</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td></tr>", deletions)
        assert row and html.unescape(row.group(1)) == "U1, U2" and row.group(2) == "-", deletions
        for cfg in (cfg1, cfg2):
            with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as store:
                assert set(store.templates()) == {"E2"}
        recognizer = Recognizer.from_config(cfg1)
        clear = {e: recognizer.enroll(f).template for e, f in frames.items()}
        guard = unit_template_guard(unit_keystore(cfg1))
        guarded = {e: guard.protect(t) for e, t in clear.items()}
        (office_dir / "backups").mkdir()  # an operator's online backup after the deletion: every page, free ones too
        with sqlite3.connect(office_dir / "office.db") as db, \
                sqlite3.connect(office_dir / "backups" / "office-after-deletion.db") as backup:
            db.backup(backup)
        db.close(), backup.close()
        running = _everything_written(office_dir, state1, state2)  # as a breach of the running office finds them
    finally:
        office.stop()
    stopped = _everything_written(office_dir, state1, state2)
    logs = (caplog.text + capsys.readouterr().out).encode()
    written = running + stopped
    assert biometric_leaks(((written, "files"), (logs, "logs")), clear, guarded, frames) == []
    assert _leaks(written + logs, sealed_e1[12:], "E1's deleted sealed template") == []
    assert _leaks(stopped, sealed["E2"][12:], "E2") != []  # the search does see the office's database

    with sqlite3.connect(office_dir / "office.db") as db:
        audit_rows = db.execute("SELECT user, target, detail FROM office_auditentry "
                                "WHERE action = 'delete_biometrics'").fetchall()
    db.close()
    assert [(user, target) for user, target, _ in audit_rows] == [("boss", "E1")]
    detail = audit_rows[0][2].encode()
    assert _leaks(detail, sealed_e1, "sealed template in the audit row") == []
    assert all(_leaks(detail, t, "template in the audit row") == [] for t in clear.values())
    assert not re.search(rb"[A-Za-z0-9+/=]{40,}", detail), detail  # no blob of any kind, only a sentence
