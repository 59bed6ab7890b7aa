"""The office's cheaper requests keep their meaning: a bundle built from shared records is byte for byte the
bundle ``encode_bundle`` makes; the shared records are built once for many units and rebuilt after every
office change (in this process or another); an upload is checked the same whether or not it is laid out as
`journal export` writes it; charges pending a fold are counted exactly once. SQLite, in process."""
from __future__ import annotations

import base64
import json
import time
from dataclasses import replace

import pytest

from test_office_support import FakeUnit, call, fleet_public_key, office, office_db_url  # noqa: F401

pytest.importorskip("django")


def test_shared_records_make_the_same_bytes_as_encode_bundle_and_both_readers_agree(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vendor_node.errors import BundleError
    from vendor_node.money.bundle import (Bundle, EmployeeRecord, JournalPosition, TemplateRecord, decode_bundle,
                                          encode_bundle, encode_shared_bundle, share_records)
    from vendor_node.money.bundle_stream import read_bundle_streamed

    key = Ed25519PrivateKey.generate()
    employees = [EmployeeRecord(id=f"E{i}", display_name=f"Näme \"{i}\" ✓", status="suspended" if i == 2 else
                                "active", funding="payroll" if i == 3 else "prepaid", funds_cents=0,
                                per_purchase_cap_cents=None if i % 2 else 500, per_day_cap_cents=1000)
                 for i in range(6)]
    templates = [TemplateRecord("E1", b"\x01" * 60, "v1", 12.5), TemplateRecord("E3", b"\x02" * 60, "v2", 13.0),
                 TemplateRecord("E4", b"\x03" * 60, "v1", 14.0)]
    whole = Bundle(kind="snapshot", version=1, created=0.0, expires=1.0, unit_id="stand-in", employees=employees,
                   templates=templates, deletions=["E9"], template_revocations={"E2": 5.0})
    shared = share_records(whole, ["unit-a", "unit-b", "unit-a"])
    funds = [0, 1, 250, 99_999, 7, 2 ** 40]
    envelope = Bundle(kind="snapshot", version=1_700_000_123, created=1_700_000_123.25,
                      expires=1_700_000_123.25 + 86400, unit_id="unit-b",
                      journal_position=JournalPosition(42, "ab" * 32), policy={})
    data = encode_shared_bundle(envelope, shared, funds, "unit-b", key)
    expected = replace(whole, unit_id="unit-b", version=envelope.version, created=envelope.created,
                       expires=envelope.expires, journal_position=envelope.journal_position,
                       employees=[replace(e, funds_cents=f) for e, f in zip(employees, funds)],
                       templates=[templates[0], templates[2]])
    assert data == encode_bundle(expected, key)  # the same bytes, the same (deterministic) signature
    path = tmp_path / "b.vnb"
    path.write_bytes(data)
    streamed, decoded = read_bundle_streamed(path, key.public_key()), decode_bundle(data, key.public_key())
    assert [e.funds_cents for e in decoded.employees] == [e.funds_cents for e in streamed.employees] == funds
    assert [t.employee_id for t in decoded.templates] == ["E1", "E4"] and decoded.deletions == ["E9"]

    with pytest.raises(BundleError, match=r"employees\[1\].funds_cents"):
        encode_shared_bundle(envelope, shared, [0, -1, 0, 0, 0, 0], None, key)  # never signed
    with pytest.raises(BundleError, match="one funds figure per employee"):
        encode_shared_bundle(envelope, shared, funds[:-1], None, key)
    with pytest.raises(BundleError, match="unit_id"):
        encode_shared_bundle(replace(envelope, unit_id="bad unit"), shared, funds, None, key)
    with pytest.raises(BundleError, match="name"):  # the shared records are checked as encode_bundle checks
        share_records(replace(whole, employees=[replace(employees[0], display_name="a\x07b")]), ["x"] * 3)


@pytest.fixture
def units(office, tmp_path):
    from vendor_node.office import ledger
    from vendor_node.office.views import register_unit

    ledger.add_employee("test", "E1", "Ada", opening_cents=1000)
    ledger.add_employee("test", "E2", "Grace", opening_cents=500)
    made = [FakeUnit(tmp_path / f"u{i}", f"unit-{i}") for i in range(3)]
    for unit in made:
        register_unit("test", unit.unit_id, unit.fingerprint)
    yield made, office
    for unit in made:
        unit.close()


def _bundle(client, unit, keys):
    from vendor_node.money.bundle import decode_bundle

    answer = call(client, unit, "GET", "bundle", query="after=0")
    assert answer.status_code == 200, answer.content
    return decode_bundle(answer.content, fleet_public_key(keys))


def test_shared_records_are_built_once_and_rebuilt_after_every_office_change(units, monkeypatch):
    from django.contrib.auth.models import User
    from django.test import Client

    from vendor_node.office import bundles, ledger

    made, keys = units
    client = Client()
    builds = []
    original = bundles._Shared.__init__
    monkeypatch.setattr(bundles._Shared, "__init__", lambda self, *a: (builds.append(1), original(self, *a))[1])

    def funds(unit):
        return {e.id: (e.funds_cents, e.status) for e in _bundle(client, unit, keys).employees}

    assert funds(made[0]) == {"E1": (1000, "active"), "E2": (500, "active")}
    assert funds(made[1]) == funds(made[2]) == funds(made[0]) and len(builds) == 1  # one build, three units

    made[0].buy("E1", 150)  # a charge ingested: funds move, the shared records stay
    assert call(client, made[0], "POST", "journal", made[0].batch()).status_code == 200
    assert funds(made[1])["E1"] == (850, "active") and len(builds) == 1

    changes = [
        (lambda: ledger.top_up("test", "E1", "2.00"), "E1", (1050, "active")),
        (lambda: ledger.import_topups_csv("test", b"employee_id,amount\nE2,1.00\n"), "E2", (600, "active")),
        (lambda: ledger.set_status("test", "E2", "suspended"), "E2", (600, "suspended")),
        (lambda: ledger.add_employee("test", "E3", "Alan", opening_cents=300), "E3", (300, "active")),
    ]
    for change, employee, expected in changes:
        change()
        assert funds(made[2])[employee] == expected, change
    assert len(builds) == 1 + len(changes)

    manager = User.objects.create_user("boss", password="pw-long-enough")
    from django.contrib.auth.models import Group

    manager.groups.add(Group.objects.get(name="manager"))
    client.force_login(manager)
    assert client.post("/employees/E3/", {"action": "limits", "per_purchase_cap": "1.50", "per_day_cap": "",
                                          "payroll_limit": ""}).status_code in (200, 302)
    assert _bundle(client, made[1], keys).employees[2].per_purchase_cap_cents == 150

    record = {"employee_id": "E1", "sealed": base64.b64encode(b"\x05" * 64).decode(), "consent_version": "v1",
              "consented_at": time.time()}
    assert call(client, made[0], "POST", "templates",
                json.dumps({"templates": [record], "revocations": []}).encode()).status_code == 200
    assert [t.employee_id for t in _bundle(client, made[1], keys).templates] == ["E1"]  # relayed to the others
    assert _bundle(client, made[0], keys).templates == []  # never back to the unit it came from
    assert client.post("/employees/E1/delete-biometrics/", {"confirm_id": "E1"}).status_code == 302
    after = _bundle(client, made[2], keys)
    assert after.templates == [] and after.deletions == ["E1"]


def test_a_change_made_by_another_process_reaches_this_process_bundles(units):
    """The command line (another process) changes an employee; the web process's cached records follow."""
    import subprocess
    import sys

    from django.test import Client

    made, keys = units
    client = Client()
    assert {e.id: e.status for e in _bundle(client, made[0], keys).employees}["E2"] == "active"
    csv_file = keys.parent / "suspend.csv"
    csv_file.write_text("employee_id,display_name,funds,status\nE2,Grace,0.00,suspended\n")
    done = subprocess.run([sys.executable, "-m", "vendor_node", "office", "import-employees", str(csv_file),
                           "--db", office_db_url(), "--fleet-keys", str(keys)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert {e.id: e.status for e in _bundle(client, made[1], keys).employees}["E2"] == "suspended"


def test_an_upload_not_laid_out_as_exported_is_checked_the_same(units):
    """The signature is checked over the bytes as sent when the layout allows, else over the re-encoded body:
    the same batches are accepted, the same tampering refused, in both layouts."""
    from django.test import Client

    from vendor_node.office import ledger

    made, keys = units
    client = Client()
    unit = made[0]
    unit.buy("E1", 120)
    unit.buy("E2", 80)
    exported = unit.batch()
    document = json.loads(exported)
    pretty = json.dumps(document, indent=2).encode()  # same content, another layout: the general path
    tampered = json.loads(exported)
    tampered["body"]["entries"][-1]["amount_cents"] = 1
    for layout in (lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")).encode() + b"\n",
                   lambda d: json.dumps(d, indent=1).encode()):
        answer = call(client, unit, "POST", "journal", layout(tampered))
        assert answer.status_code == 401 and b"not signed by this unit" in answer.content
    trailing = exported.rstrip(b"\n") + b"x"  # not JSON after the end: refused naming it, not half-read
    assert call(client, unit, "POST", "journal", trailing).status_code == 400
    first = call(client, unit, "POST", "journal", pretty)
    assert first.status_code == 200, first.content
    assert call(client, unit, "POST", "journal", exported).json() == first.json()  # the same batch, once
    assert ledger.balance_cents("E1") == 880 and ledger.balance_cents("E2") == 420


def test_charges_pending_a_fold_are_counted_once(units, monkeypatch):
    from django.test import Client

    from vendor_node.office import ingest, ledger
    from vendor_node.office.models import ChargePending, ChargeTotal

    made, keys = units
    client = Client()
    original = ingest.fold_pending_charges
    ingest.fold_pending_charges = lambda: None  # as when another process's fold is running: rows wait
    try:
        for i, unit in enumerate(made):
            unit.buy("E1", 100 + i)
            unit.buy("E2", 10)
            assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    finally:
        ingest.fold_pending_charges = original
    assert ChargePending.objects.count() == 3 and not ChargeTotal.objects.exists()
    expected = {"E1": 1000 - 303, "E2": 500 - 30}
    assert {e: ledger.balance_cents(e) for e in expected} == expected and ledger.check_totals() == []
    assert {e.id: e.funds_cents for e in _bundle(client, made[0], keys).employees} == expected
    ingest.fold_pending_charges()
    assert not ChargePending.objects.exists() and ledger.charged_by_employee() == {"E1": 303, "E2": 30}
    assert {e: ledger.balance_cents(e) for e in expected} == expected and ledger.check_totals() == []
    made[1].ack(6)
    made[1].buy("E1", 50)
    monkeypatch.setattr(ingest, "FOLD_EVERY_UPLOADS", 10 ** 12)  # not this upload's turn to fold: it leaves its row
    assert call(client, made[1], "POST", "journal", made[1].batch()).status_code == 200
    assert ChargePending.objects.count() == 1 and ledger.balance_cents("E1") == 1000 - 353
    made[1].ack(9)
    made[1].buy("E2", 5)
    monkeypatch.setattr(ingest, "FOLD_EVERY_UPLOADS", 1)  # its turn: the upload folds after its commit, its own row and the one before
    assert call(client, made[1], "POST", "journal", made[1].batch()).status_code == 200
    assert not ChargePending.objects.exists() and ledger.charged_by_employee() == {"E1": 353, "E2": 35}


def test_canonical_entry_is_json_dumps_byte_for_byte():
    """The hash chain's bytes, written out for speed, equal json.dumps's for any values (else every unit's chain
    would break at the office): drawn strings with escapes, control and non-ASCII characters, big integers."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st

    from vendor_node.money.journal_schema import canonical_entry

    keys = ("seq", "ts_us", "kind", "session_id", "employee_id", "item", "amount_cents", "detail")
    value = st.one_of(st.none(), st.text(), st.integers(min_value=-2 ** 80, max_value=2 ** 80), st.booleans(),
                      st.floats(allow_nan=False, allow_infinity=False))

    @settings(max_examples=400, deadline=None)
    @given(st.tuples(*[value] * len(keys)))
    def check(values):
        expected = json.dumps(dict(zip(keys, values)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_entry(*values) == expected.encode("utf-8")

    check()


def test_a_request_stamps_the_sync_and_its_nonce_which_is_pruned_when_old(units):
    """The per-request statements written as plain SQL store what the ORM reads back: the last sync time, the
    nonce's time (compared by the pruning), a replay still refused."""
    import datetime as dt

    from django.test import Client
    from django.utils import timezone

    from test_office_support import heartbeat_body
    from vendor_node.office import unit_api
    from vendor_node.office.models import Unit, UnitNonce as Nonce

    made, _keys = units
    client = Client()
    before = timezone.now()
    assert call(client, made[0], "POST", "heartbeat", heartbeat_body(), nonce="a" * 32).status_code == 200
    stamped = Unit.objects.get(unit_id=made[0].unit_id).last_sync_at
    assert before - dt.timedelta(seconds=1) <= stamped <= timezone.now() + dt.timedelta(seconds=1)
    seen = Nonce.objects.get(nonce="a" * 32).seen_at
    assert before - dt.timedelta(seconds=1) <= seen <= timezone.now() + dt.timedelta(seconds=1)
    assert call(client, made[0], "POST", "heartbeat", heartbeat_body(), nonce="a" * 32).status_code == 401
    Nonce.objects.filter(nonce="a" * 32).update(seen_at=timezone.now() - dt.timedelta(hours=1))
    unit_api._pruned_at[0] = 0.0  # the next request prunes
    assert call(client, made[1], "POST", "heartbeat", heartbeat_body(), nonce="b" * 32).status_code == 200
    assert set(Nonce.objects.values_list("nonce", flat=True)) == {"b" * 32}
