"""The unit API end to end on SQLite: real unit journals, signed batches, signed receipts and bundles,
and every authentication refusal the contract names."""
from __future__ import annotations

import base64
import json
import time

import pytest

from test_office_support import (FakeUnit, call, fleet_public_key, heartbeat_body, ingested_entries,  # noqa: F401
                                 office, verify_receipt)

pytest.importorskip("django")


@pytest.fixture
def setup(office, tmp_path):
    from django.test import Client
    from vendor_node.office import ledger
    from vendor_node.office.views import register_unit

    ledger.add_employee("test", "E0001", "Ada", opening_cents=1000)
    ledger.add_employee("test", "E0002", "Grace", opening_cents=500)
    unit = FakeUnit(tmp_path / "u1", "unit-1")
    register_unit("test", unit.unit_id, unit.fingerprint)
    yield Client(), unit, office
    unit.close()


def test_journal_upload_is_ingested_once_with_a_signed_receipt(setup):
    from vendor_node.office import ledger
    client, unit, keys = setup
    unit.buy("E0001", 150)
    unit.buy("E0001", 999, succeed=False)  # cancelled: never a charge
    unit.buy("E0002", 200)
    batch = unit.batch()
    first = call(client, unit, "POST", "journal", batch)
    assert first.status_code == 200, first.content
    receipt = verify_receipt(keys, first.json())
    body = json.loads(batch)["body"]
    assert (receipt["kind"], receipt["unit_id"], receipt["batch_id"], receipt["last_seq"], receipt["last_hash"]) == \
        ("journal", "unit-1", body["batch_id"], body["last_seq"], body["last_hash"])
    assert ledger.balance_cents("E0001") == 850 and ledger.balance_cents("E0002") == 300
    again = call(client, unit, "POST", "journal", batch)  # the unit lost the answer and retries
    assert again.status_code == 200 and again.json() == first.json()
    assert ledger.balance_cents("E0001") == 850
    assert [e["seq"] for e in ingested_entries()] == list(range(1, body["last_seq"] + 1))
    unit.ack(body["last_seq"])
    unit.buy("E0001", 100)
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    assert ledger.balance_cents("E0001") == 750


def test_a_gap_is_refused_and_flagged_never_papered_over(setup):
    from vendor_node.office import ledger
    from vendor_node.office.health import alerts
    from vendor_node.office.models import Unit

    client, unit, _ = setup
    unit.buy("E0001", 100)
    lost = json.loads(unit.batch())["body"]
    unit.ack(lost["last_seq"])  # as if acknowledged, but the office never got it
    unit.buy("E0001", 200)
    answer = call(client, unit, "POST", "journal", unit.batch())
    assert answer.status_code == 409 and "gap" in answer.json()["error"]
    assert ledger.balance_cents("E0001") == 1000  # nothing ingested past the hole
    assert "missing" in Unit.objects.get(unit_id="unit-1").gap
    assert any("journal gap" in a["problem"] for a in alerts())


def test_refusals(setup, tmp_path):
    from vendor_node.office.views import register_unit

    client, unit, _ = setup
    unit.buy("E0001", 100)
    batch = unit.batch()
    other = FakeUnit(tmp_path / "u2", "unit-2")
    register_unit("test", other.unit_id, other.fingerprint)
    stranger = FakeUnit(tmp_path / "u3", "unit-3")

    def error(response, status):
        assert response.status_code == status, (response.status_code, response.content)
        return response.json()["error"]

    assert "not registered" in error(call(client, stranger, "POST", "journal", batch), 401)
    assert "fingerprint" in error(call(client, unit, "POST", "journal", batch, key=other.key), 401)
    bad_sig = call(client, unit, "POST", "journal", batch,
                   headers={"X-VN-Signature": base64.b64encode(b"\0" * 64).decode()})
    assert "does not verify" in error(bad_sig, 401)
    assert "300 s" in error(call(client, unit, "POST", "journal", batch, timestamp=int(time.time()) - 400), 401)
    nonce = "ab" * 16
    assert call(client, unit, "POST", "heartbeat", heartbeat_body(), nonce=nonce).status_code == 200
    assert "already used" in error(call(client, unit, "POST", "heartbeat", heartbeat_body(), nonce=nonce), 401)
    assert "URL of unit" in error(call(client, other, "POST", "journal", batch, url_unit="unit-1"), 403)
    # another unit's batch (signed by unit-1) uploaded under unit-2's own URL and key
    assert "not signed by this unit" in error(call(client, other, "POST", "journal", batch), 401)
    tampered = json.loads(batch)
    tampered["body"]["entries"][-1]["amount_cents"] = 1
    assert "not signed" in error(call(client, unit, "POST", "journal", json.dumps(tampered).encode()), 401)
    big = b"x" * (33 * 1024 * 1024)
    assert "more than" in error(call(client, unit, "POST", "journal", big), 413)
    assert "X-VN-Nonce" in error(call(client, unit, "POST", "journal", batch, nonce="zz"), 400)
    assert "bad JSON" in error(call(client, unit, "POST", "journal", b"{not json"), 400)
    assert "free_disk_bytes" in error(call(client, unit, "POST", "heartbeat",
                                           heartbeat_body(free_disk_bytes="lots")), 400)
    assert call(client, unit, "POST", "journal", batch).status_code == 200  # the real one still goes in
    other.close()
    stranger.close()


def test_bundle_carries_the_ledger_balance_and_journal_position(setup):
    from vendor_node.money.bundle import decode_bundle

    client, unit, keys = setup
    empty = call(client, unit, "GET", "bundle", query="after=0")
    assert empty.status_code == 200
    b0 = decode_bundle(empty.content, fleet_public_key(keys))
    assert b0.unit_id == "unit-1" and b0.journal_position.seq == 0
    unit.buy("E0001", 250)
    body = json.loads(unit.batch())["body"]
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    answer = call(client, unit, "GET", "bundle", query=f"after={b0.version}")
    assert answer.status_code == 200
    bundle = decode_bundle(answer.content, fleet_public_key(keys))
    assert bundle.version > b0.version
    assert (bundle.journal_position.seq, bundle.journal_position.hash) == (body["last_seq"], body["last_hash"])
    funds = {e.id: e.funds_cents for e in bundle.employees}
    assert funds == {"E0001": 750, "E0002": 500}
    assert call(client, unit, "GET", "bundle", query=f"after={bundle.version}").status_code == 204
    assert call(client, unit, "GET", "bundle", query="after=-1").status_code == 400


def test_a_unit_holding_the_newest_bundle_is_answered_204_without_making_it_again(setup, monkeypatch):
    """A pull whose ``after`` is the newest version: no bytes made or signed (the nightly pull when nothing
    changed); a change since (a top-up) is a new version, made and sent."""
    from vendor_node.money.bundle import decode_bundle
    from vendor_node.office import bundles, ledger

    client, unit, keys = setup
    first = decode_bundle(call(client, unit, "GET", "bundle", query="after=0").content, fleet_public_key(keys))
    made = []
    original = bundles._encode
    monkeypatch.setattr(bundles, "_encode", lambda *a: (made.append(a[3]), original(*a))[1])
    assert call(client, unit, "GET", "bundle", query=f"after={first.version}").status_code == 204
    assert made == []
    again = call(client, unit, "GET", "bundle", query="after=0")  # the same version, its bytes made again
    assert again.status_code == 200 and made == [first.version]
    assert decode_bundle(again.content, fleet_public_key(keys)).version == first.version
    ledger.top_up("test", "E0001", "1.00")
    newer = call(client, unit, "GET", "bundle", query=f"after={first.version}")
    assert newer.status_code == 200 and len(made) == 2
    assert {e.id: e.funds_cents for e in decode_bundle(newer.content, fleet_public_key(keys)).employees}["E0001"] == 1100


def test_templates_relayed_sealed_and_deletion_confirmed_per_unit(setup, tmp_path):
    import base64

    from django.contrib.auth.models import User
    from vendor_node.money.bundle import decode_bundle
    from vendor_node.office.health import deletion_status
    from vendor_node.office.models import AuditEntry
    from vendor_node.office.views import register_unit

    client, unit, keys = setup
    other = FakeUnit(tmp_path / "u2", "unit-2")
    register_unit("test", other.unit_id, other.fingerprint)
    sealed = base64.b64encode(b"\x01" * 300).decode()
    record = {"employee_id": "E0001", "sealed": sealed, "consent_version": "v1", "consented_at": time.time()}
    stranger = dict(record, employee_id="E9999")
    answer = call(client, unit, "POST", "templates", json.dumps({"templates": [record, stranger],
                                                                 "revocations": []}).encode())
    assert answer.status_code == 200
    receipt = verify_receipt(keys, answer.json())
    assert receipt == {"kind": "templates", "unit_id": "unit-1", "accepted": ["E0001"], "revocations": []}
    pub = fleet_public_key(keys)
    relayed = decode_bundle(call(client, other, "GET", "bundle", query="after=0").content, pub)
    assert [t.employee_id for t in relayed.templates] == ["E0001"]
    assert relayed.templates[0].sealed == b"\x01" * 300
    own = decode_bundle(call(client, unit, "GET", "bundle", query="after=0").content, pub)
    assert own.templates == []  # never sent back to the unit it came from

    manager = User.objects.create_user("boss", password="pw-long-enough")
    from vendor_node.office.server import ensure_roles  # noqa: F401
    from django.contrib.auth.models import Group

    manager.groups.add(Group.objects.get(name="manager"))
    client.force_login(manager)
    page = client.post("/employees/E0001/delete-biometrics/", {"confirm_id": "wrong"})
    assert page.status_code == 200 and b"to confirm" in page.content
    assert client.post("/employees/E0001/delete-biometrics/", {"confirm_id": "E0001"}).status_code == 302
    after = decode_bundle(call(client, other, "GET", "bundle", query=f"after={relayed.version}").content, pub)
    assert after.deletions == ["E0001"] and "E0001" not in {e.id for e in after.employees}
    assert after.templates == []
    assert deletion_status()[0]["confirmed"] == []
    assert call(client, other, "POST", "heartbeat", heartbeat_body(bundle_version=after.version)).status_code == 200
    status = deletion_status()[0]
    assert status["confirmed"] == ["unit-2"] and status["pending"] == ["unit-1"]
    assert b"unit-2" in client.get("/units/").content
    row = AuditEntry.objects.get(action="delete_biometrics")
    assert row.user == "boss" and sealed not in row.detail
    other.close()


def test_heartbeat_health_and_alerts_json(setup):
    from django.test import override_settings

    client, unit, _ = setup
    assert call(client, unit, "POST", "heartbeat", heartbeat_body(clock=time.time() + 900,
                                                                  out_of_service="camera fault",
                                                                  journal_ok=False)).status_code == 200
    assert client.get("/api/v1/alerts").status_code == 401
    with override_settings(VENDOR_NODE_MONITOR_TOKEN="s3cret-token"):
        assert client.get("/api/v1/alerts", headers={"Authorization": "Bearer wrong"}).status_code == 401
        problems = client.get("/api/v1/alerts", headers={"Authorization": "Bearer s3cret-token"}).json()["alerts"]
    text = " ".join(a["problem"] for a in problems)
    assert "clock off" in text and "out of service: camera fault" in text and "journal broken" in text


def test_a_revocation_deletes_only_an_older_enrollment(setup):
    from vendor_node.office.models import SealedTemplate

    client, unit, keys = setup
    enrolled_at = time.time()
    record = {"employee_id": "E0001", "sealed": base64.b64encode(b"\x02" * 200).decode(), "consent_version": "v1",
              "consented_at": enrolled_at}

    def send(document):
        answer = call(client, unit, "POST", "templates", json.dumps(document).encode())
        assert answer.status_code == 200, answer.content
        return verify_receipt(keys, answer.json())

    send({"templates": [record], "revocations": []})
    receipt = send({"templates": [], "revocations": [{"employee_id": "E0001", "revoked_at": enrolled_at - 60}]})
    assert receipt["revocations"] == ["E0001"]
    assert SealedTemplate.objects.filter(employee__employee_id="E0001").exists()  # a later enrollment stays
    send({"templates": [], "revocations": [{"employee_id": "E0001", "revoked_at": enrolled_at + 60}]})
    assert not SealedTemplate.objects.filter(employee__employee_id="E0001").exists()
    stale = send({"templates": [record], "revocations": []})  # an older queued copy arrives late
    assert stale["accepted"] == ["E0001"]  # acknowledged so the unit drops it, never stored
    assert not SealedTemplate.objects.filter(employee__employee_id="E0001").exists()
    from vendor_node.money.bundle import decode_bundle

    bundle = decode_bundle(call(client, unit, "GET", "bundle", query="after=0").content, fleet_public_key(keys))
    assert bundle.template_revocations == {"E0001": enrolled_at + 60}  # every unit deletes its older copies
    assert "E0001" in {e.id for e in bundle.employees}  # the account stays
    bad = call(client, unit, "POST", "templates", json.dumps({"templates": [dict(record, sealed="!!")]}).encode())
    assert bad.status_code == 400 and "templates[0].sealed" in bad.json()["error"]


def test_a_revoked_template_leaves_no_kept_bundle_behind_and_versions_still_rise(setup, tmp_path):
    """Bundles relay templates sealed: the office records which it issued by version and digest, never their
    bytes (no copy of a template outlives its revocation there), and a revocation issues a fresh version."""
    from django.db import connection
    from vendor_node.money.bundle import decode_bundle
    from vendor_node.office.models import IssuedBundle
    from vendor_node.office.views import register_unit

    client, unit, keys = setup
    other = FakeUnit(tmp_path / "u2", "unit-2")
    register_unit("test", other.unit_id, other.fingerprint)
    sealed = bytes((i * 7 + 3) % 256 for i in range(300))
    record = {"employee_id": "E0001", "sealed": base64.b64encode(sealed).decode(), "consent_version": "v1",
              "consented_at": time.time()}
    assert call(client, unit, "POST", "templates", json.dumps({"templates": [record]}).encode()).status_code == 200
    relayed = decode_bundle(call(client, other, "GET", "bundle", query="after=0").content, fleet_public_key(keys))
    assert [t.sealed for t in relayed.templates] == [sealed]
    columns = {c.name for c in connection.introspection.get_table_description(connection.cursor(),
                                                                              IssuedBundle._meta.db_table)}
    assert columns == {"id", "unit_id", "version", "content_sha256", "created_at"}  # no bytes kept
    again = call(client, other, "GET", "bundle", query="after=0")  # the same version asked again: its very bytes
    assert again.status_code == 200 and again.content == call(client, other, "GET", "bundle", query="after=0").content
    assert decode_bundle(again.content, fleet_public_key(keys)).version == relayed.version
    revocation = {"revocations": [{"employee_id": "E0001", "revoked_at": record["consented_at"] + 1}]}
    assert call(client, unit, "POST", "templates", json.dumps(revocation).encode()).status_code == 200
    after = call(client, other, "GET", "bundle", query=f"after={relayed.version}")
    assert after.status_code == 200  # a fresh bundle, above the version the unit already holds
    fresh = decode_bundle(after.content, fleet_public_key(keys))
    assert fresh.version > relayed.version and fresh.templates == [] and "E0001" in fresh.template_revocations
    other.close()


def test_a_unit_silent_for_26_hours_is_unhealthy(setup):
    import datetime as dt

    from django.utils import timezone
    from vendor_node.office.health import alerts
    from vendor_node.office.models import Unit

    client, unit, _ = setup
    assert call(client, unit, "POST", "heartbeat", heartbeat_body()).status_code == 200
    assert alerts() == []
    Unit.objects.filter(unit_id="unit-1").update(last_sync_at=timezone.now() - dt.timedelta(hours=27))
    assert [a["problem"] for a in alerts()] == ["no sync for 27 h"]
    assert call(client, unit, "POST", "heartbeat", heartbeat_body()).status_code == 200  # it comes back
    assert alerts() == []


def test_a_deactivated_unit_is_refused_until_reactivated(setup):
    from django.contrib.auth.models import Group, User
    from vendor_node.office.models import AuditEntry

    client, unit, _ = setup
    tech = User.objects.create_user("tess", password="a-long-password")
    tech.groups.add(Group.objects.get(name="technician"))
    client.force_login(tech)
    assert client.post("/units/", {"unit_id": "unit-1", "action": "deactivate"}).status_code == 302
    refused = call(client, unit, "POST", "heartbeat", heartbeat_body())
    assert refused.status_code == 401 and "not active" in refused.json()["error"]
    client.post("/units/", {"unit_id": "unit-1", "action": "reactivate"})
    assert call(client, unit, "POST", "heartbeat", heartbeat_body()).status_code == 200
    assert list(AuditEntry.objects.filter(target="unit-1").values_list("action", flat=True)[:2]) == \
        ["reactivate_unit", "deactivate_unit"]


def test_request_authentication_refusals_on_sqlite(office, tmp_path):
    """The unit read and the nonce recorded together (two statements on SQLite, one on PostgreSQL: see
    test_office_postgres): the same refusals in the same order, and a successful request stamps the sync."""
    from django.test import Client

    from test_office_support import check_request_refusals, signed_heartbeat
    from vendor_node.office.models import Unit
    from vendor_node.office.views import register_unit

    unit, other = FakeUnit(tmp_path / "u", "auth-1"), FakeUnit(tmp_path / "o", "auth-2")
    for each in (unit, other):
        register_unit("test", each.unit_id, each.fingerprint)
    client = Client()

    def send(claimed, key, url_unit, nonce, tamper=False):
        path, body, headers = signed_heartbeat(claimed, key, url_unit, nonce, tamper)
        answer = client.post(path, data=body, content_type="application/json", headers=headers)
        return answer.status_code, answer.json().get("error", "") if answer.status_code != 200 else ""

    try:
        check_request_refusals(send, unit.unit_id, unit.key, other.unit_id,
                               lambda: Unit.objects.filter(unit_id=unit.unit_id).update(active=False))
        assert Unit.objects.get(unit_id=unit.unit_id).last_sync_at is not None
        assert Unit.objects.get(unit_id=other.unit_id).last_sync_at is None
    finally:
        unit.close()
        other.close()


def _signed_batch(unit, entries: list[dict], batch_id: str) -> bytes:
    """A batch of ``entries`` (dicts, seq from 1) signed by the unit's key, laid out as `journal export` writes."""
    from vendor_node.money.journal_export import BATCH_FORMAT, BATCH_VERSION, _canonical
    from vendor_node.money.journal_schema import GENESIS_HASH

    body = {"format": BATCH_FORMAT, "version": BATCH_VERSION, "unit_id": unit.unit_id, "batch_id": batch_id,
            "first_seq": entries[0]["seq"], "last_seq": entries[-1]["seq"], "created_us": entries[-1]["ts_us"],
            "prev_hash": GENESIS_HASH, "last_hash": entries[-1]["hash"], "charged_cents": 0,
            "unit_public_key": "", "entries": entries}
    return _canonical({"body": body, "signature": base64.b64encode(unit.key.sign(_canonical(body))).decode()}) + b"\n"


def test_a_batch_overlapping_what_the_office_holds_adds_only_its_new_entries(setup):
    """A batch starting before the office's last entry: the held part is checked entry by entry against what
    the office holds and only the rest is ingested (charged once); a held entry that differs is refused."""
    from vendor_node.money.journal_schema import GENESIS_HASH, canonical_entry, chain_hash
    from vendor_node.office import ledger

    client, unit, _keys = setup
    unit.buy("E0001", 100)
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    unit.buy("E0001", 40)
    unit.buy("E0002", 60)
    entries = [e.as_dict() for e in unit.journal.entries(0, 9)]
    assert [e["seq"] for e in entries] == list(range(1, 10))
    altered, prev = [dict(e) for e in entries[:5]], GENESIS_HASH
    altered[2]["amount_cents"] = 1  # the held vend at seq 3, rewritten and re-chained
    for e in altered:
        e["prev_hash"], e["hash"] = prev, chain_hash(prev, canonical_entry(
            e["seq"], e["ts_us"], e["kind"], e["session_id"], e["employee_id"], e["item"], e["amount_cents"],
            e["detail"]))
        prev = e["hash"]
    refused = call(client, unit, "POST", "journal", _signed_batch(unit, altered, "altered-1-5"))
    assert refused.status_code == 409 and "seq 3 differs from the entry already ingested" in refused.json()["error"]
    answer = call(client, unit, "POST", "journal", _signed_batch(unit, entries, "overlap-1-9"))
    assert answer.status_code == 200, answer.content
    assert ledger.balance_cents("E0001") == 1000 - 140 and ledger.balance_cents("E0002") == 500 - 60
    assert [e["seq"] for e in ingested_entries()] == list(range(1, 10))
    assert [e["hash"] for e in ingested_entries()] == [e["hash"] for e in entries]


def test_a_settled_review_is_charged_only_when_the_technician_says_so(setup):
    """The charges the office counts: a vend that succeeded, and a reviewed outcome_unknown only when settled
    as charged; an approval, a void, an unknown outcome and a review settled as not charged cost nothing."""
    from vendor_node.office import ledger
    from vendor_node.office.models import Charge

    client, unit, _keys = setup
    journal = unit.journal
    for employee, cents, charged in (("E0001", 70, True), ("E0002", 90, False)):
        session = journal.begin_session()
        journal.approve(session, employee, "5", cents)
        journal.mark_outcome_unknown(session)
        journal.settle_review(session, charged)
    unit.buy("E0002", 30, succeed=False)
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    assert ledger.balance_cents("E0001") == 1000 - 70 and ledger.balance_cents("E0002") == 500
    assert sorted(Charge.objects.values_list("kind", "charged_cents")) == \
        [("review_settled", 70)]


def test_an_entry_field_of_the_wrong_type_is_refused_naming_it(setup):
    """The upload's fast check finds a wrongly typed field; the refusal names it (400), nothing is stored."""
    from vendor_node.office.models import Charge, JournalBatch

    client, unit, _keys = setup
    unit.buy("E0001", 100)
    entries = [e.as_dict() for e in unit.journal.entries(0, 9)]
    entries[1]["seq"] = str(entries[1]["seq"])
    answer = call(client, unit, "POST", "journal", _signed_batch(unit, entries, "typed-1"))
    assert answer.status_code == 400 and answer.json()["error"] == "body.entries[1].seq: missing or not int"
    entries[1]["seq"], entries[2]["amount_cents"] = int(entries[1]["seq"]), "1.00"
    answer = call(client, unit, "POST", "journal", _signed_batch(unit, entries, "typed-2"))
    assert answer.status_code == 400 and answer.json()["error"] == "body.entries[2].amount_cents: not int"
    assert not JournalBatch.objects.exists() and not Charge.objects.exists()


def test_stored_batches_verify_again_signature_and_chain(setup):
    """Each batch is kept as the unit sent it: its signature verifies again with the unit's key, and the
    entries it brought (the tail of an overlapping batch only) chain from GENESIS_HASH across batches; only
    the charges are rows. A stored document altered afterwards is found by the same check."""
    from vendor_node.money.journal_schema import VEND_SUCCEEDED
    from vendor_node.office.ingest import parse_batch
    from vendor_node.office.journal_store import verify_stored
    from vendor_node.office.models import Charge, JournalBatch, Unit

    client, unit, _keys = setup
    unit.buy("E0001", 100)
    first = json.loads(unit.batch())["body"]
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    unit.ack(first["last_seq"])
    unit.buy("E0002", 70, item="7")
    overlapping = _signed_batch(unit, [e.as_dict() for e in unit.journal.entries(0, 6)], "overlap-1-6")
    assert call(client, unit, "POST", "journal", overlapping).status_code == 200
    registered = Unit.objects.get(unit_id=unit.unit_id)
    batches = list(JournalBatch.objects.filter(unit=registered).order_by("id"))
    assert [(b.first_seq, b.entries) for b in batches] == [(1, first["last_seq"]),
                                                           (1, 6 - first["last_seq"])]
    assert bytes(batches[1].document) == overlapping
    for batch in batches:
        body, _charges = parse_batch(bytes(batch.document), registered, unit.key.public_key())
        assert body["last_hash"] == batch.last_hash
    held = ingested_entries()
    assert [e["seq"] for e in held] == list(range(1, registered.last_seq + 1))
    assert verify_stored(registered.pk, registered.journal_epoch) == (registered.last_seq, None)
    assert sorted(Charge.objects.values_list("seq", "employee_id", "item", "charged_cents")) == sorted(
        (e["seq"], e["employee_id"], e["item"], e["amount_cents"]) for e in held if e["kind"] == VEND_SUCCEEDED)
    document = json.loads(bytes(batches[0].document))
    document["body"]["entries"][1]["amount_cents"] = 1
    JournalBatch.objects.filter(pk=batches[0].pk).update(document=json.dumps(document).encode())
    assert verify_stored(registered.pk, registered.journal_epoch) == (1, "hash chain broken at seq 2")


def test_the_served_application_answers_units_without_the_pages_middleware(setup):
    """What `office serve` runs: unit API requests skip the pages' middleware (no session or CSRF cookie, no
    login) yet keep the view's refusals, the nonce rule and the ALLOWED_HOSTS check; pages keep theirs."""
    from django.test import RequestFactory, override_settings

    from vendor_node.office.models import HeartbeatRecord
    from vendor_node.office.server import office_application
    from vendor_node.office.unit_client import signed_headers

    _client, unit, _keys = setup
    application, factory = office_application(), RequestFactory()

    def serve(request):
        answer = {}
        chunks = application(request.environ, lambda status, headers: answer.update(
            status=int(status.split()[0]), headers=dict(headers)))
        body = b"".join(chunks)
        chunks.close()
        return answer["status"], answer["headers"], body

    path, body = f"/api/v1/units/{unit.unit_id}/heartbeat", heartbeat_body()
    headers = signed_headers(unit.key, unit.unit_id, "POST", path, body)
    status, answer_headers, content = serve(factory.post(path, data=body, content_type="application/json",
                                                         headers=headers))
    assert (status, json.loads(content)) == (200, {"ok": True}) and HeartbeatRecord.objects.count() == 1
    assert answer_headers["Content-Length"] == str(len(content)) and "Set-Cookie" not in answer_headers
    assert answer_headers["X-Content-Type-Options"] == "nosniff"
    status, _, content = serve(factory.post(path, data=body, content_type="application/json", headers=headers))
    assert status == 401 and "already used" in json.loads(content)["error"]  # the same nonce: a replay
    status, _, content = serve(factory.post(path, data=body, content_type="application/json"))
    assert status == 401 and json.loads(content)["error"] == "X-VN-Unit: header missing"
    status, _, _ = serve(factory.get(path))
    assert status == 405
    with override_settings(ALLOWED_HOSTS=["office.example"]):
        fresh = signed_headers(unit.key, unit.unit_id, "POST", path, body)
        status, _, _ = serve(factory.post(path, data=body, content_type="application/json", headers=fresh))
        assert status == 400 and HeartbeatRecord.objects.count() == 1  # a host not allowed: nothing recorded
    status, page_headers, _ = serve(factory.get("/login/"))
    assert status == 200 and page_headers["X-Frame-Options"] == "DENY" and "csrftoken" in page_headers.get(
        "Set-Cookie", "")
    status, page_headers, _ = serve(factory.get("/employees/"))
    assert status == 302 and page_headers["Location"].startswith("/login/")  # pages still need a login


def test_a_heartbeat_is_recorded_once_and_its_refusals_keep_their_order(setup, tmp_path):
    """A heartbeat (on PostgreSQL written by the statement that spends its nonce): recorded once; a replay
    refused and recording nothing; a bad body from the unit refused naming the field (its nonce spent, as for
    any request of the unit's key that got that far); a bad body from a stranger refused as a stranger's."""
    from vendor_node.office.models import HeartbeatRecord, Unit

    client, unit, _ = setup
    stranger = FakeUnit(tmp_path / "u9", "unit-9")
    try:
        def error(response, status):
            assert response.status_code == status, (response.status_code, response.content)
            return response.json()["error"]

        nonce = "cd" * 16
        assert call(client, unit, "POST", "heartbeat", heartbeat_body(firmware="1.2.3"), nonce=nonce).status_code \
            == 200
        assert "already used" in error(call(client, unit, "POST", "heartbeat", heartbeat_body(), nonce=nonce), 401)
        row = Unit.objects.get(unit_id=unit.unit_id)
        assert row.heartbeat["firmware"] == "1.2.3" and row.heartbeat_at is not None and row.last_sync_at
        assert [r.data["firmware"] for r in HeartbeatRecord.objects.filter(unit=row)] == ["1.2.3"]
        bad = heartbeat_body(journal_ok="yes")
        assert "fingerprint" in error(call(client, stranger, "POST", "heartbeat", bad, url_unit=unit.unit_id,
                                           unit_header=unit.unit_id, key=stranger.key), 401)
        assert "not registered" in error(call(client, stranger, "POST", "heartbeat", bad), 401)
        assert "journal_ok" in error(call(client, unit, "POST", "heartbeat", bad, nonce="ef" * 16), 400)
        assert "already used" in error(call(client, unit, "POST", "heartbeat", heartbeat_body(), nonce="ef" * 16),
                                       401)
        assert HeartbeatRecord.objects.filter(unit=row).count() == 1
    finally:
        stranger.close()


def test_charge_rows_are_the_batchs_charges_exactly(setup):
    """An upload's charges become rows field for field (on PostgreSQL by a binary COPY): odd characters in an
    item, one that reads NULL; a batch sent again adds none; an overlapping later one only its new charge."""
    from vendor_node.office import ledger
    from vendor_node.office.models import Charge

    client, unit, _ = setup
    odd = ("é \"quoted\" \\ back, {braces} NULL", "tab\there\x01 ✓ 😀", "NULL")
    for i, item in enumerate(odd):
        unit.buy("E0001" if i % 2 == 0 else "E0002", 10 + i, item=item)
    unit.buy("E0002", 7, succeed=False)
    batch = unit.batch()
    assert call(client, unit, "POST", "journal", batch).status_code == 200
    assert call(client, unit, "POST", "journal", batch).status_code == 200
    expected = [(e.seq, e.ts_us, e.kind, e.employee_id, e.item, e.amount_cents)
                for e in unit.journal.entries(0, 99) if e.kind == "vend_succeeded"]
    columns = ("seq", "ts_us", "kind", "employee_id", "item", "charged_cents")
    assert list(Charge.objects.order_by("seq").values_list(*columns)) == expected
    assert [row[4] for row in expected] == list(odd)
    unit.buy("E0001", 25, item="13")  # sent with the entries already held (an overlapping batch)
    later = _signed_batch(unit, [e.as_dict() for e in unit.journal.entries(0, 99)], "later")
    assert call(client, unit, "POST", "journal", later).status_code == 200
    assert Charge.objects.count() == 4 and ledger.balance_cents("E0001") == 1000 - 10 - 12 - 25
    assert ledger.balance_cents("E0002") == 500 - 11 and not ledger.check_totals()
