"""The nightly sync against a real HTTP server on loopback and against a folder: safe to retry, steps independent."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.money.accounts import AccountStore
from vendor_node.money.bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, encode_bundle
from vendor_node.cli import main
from vendor_node.config import Config
from vendor_node.errors import SyncError
from vendor_node.money.journal_export import read_batch
from vendor_node.money.keys import KeyStore, TemplateCipher, public_key_to_pem
from vendor_node.money.sync import FolderTransport, HttpTransport, run_sync, transport_from

NOW = time.time()


class BackOffice(BaseHTTPRequestHandler):
    """A minimal back office: serves bundles newer than ?after=, stores what units upload."""

    bundles: dict[int, bytes] = {}
    received: list[tuple[str, bytes]] = []
    fail_journal = False

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        after = int(self.path.split("after=")[1])
        newer = sorted(v for v in self.bundles if v > after)
        if not newer:
            self.send_response(204)
            self.end_headers()
            return
        body = self.bundles[newer[0]]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/journal") and type(self).fail_journal:
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def server():
    BackOffice.bundles, BackOffice.received, BackOffice.fail_journal = {}, [], False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BackOffice)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fleet_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def cfg(tmp_path, fleet_key):
    cfg = Config().replace(unit={"state_dir": tmp_path / "state", "unit_id": "unit-7"})
    keys = KeyStore.from_config(cfg)
    keys.pin_fleet_public_key(public_key_to_pem(fleet_key.public_key()))
    keys.install_fleet_template_key(os.urandom(32))
    keys.write_unit_id("unit-7")
    return cfg


def make_bundle(fleet_key, version, employees):
    return encode_bundle(Bundle(kind="snapshot", version=version, base_version=None, created=NOW - 60, unit_id="unit-7",
                                expires=NOW + 86400, policy={}, employees=employees, deletions=[],
                                templates=[]), fleet_key)


def buy(cfg, employee_id, cents):
    with AccountStore.open(cfg) as store:
        journal = store.journal
        session = journal.begin_session()
        journal.approve(session, employee_id, "A1", cents)
        journal.succeed(session)


def test_http_sync_pulls_bundles_pushes_journal_and_is_safe_to_retry(cfg, server, fleet_key):
    BackOffice.bundles = {1: make_bundle(fleet_key, 1, [EmployeeRecord("E1", "Ann", funds_cents=2000)]),
                          2: make_bundle(fleet_key, 2, [EmployeeRecord("E1", "Ann", funds_cents=3000),
                                                        EmployeeRecord("E2", "Bob", funds_cents=900)])}
    transport = HttpTransport(server, "unit-7")
    report = run_sync(cfg, transport)
    assert report.ok, report.errors
    assert report.bundles_applied == [1, 2]
    with AccountStore.open(cfg) as store:
        assert store.current_bundle().version == 2
        assert {e.id for e in store.employees()} == {"E1", "E2"}

    buy(cfg, "E1", 150)
    report = run_sync(cfg, transport)
    assert report.ok and report.bundles_applied == [] and report.journal_entries_uploaded > 0
    journal_posts = [body for path, body in BackOffice.received if path.endswith("/journal")]
    assert len(journal_posts) == 1
    batch = json.loads(journal_posts[0])
    assert batch["body"]["unit_id"] == "unit-7"
    with AccountStore.open(cfg) as store:
        assert store.journal.unsynced_total_cents() == 0

    # Retrying with nothing new uploads nothing more.
    report = run_sync(cfg, transport)
    assert report.ok and report.journal_entries_uploaded == 0
    assert len([p for p, _ in BackOffice.received if p.endswith("/journal")]) == 1


def test_failed_upload_keeps_the_charges_unsynced_and_retries_the_same_batch(cfg, server, fleet_key):
    BackOffice.bundles = {1: make_bundle(fleet_key, 1, [EmployeeRecord("E1", "Ann", funds_cents=2000)])}
    transport = HttpTransport(server, "unit-7")
    run_sync(cfg, transport)
    buy(cfg, "E1", 200)
    BackOffice.fail_journal = True
    report = run_sync(cfg, transport)
    assert not report.ok and "push journal" in report.errors[0] and "503" in report.errors[0]
    with AccountStore.open(cfg) as store:
        assert store.journal.unsynced_total_cents() == 200  # nothing lost, nothing marked as sent
    BackOffice.fail_journal = False
    assert run_sync(cfg, transport).ok
    with AccountStore.open(cfg) as store:
        assert store.journal.unsynced_total_cents() == 0


def test_unreachable_server_is_a_clear_error_and_other_steps_still_run(cfg, fleet_key):
    report = run_sync(cfg, HttpTransport("http://127.0.0.1:9", "unit-7", timeout_s=2))
    assert not report.ok
    assert any("pull bundles" in e for e in report.errors)


def test_forged_bundle_from_the_server_is_refused_and_nothing_changes(cfg, server):
    forger = Ed25519PrivateKey.generate()
    BackOffice.bundles = {1: make_bundle(forger, 1, [EmployeeRecord("E9", "Mallory", funds_cents=99999)])}
    report = run_sync(cfg, HttpTransport(server, "unit-7"))
    assert not report.ok and "signature" in report.errors[0]
    with AccountStore.open(cfg) as store:
        assert store.employees() == [] and store.current_bundle() is None


def test_folder_sync_for_units_without_network(cfg, tmp_path, fleet_key):
    share = tmp_path / "usb"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "0001.bundle").write_bytes(
        make_bundle(fleet_key, 1, [EmployeeRecord("E1", "Ann", funds_cents=2000)]))
    assert run_sync(cfg, FolderTransport(share, "unit-7")).ok
    buy(cfg, "E1", 120)
    report = run_sync(cfg, FolderTransport(share, "unit-7"))
    assert report.ok and report.bundles_skipped == 1 and report.journal_entries_uploaded > 0
    batches = list((share / "outbox" / "unit-7").glob("journal-*.json"))
    assert len(batches) == 1
    with AccountStore.open(cfg) as store:
        body = read_batch(batches[0], store.keystore.load_signing_key().public_key())
    assert body["last_seq"] >= 1


def test_sync_target_errors():
    cfg = Config()
    with pytest.raises(SyncError, match="no sync target"):
        transport_from(cfg)
    with pytest.raises(SyncError, match="server_url"):
        HttpTransport("ftp://example", "u")
    with pytest.raises(SyncError, match="sync folder not found"):
        FolderTransport(Path("/nonexistent/share"), "u")


def test_sync_cli(cfg, tmp_path, fleet_key, capsys):
    share = tmp_path / "share"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "a.bundle").write_bytes(make_bundle(fleet_key, 3, [EmployeeRecord("E1", "Ann")]))
    assert main(["sync", "--state-dir", str(cfg.state_dir), "--folder", str(share)]) == 0
    assert "bundles applied: v3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["sync", "--folder", str(tmp_path / "missing")])
    assert info.value.code == 2
