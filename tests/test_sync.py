"""The nightly sync against a fake back office on loopback (written here from the contract, not the
Django one) and against a folder: signed requests, fleet-signed receipts, push before pull, bounded
time and size, other units' bundles, stale bundles, two units, and a folder that never overwrites."""
import base64
import hashlib
import json
import logging
import os
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vendor_node.cli import main
from vendor_node.config import Config
from vendor_node.errors import SyncError
from vendor_node.money.accounts import AccountStore
from vendor_node.money.bundle import Bundle, EmployeeRecord, JournalPosition, encode_bundle
from vendor_node.money.journal_schema import GENESIS_HASH
from vendor_node.money.keys import KeyStore, public_key_to_pem
from vendor_node.money.sync import canonical_json, run_sync, transport_from
from vendor_node.money.sync_transport import FolderTransport, HttpTransport, RunBudget

NOW = time.time()
MiB = 1024 * 1024


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed(key: Ed25519PrivateKey, receipt: dict) -> dict:
    return {"receipt": receipt, "signature": base64.b64encode(key.sign(canonical(receipt))).decode()}


class FakeOffice:
    """The contract's office in miniature: authenticates units, keeps a ledger from their journals."""

    def __init__(self, fleet_key: Ed25519PrivateKey):
        self.fleet_key = fleet_key
        self.receipt_key = fleet_key  # a fake office without the fleet key signs with another
        self.units: dict[str, str] = {}  # unit id -> fingerprint
        self.employees: dict[str, dict] = {}  # id -> {"name", "topups", "per_day_cap_cents"}
        self.charges: dict[tuple[str, int], tuple[str, int]] = {}  # (unit, seq) -> (employee, cents)
        self.heads: dict[str, tuple[int, str]] = {}
        self.templates: dict[str, list] = {}
        self.heartbeats: list[tuple[str, dict]] = []
        self.requests: list[tuple[str, str]] = []
        self.nonces: set[tuple[str, str]] = set()
        self.version = 0
        self.built: dict[tuple, bytes] = {}
        self.wrong_batch = False
        self.frozen_bundle: dict[str, bytes] = {}  # unit -> a bundle built earlier (served as is)
        self.failures: list[int] = []  # statuses to answer before serving normally

    def register(self, unit_id: str, fingerprint: str) -> None:
        self.units[unit_id] = fingerprint

    def balance(self, employee_id: str) -> int:
        spent = sum(c for e, c in self.charges.values() if e == employee_id)
        return self.employees[employee_id]["topups"] - spent

    def build_bundle(self, unit_id: str, for_unit: str | None = None, fresh: bool = False) -> bytes:
        """The unit's bundle from the ledger; a new version only when something in it changed (or ``fresh``)."""
        seq, digest = self.heads.get(unit_id, (0, GENESIS_HASH))
        staff = [EmployeeRecord(i, e["name"], funds_cents=max(0, self.balance(i)),
                                per_day_cap_cents=e.get("per_day_cap_cents")) for i, e in self.employees.items()]
        key = (unit_id, for_unit, seq, tuple(staff))
        if key in self.built and not fresh:
            return self.built[key]
        self.version += 1
        self.built[key] = encode_bundle(Bundle(kind="snapshot", version=self.version, created=time.time() - 1,
                                    expires=time.time() + 86400, unit_id=for_unit or unit_id,
                                    journal_position=JournalPosition(seq, digest), employees=staff), self.fleet_key)
        return self.built[key]

    # --- the API ---------------------------------------------------------------------
    def authenticate(self, handler, body: bytes) -> str | None:
        h = handler.headers
        unit = h.get("X-VN-Unit")
        try:
            raw = base64.b64decode(h["X-VN-Public-Key"], validate=True)
            message = "\n".join(["vendor-node-request-v1", handler.command, handler.path, h["X-VN-Timestamp"],
                                 h["X-VN-Nonce"], hashlib.sha256(body).hexdigest()]).encode()
            Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(h["X-VN-Signature"]), message)
        except (KeyError, ValueError, InvalidSignature):
            return None
        fresh = abs(int(h["X-VN-Timestamp"]) - time.time()) <= 300 and (unit, h["X-VN-Nonce"]) not in self.nonces
        if self.units.get(unit) != hashlib.sha256(raw).hexdigest() or not fresh or len(h["X-VN-Nonce"]) != 32:
            return None
        if not handler.path.startswith(f"/api/v1/units/{unit}/"):
            return None
        self.nonces.add((unit, h["X-VN-Nonce"]))
        return unit

    def journal(self, unit: str, data: bytes) -> tuple[int, dict]:
        document = json.loads(data)
        body = document["body"]
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(body["unit_public_key"]))
        public.verify(base64.b64decode(document["signature"]), canonical(body))
        last_seq, last_hash = self.heads.get(unit, (0, GENESIS_HASH))
        if body["last_seq"] > last_seq:
            if body["first_seq"] != last_seq + 1 or body["prev_hash"] != last_hash:
                return 409, {"error": "journal gap"}
            for entry in body["entries"]:
                if entry["kind"] == "vend_succeeded" or (entry["kind"] == "review_settled" and entry["amount_cents"]):
                    self.charges[(unit, entry["seq"])] = (entry["employee_id"], entry["amount_cents"])
            self.heads[unit] = (body["last_seq"], body["last_hash"])
        receipt = {"kind": "journal", "unit_id": unit, "batch_id": body["batch_id"], "last_seq": body["last_seq"],
                   "last_hash": body["last_hash"], "ingested_at": time.time()}
        if self.wrong_batch:
            receipt.update(batch_id="00000001-00000001-feedfeedfeedfeed", last_seq=1)
        return 200, signed(self.receipt_key, receipt)

    def serve(self) -> "Served":
        return Served(self)


class Handler(BaseHTTPRequestHandler):
    office: FakeOffice

    def log_message(self, *args):
        pass

    def answer(self, status: int, payload=None, raw: bytes | None = None):
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_api(self, body: bytes):
        office = self.office
        office.requests.append((self.command, self.path))
        unit = office.authenticate(self, body)
        if unit is None:
            return self.answer(401, {"error": "unknown unit, bad key or bad signature"})
        if office.failures:
            return self.answer(office.failures.pop(0), {"error": "busy"})
        action = self.path.split(f"/api/v1/units/{unit}/", 1)[1]
        if self.command == "POST" and action == "journal":
            return self.answer(*office.journal(unit, body))
        if self.command == "POST" and action == "templates":
            document = json.loads(body)
            office.templates.setdefault(unit, []).extend(document["templates"])
            receipt = {"kind": "templates", "unit_id": unit, "accepted": [t["employee_id"] for t in document["templates"]],
                       "revocations": [r["employee_id"] for r in document["revocations"]]}
            return self.answer(200, signed(office.receipt_key, receipt))
        if self.command == "POST" and action == "heartbeat":
            office.heartbeats.append((unit, json.loads(body)))
            return self.answer(200, {"ok": True})
        if self.command == "GET" and action.startswith("bundle?after="):
            after = int(action.split("=")[1])
            if unit in office.frozen_bundle:  # served as it is, whatever it holds
                return self.answer(200, raw=office.frozen_bundle.pop(unit))
            data = office.build_bundle(unit)
            from vendor_node.money.bundle import decode_bundle
            if decode_bundle(data, office.fleet_key.public_key()).version <= after:
                return self.answer(204)
            return self.answer(200, raw=data)
        return self.answer(404, {"error": "no such endpoint"})

    def do_GET(self):
        self.handle_api(b"")

    def do_POST(self):
        self.handle_api(self.rfile.read(int(self.headers["Content-Length"])))


class Served:
    def __init__(self, office, handler=Handler, tls=None):
        handler = type("BoundHandler", (handler,), {"office": office})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fleet_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def office(fleet_key):
    office = FakeOffice(fleet_key)
    office.employees = {"E1": {"name": "Ann", "topups": 2000}, "E2": {"name": "Bob", "topups": 900}}
    served = office.serve()
    office.url = served.url
    yield office
    served.close()


def provision(tmp_path, fleet_key, unit_id="unit-7", office=None, **sync):
    cfg = Config().replace(unit={"state_dir": tmp_path / unit_id, "unit_id": unit_id}, sync=sync or {})
    keys = KeyStore.from_config(cfg)
    keys.pin_fleet_public_key(public_key_to_pem(fleet_key.public_key()))
    keys.install_fleet_template_key(os.urandom(32))
    keys.write_unit_id(unit_id)
    signing = keys.ensure_signing_key()
    if office is not None:
        from vendor_node.money.keys import fingerprint
        office.register(unit_id, fingerprint(signing.public_key()))
    return cfg


@pytest.fixture
def cfg(tmp_path, fleet_key, office):
    return provision(tmp_path, fleet_key, office=office)


def http(cfg, url, budget_s=60.0, **options):
    signing = KeyStore.from_config(cfg).load_signing_key()
    return HttpTransport(url, cfg.unit.unit_id, signing, RunBudget(budget_s), **options)


def buy(cfg, employee_id, cents):
    with AccountStore.open(cfg) as store:
        journal = store.journal
        session = journal.begin_session()
        journal.approve(session, employee_id, "A1", cents)
        journal.succeed(session)


def state(cfg):
    with AccountStore.open(cfg) as store:
        return {"unsynced": store.journal.unsynced_total_cents(), "uploaded": store.journal.uploaded_upto_seq(),
                "funds": {e.id: store.funds_left_cents(e) for e in store.employees() if e.status != "deleted"},
                "queued": [r[0] for r in store.pending_uploads()]}


# --- the whole round ----------------------------------------------------------------------
def test_signed_round_push_before_pull_receipt_moves_the_mark(cfg, office):
    report = run_sync(cfg, http(cfg, office.url))
    assert report.ok, report.errors
    assert report.bundles_applied == [1] and report.heartbeat_sent
    assert state(cfg)["funds"] == {"E1": 2000, "E2": 900}

    buy(cfg, "E1", 150)
    with AccountStore.open(cfg) as store:
        store.enroll("E2", b"t" * 64, "consent-1")
    office.requests.clear()
    report = run_sync(cfg, http(cfg, office.url))
    assert report.ok, report.errors
    assert [r[1].rsplit("/", 1)[1] for r in office.requests] == ["journal", "templates", "heartbeat", "bundle?after=1"]
    assert report.journal_entries_uploaded == 3 and report.templates_uploaded == 1
    assert office.balance("E1") == 1850 and office.heads["unit-7"][0] == 3
    now = state(cfg)
    assert now["unsynced"] == 0 and now["uploaded"] == 3 and now["queued"] == []
    assert now["funds"]["E1"] == 1850  # the office's balance at position 3: the purchase not counted twice
    unit, beat = office.heartbeats[-1]
    assert unit == "unit-7" and beat["journal_ok"] and beat["journal_head_seq"] == 3
    assert beat["bundle_version"] == 1 and beat["out_of_service"] is None
    assert beat["key_mode"] == KeyStore.from_config(cfg).key_mode
    assert beat["faults"] == [] and abs(beat["clock"] - time.time()) < 60
    assert set(beat) == {"firmware", "model", "bundle_version", "last_purchase_at", "out_of_service", "faults",
                         "free_disk_bytes", "journal_ok", "journal_head_seq", "clock", "key_mode"}

    office.requests.clear()
    assert run_sync(cfg, http(cfg, office.url)).journal_entries_uploaded == 0  # nothing new: nothing sent
    assert [r[1].rsplit("/", 1)[1] for r in office.requests] == ["heartbeat", "bundle?after=2"]


def test_an_unregistered_unit_is_refused_with_the_offices_message(tmp_path, fleet_key, office):
    stranger = provision(tmp_path, fleet_key, unit_id="unit-9")  # never registered
    buy_cfg = stranger
    report = run_sync(buy_cfg, http(stranger, office.url))
    assert not report.ok
    assert any("401" in e and "unknown unit, bad key or bad signature" in e for e in report.errors)


def test_a_fake_office_without_the_fleet_key_moves_nothing(cfg, office):
    run_sync(cfg, http(cfg, office.url))
    buy(cfg, "E1", 700)
    office.receipt_key = Ed25519PrivateKey.generate()
    report = run_sync(cfg, http(cfg, office.url))
    assert any("not signed by the pinned fleet key" in e for e in report.errors)
    after = state(cfg)
    assert after["unsynced"] == 700 and after["uploaded"] == 0  # the cap on unsynced charges still counts them
    with AccountStore.open(cfg) as store:
        policy_cap = store.policy()["unsynced_total_cap_cents"]
        assert store.spendable_cents("E2").funds_left_cents <= policy_cap - 700


def test_a_receipt_for_another_batch_moves_nothing(cfg, office):
    run_sync(cfg, http(cfg, office.url))
    buy(cfg, "E1", 300)
    buy(cfg, "E1", 200)
    office.wrong_batch = True
    report = run_sync(cfg, http(cfg, office.url))
    assert any("receipt names batch 00000001-00000001" in e for e in report.errors)
    assert state(cfg)["unsynced"] == 500 and state(cfg)["uploaded"] == 0
    office.wrong_batch = False
    assert run_sync(cfg, http(cfg, office.url)).ok  # the same batch again, now acknowledged
    assert state(cfg)["unsynced"] == 0


def test_a_busy_office_is_retried_with_backoff_within_the_run(cfg, office):
    office.failures = [503]
    report = run_sync(cfg, http(cfg, office.url))
    assert report.ok, report.errors


# --- other units, stale bundles, two units ------------------------------------------------
def test_another_units_bundle_is_refused_and_nothing_is_deleted(cfg, office):
    run_sync(cfg, http(cfg, office.url))
    with AccountStore.open(cfg) as store:
        store.enroll("E1", b"e" * 64, "consent-1")
    office.frozen_bundle["unit-7"] = office.build_bundle("unit-7", for_unit="unit-other")
    office.receipt_key = Ed25519PrivateKey.generate()  # and keep the template queued to see it survive
    report = run_sync(cfg, http(cfg, office.url))
    assert any("built for unit 'unit-other', but this is unit 'unit-7'" in e for e in report.errors)
    after = state(cfg)
    assert after["funds"] == {"E1": 2000, "E2": 900} and after["queued"] == ["E1"]


def test_a_bundle_built_before_the_last_upload_arrived_gives_no_money_back(tmp_path, fleet_key, office):
    """The issue's case: 5.00 prepaid, 4.50 spent; the next bundle was built before the upload arrived."""
    office.employees = {"E1": {"name": "Ann", "topups": 500, "per_day_cap_cents": 10_000}}
    cfg = provision(tmp_path, fleet_key, office=office)
    assert run_sync(cfg, http(cfg, office.url)).ok
    office.employees["E1"]["name"] = "Ann B."  # an edit in the office: a new bundle, built now ...
    stale = office.build_bundle("unit-7")  # ... with funds 5.00 at position 0
    buy(cfg, "E1", 450)
    office.frozen_bundle["unit-7"] = stale
    report = run_sync(cfg, http(cfg, office.url))
    assert report.ok and report.bundles_applied == [2] and report.journal_entries_uploaded == 3
    with AccountStore.open(cfg) as store:
        assert store.funds_left_cents(store.employee("E1")) == 50
        assert store.authorize("E1", 450).reason_code == "insufficient_funds"
        assert store.authorize("E1", 50).approved


def test_two_units_charging_one_employee_on_one_day(tmp_path, fleet_key, office):
    office.employees = {"E1": {"name": "Ann", "topups": 1000}}
    a = provision(tmp_path, fleet_key, "unit-a", office=office)
    b = provision(tmp_path, fleet_key, "unit-b", office=office)
    for unit in (a, b):
        assert run_sync(unit, http(unit, office.url)).ok
    buy(a, "E1", 600)
    buy(b, "E1", 300)
    for unit in (a, b, a):
        assert run_sync(unit, http(unit, office.url)).ok
    assert office.balance("E1") == 100
    assert state(a)["funds"]["E1"] == 100 and state(b)["funds"]["E1"] == 100
    buy(b, "E1", 100)  # b spends the last 1.00; a learns it at its next sync
    assert run_sync(b, http(b, office.url)).ok and run_sync(a, http(a, office.url)).ok
    with AccountStore.open(a) as store:
        assert store.authorize("E1", 1).reason_code == "insufficient_funds"


def test_between_syncs_the_daily_cap_bounds_what_two_units_approve(tmp_path, fleet_key, office):
    office.employees = {"E1": {"name": "Ann", "topups": 500, "per_day_cap_cents": 400}}
    units = [provision(tmp_path, fleet_key, f"unit-{n}", office=office) for n in "ab"]
    for unit in units:
        assert run_sync(unit, http(unit, office.url)).ok
    for unit in units:  # neither knows of the other's purchase
        with AccountStore.open(unit) as store:
            assert store.spendable_cents("E1").funds_left_cents == 400
        buy(unit, "E1", 400)
    for unit in units + units[:1]:
        assert run_sync(unit, http(unit, office.url)).ok
    assert office.balance("E1") == -300 >= -(len(units) - 1) * 400  # the documented bound
    assert all(state(u)["funds"]["E1"] == 0 for u in units)


# --- a hostile server: size and time ------------------------------------------------------
class Hostile(BaseHTTPRequestHandler):
    mode = "huge"
    sent = 0
    stop = threading.Event()

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        self.send_response(200)
        if cls.mode == "huge":
            self.send_header("Content-Length", str(700 * MiB))
        self.end_headers()
        chunk = b"\0" * MiB if cls.mode != "drip" else b"\0"
        try:
            while not cls.stop.is_set() and cls.sent < 700 * MiB:
                self.wfile.write(chunk)
                self.wfile.flush()
                cls.sent += len(chunk)
                if cls.mode == "drip":
                    cls.stop.wait(1.0)  # the server's behaviour under test: one byte a second
        except OSError:
            pass

    do_POST = do_GET


@pytest.fixture
def hostile():
    Hostile.sent, Hostile.stop = 0, threading.Event()
    served = Served(None, Hostile)
    yield served.url
    Hostile.stop.set()
    served.close()


@pytest.mark.parametrize("mode", ["huge", "undeclared"])
def test_a_700_mb_answer_is_refused_at_the_limit_and_memory_stays_flat(cfg, hostile, mode):
    Hostile.mode = mode
    transport = http(cfg, hostile, max_bundle_bytes=MiB)
    tracemalloc.start()
    try:
        with pytest.raises(SyncError, match="limit"):
            list(transport.bundles(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while refusing a 700 MB answer"
    assert Hostile.sent < 100 * MiB  # it stopped reading long before the end


def test_a_dripping_server_cannot_hold_the_run_past_its_budget(cfg, hostile):
    Hostile.mode = "drip"
    budget_s = 2.0
    started = time.monotonic()
    report = run_sync(cfg, http(cfg, hostile, budget_s=budget_s, timeout_s=30.0))
    elapsed = time.monotonic() - started
    assert not report.ok and any("out of time" in e or "took longer" in e for e in report.errors)
    assert elapsed < budget_s + 10, f"the run took {elapsed:.1f} s on a {budget_s} s budget"


# --- targets and transports ---------------------------------------------------------------
def test_sync_targets(tmp_path, fleet_key, cfg):
    assert transport_from(Config()) is None  # nothing configured: nothing to do
    with pytest.raises(SyncError, match="plain http:// to office.example is refused"):
        http(cfg, "http://office.example")
    assert http(cfg, "http://office.example", allow_insecure_http=True).host == "office.example"
    assert http(cfg, "https://office.example/vn").base_path == "/vn/api/v1/units/unit-7"
    with pytest.raises(SyncError, match="https:// URL"):
        http(cfg, "ftp://office.example")
    with pytest.raises(SyncError, match="sync folder not found"):
        FolderTransport(Path("/nonexistent/share"), "u")


def test_no_sync_target_exits_0_with_one_line(tmp_path, fleet_key, caplog):
    cfg = provision(tmp_path, fleet_key)
    with caplog.at_level(logging.INFO, logger="vendor_node"):
        assert main(["sync", "--state-dir", str(cfg.state_dir)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("vendor_node")]
    assert len(lines) == 1 and "nothing to do" in lines[0]


def test_unit_fingerprint_command_matches_the_key(tmp_path, fleet_key, capsys):
    cfg = provision(tmp_path, fleet_key)
    assert main(["unit", "fingerprint", "--state-dir", str(cfg.state_dir)]) == 0
    out = capsys.readouterr().out
    from vendor_node.money.keys import fingerprint
    expected = fingerprint(KeyStore.from_config(cfg).load_signing_key().public_key())
    printed = "".join(out.split("fingerprint", 1)[1].split())
    assert printed == expected and "unit unit-7" in out


# --- the folder transport -----------------------------------------------------------------
def test_folder_sync_twice_in_a_second_overwrites_nothing(tmp_path, fleet_key, office):
    cfg = provision(tmp_path, fleet_key)
    share = tmp_path / "usb"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "v1.vnb").write_bytes(office.build_bundle("unit-7"))
    (share / "inbox" / "v2.vnb").write_bytes(office.build_bundle("unit-7", for_unit="unit-other"))
    (share / "inbox" / "notes.txt").write_text("hello")
    (share / "inbox" / ".v3.vnb.tmp").write_bytes(b"half a bundle being copied in")
    report = run_sync(cfg, FolderTransport(share, "unit-7"))
    assert report.ok, report.errors
    assert report.bundles_applied == [1]
    assert any("v2.vnb" in s and "built for unit 'unit-other'" in s for s in report.skipped)
    assert any("notes.txt" in s and "not a bundle file name" in s for s in report.skipped)
    assert len(report.skipped) == 2  # a file still being written (a dot name) is not one to warn about

    buy(cfg, "E1", 120)
    with AccountStore.open(cfg) as store:
        store.enroll("E1", b"a" * 64, "consent-1")
    first = run_sync(cfg, FolderTransport(share, "unit-7"))
    with AccountStore.open(cfg) as store:
        store.enroll("E2", b"b" * 64, "consent-1")
    second = run_sync(cfg, FolderTransport(share, "unit-7"))  # the same second, most likely
    assert first.ok and second.ok, (first.errors, second.errors)
    outbox = share / "outbox" / "unit-7"
    templates = sorted(outbox.glob("templates-*.json"))
    assert len(templates) == 2  # two documents, neither replaced
    assert {len(json.loads(p.read_text())["templates"]) for p in templates} == {1, 2}
    assert len(list(outbox.glob("journal-*.json"))) == 1 and len(list(outbox.glob("heartbeat-*.json"))) == 3
    assert state(cfg)["unsynced"] == 120 and state(cfg)["queued"] == ["E1", "E2"]  # no receipt yet

    # the office imports the outbox and leaves its signed receipts for this unit
    batch = json.loads(next(outbox.glob("journal-*.json")).read_bytes())["body"]
    receipts = share / "inbox" / "receipts" / "unit-7"
    receipts.mkdir(parents=True)
    (receipts / "journal.json").write_text(json.dumps(signed(office.fleet_key, {
        "kind": "journal", "unit_id": "unit-7", "batch_id": batch["batch_id"], "last_seq": batch["last_seq"],
        "last_hash": batch["last_hash"], "ingested_at": time.time()})))
    (receipts / "templates.json").write_text(json.dumps(signed(office.fleet_key, {
        "kind": "templates", "unit_id": "unit-7", "accepted": ["E1", "E2"], "revocations": []})))
    third = run_sync(cfg, FolderTransport(share, "unit-7"))
    assert third.ok, third.errors
    assert third.journal_entries_uploaded == 3 and third.templates_uploaded == 2
    assert state(cfg)["unsynced"] == 0 and state(cfg)["queued"] == []


def test_folder_receipt_signed_by_another_key_is_refused(tmp_path, fleet_key, office):
    cfg = provision(tmp_path, fleet_key)
    share = tmp_path / "usb"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "v1.vnb").write_bytes(office.build_bundle("unit-7"))
    run_sync(cfg, FolderTransport(share, "unit-7"))
    buy(cfg, "E1", 120)
    run_sync(cfg, FolderTransport(share, "unit-7"))
    batch = json.loads(next((share / "outbox" / "unit-7").glob("journal-*.json")).read_bytes())["body"]
    receipts = share / "inbox" / "receipts" / "unit-7"
    receipts.mkdir(parents=True)
    (receipts / "forged.json").write_text(json.dumps(signed(Ed25519PrivateKey.generate(), {
        "kind": "journal", "unit_id": "unit-7", "batch_id": batch["batch_id"], "last_seq": batch["last_seq"],
        "last_hash": batch["last_hash"], "ingested_at": time.time()})))
    buy(cfg, "E1", 80)
    report = run_sync(cfg, FolderTransport(share, "unit-7"))
    assert any("not signed by the pinned fleet key" in e for e in report.errors)
    assert state(cfg)["unsynced"] == 200
    assert report.journal_entries_delivered == 3 and report.heartbeat_sent  # the bad file blocks nothing else


def test_sync_cli_with_a_folder(tmp_path, fleet_key, office, capsys):
    cfg = provision(tmp_path, fleet_key)
    share = tmp_path / "share"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "a.vnb").write_bytes(office.build_bundle("unit-7"))
    assert main(["sync", "--state-dir", str(cfg.state_dir), "--folder", str(share)]) == 0
    assert "bundles applied: v1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["sync", "--folder", str(tmp_path / "missing")])
    assert info.value.code == 2


def test_a_confirmed_revocation_is_not_sent_again(cfg, office):
    """An old revocation resent forever would delete a later enrollment made at another unit."""
    run_sync(cfg, http(cfg, office.url))
    with AccountStore.open(cfg) as store:
        store.enroll("E1", b"a" * 64, "consent-1")
    run_sync(cfg, http(cfg, office.url))
    with AccountStore.open(cfg) as store:
        assert store.unenroll("E1")
    report = run_sync(cfg, http(cfg, office.url))
    assert report.ok and report.revocations_sent == 1
    assert run_sync(cfg, http(cfg, office.url)).revocations_sent == 0
    office.receipt_key = Ed25519PrivateKey.generate()  # an unconfirmed revocation is sent again
    with AccountStore.open(cfg) as store:
        store.enroll("E2", b"b" * 64, "consent-1")
        store.unenroll("E2")
    assert run_sync(cfg, http(cfg, office.url)).revocations_sent == 1
    office.receipt_key = office.fleet_key
    assert run_sync(cfg, http(cfg, office.url)).revocations_sent == 1
    assert run_sync(cfg, http(cfg, office.url)).revocations_sent == 0


def test_an_office_without_a_server_signs_folder_receipts_with_the_cli(tmp_path, fleet_key, office, capsys):
    from vendor_node.money.keys import fingerprint, signing_key_to_pem

    cfg = provision(tmp_path, fleet_key)
    key_file = tmp_path / "fleet_signing.key"
    key_file.write_bytes(signing_key_to_pem(fleet_key))
    key_file.chmod(0o600)
    share = tmp_path / "usb"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "v1.vnb").write_bytes(office.build_bundle("unit-7"))
    run_sync(cfg, FolderTransport(share, "unit-7"))
    buy(cfg, "E1", 250)
    with AccountStore.open(cfg) as store:
        store.enroll("E2", b"b" * 64, "consent-1")
    run_sync(cfg, FolderTransport(share, "unit-7"))
    outbox = share / "outbox" / "unit-7"
    uploads = sorted(outbox.glob("journal-*.json")) + sorted(outbox.glob("templates-*.json"))
    unit_fp = fingerprint(KeyStore.from_config(cfg).load_signing_key().public_key())
    receipts = share / "inbox" / "receipts" / "unit-7"
    argv = ["fleet", "receipt", *map(str, uploads), "--unit-id", "unit-7", "--signing-key", str(key_file),
            "--out", str(receipts)]
    assert main(argv + ["--unit-fingerprint", "ab" * 32]) == 1  # not the unit's key: no receipt
    assert "not signed by the key registered for unit-7" in capsys.readouterr().err
    assert main(argv + ["--unit-fingerprint", unit_fp]) == 0
    out = capsys.readouterr().out
    with AccountStore.open(cfg) as store:
        seq, digest = store.journal.head()
    assert f"--journal-position {seq}:{digest}" in out and "E1 2.50" in out
    report = run_sync(cfg, FolderTransport(share, "unit-7"))
    assert report.ok and report.journal_entries_uploaded == 3 and report.templates_uploaded == 1
    assert state(cfg)["unsynced"] == 0 and state(cfg)["queued"] == []


def make_tls_files(folder: Path, host="127.0.0.1"):
    """A private CA and a server certificate for ``host`` signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test office CA")).issuer_name(name("test office CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(2).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "ca.pem", folder / "server.pem"


def test_https_to_an_office_with_a_private_ca(tmp_path, fleet_key, office):
    import ssl

    ca_file, server_pem = make_tls_files(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server_pem)
    served = Served(office, tls=tls)
    try:
        url = served.url
        cfg = provision(tmp_path, fleet_key, office=office)
        report = run_sync(cfg, http(cfg, url))  # the system's CAs do not know this office
        assert not report.ok and any("certificate does not verify" in e for e in report.errors)
        report = run_sync(cfg, http(cfg, url, ca_file=ca_file))
        assert report.ok, report.errors
        assert report.bundles_applied == [1] and report.heartbeat_sent
    finally:
        served.close()


# --- the money invariant under random interleavings ---------------------------------------------
class InProcess:
    """The fake office without sockets (the transport is tested above): many random runs stay fast."""

    kind = "server"

    def __init__(self, office: FakeOffice, unit_id: str):
        self.office, self.unit_id = office, unit_id

    def push_journal(self, batch: bytes, batch_id: str) -> dict:
        status, answer = self.office.journal(self.unit_id, batch)
        if status != 200:
            raise SyncError(f"journal: {status} {answer}")
        return answer

    def push_templates(self, document: bytes) -> dict:
        return signed(self.office.receipt_key, {"kind": "templates", "unit_id": self.unit_id, "accepted": [],
                                                "revocations": []})

    def heartbeat(self, document: bytes) -> dict:
        return {"ok": True}

    def receipts(self) -> list:
        return []

    def bundles(self, after_version: int):
        data = self.office.frozen_bundle.pop(self.unit_id, None) or self.office.build_bundle(self.unit_id)
        from vendor_node.money.bundle import decode_bundle
        if decode_bundle(data, self.office.fleet_key.public_key()).version > after_version:
            yield "office", data


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("buy"), st.integers(0, 2), st.sampled_from(["E1", "E2"]), st.integers(1, 400)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.booleans())), min_size=1, max_size=30)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_money_invariant_under_random_interleavings(tmp_path_factory, actions):
    """Three units, stale bundles at random: no unit ever believes in money it has itself spent, the
    office's overdraft stays within (units - 1) x the daily cap, and after a full sync all agree."""
    import datetime

    tmp = tmp_path_factory.mktemp("units")
    fleet = Ed25519PrivateKey.generate()
    office = FakeOffice(fleet)
    day_cap = 500
    office.employees = {"E1": {"name": "Ann", "topups": 1000, "per_day_cap_cents": day_cap},
                        "E2": {"name": "Bob", "topups": 300, "per_day_cap_cents": day_cap}}
    units = [provision(tmp, fleet, f"unit-{n}") for n in range(3)]
    own = {(u.unit.unit_id, e): 0 for u in units for e in office.employees}
    days = {datetime.date.today()}
    for unit in units:
        assert run_sync(unit, InProcess(office, unit.unit.unit_id)).ok
    for action in actions:
        if action[0] == "buy":
            _, n, employee, cents = action
            with AccountStore.open(units[n]) as store:
                if store.authorize(employee, cents).approved:
                    session = store.journal.begin_session()
                    store.journal.approve(session, employee, "A1", cents)
                    store.journal.succeed(session)
                    own[(units[n].unit.unit_id, employee)] += cents
        else:
            _, n, stale = action
            unit_id = units[n].unit.unit_id
            if stale:  # built before this sync's upload arrives: an old position with a new version
                office.frozen_bundle[unit_id] = office.build_bundle(unit_id, fresh=True)
            assert run_sync(units[n], InProcess(office, unit_id)).ok
        days.add(datetime.date.today())
        for unit in units:
            for employee, funds in state(unit)["funds"].items():
                topups = office.employees[employee]["topups"]
                assert funds <= topups - own[(unit.unit.unit_id, employee)], "spent money came back"
    for _ in range(2):
        for unit in units:
            assert run_sync(unit, InProcess(office, unit.unit.unit_id)).ok
    for employee, info in office.employees.items():
        spent = sum(c for (u, e), c in own.items() if e == employee)
        assert office.balance(employee) == info["topups"] - spent  # every charge ingested once, to the cent
        assert office.balance(employee) >= -(len(units) - 1) * day_cap * len(days)
        assert all(state(unit)["funds"][employee] == max(0, office.balance(employee)) for unit in units)


def test_an_unreachable_office_is_a_clear_error_and_every_step_is_tried(cfg):
    report = run_sync(cfg, http(cfg, "http://127.0.0.1:9", budget_s=3.0))
    assert not report.ok
    steps = {e.split(":")[0] for e in report.errors}
    assert {"heartbeat", "pull bundles"} <= steps  # nothing to push yet; the rest each say why


def test_a_forged_bundle_from_the_office_is_refused_and_nothing_changes(cfg, office):
    run_sync(cfg, http(cfg, office.url))
    before = state(cfg)
    forger = FakeOffice(Ed25519PrivateKey.generate())
    forger.employees = {"E9": {"name": "Mallory", "topups": 99_999}}
    forger.version = 100
    office.frozen_bundle["unit-7"] = forger.build_bundle("unit-7")
    report = run_sync(cfg, http(cfg, office.url))
    assert any("bad signature" in e for e in report.errors)
    assert state(cfg) == before
