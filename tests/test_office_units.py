"""The technician's unit pages on SQLite: a reinstalled unit's fresh journal accepted (confirmed, audited,
nothing lost or counted twice), the heartbeat history kept and pruned, the key mode shown with `software`
as a warning and an alert, and the no-sale alert per unit or office-wide."""
from __future__ import annotations

import json
import time

import pytest

from test_office_support import FakeUnit, call, fleet_public_key, heartbeat_body, office  # noqa: F401

pytest.importorskip("django")


def _login(role: str, name: str | None = None, csrf: bool = False):
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.create_user(name or role, password="a-long-password")
    user.groups.add(Group.objects.get(name=role))
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
def site(office, tmp_path):
    from vendor_node.office import ledger
    from vendor_node.office.units import register_unit

    ledger.add_employee("t", "E1", "Ada", opening_cents=10_000)
    ledger.add_employee("t", "E2", "Grace", opening_cents=5_000)
    unit = FakeUnit(tmp_path / "old-card", "unit-1")
    register_unit("t", unit.unit_id, unit.fingerprint)
    yield unit, office, tmp_path
    unit.close()


def _bundle(client, unit, keys, key=None):
    from vendor_node.money.bundle import decode_bundle

    answer = call(client, unit, "GET", "bundle", query="after=0", key=key)
    assert answer.status_code == 200, answer.content
    return decode_bundle(answer.content, fleet_public_key(keys))


def test_a_reinstalled_unit_journal_is_accepted_by_a_technician_nothing_lost_or_doubled(site):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vendor_node.office import ledger
    from vendor_node.office.models import AuditEntry, Unit
    from test_office_support import ingested_entries
    from vendor_node.office.unit_client import fingerprint

    unit, keys, tmp_path = site
    technician = _login("technician")
    for i in range(6):
        unit.buy("E1" if i % 2 else "E2", 100 + i)
    old_batch = unit.batch()
    assert call(technician, unit, "POST", "journal", old_batch).status_code == 200
    before = {"E1": ledger.balance_cents("E1"), "E2": ledger.balance_cents("E2")}
    assert before == {"E1": 10_000 - 101 - 103 - 105, "E2": 5_000 - 100 - 102 - 104}

    # the SD card died: a fresh install, a fresh journal from seq 1 (and a new key from `provision`)
    fresh = FakeUnit(tmp_path / "new-card", "unit-1")
    fresh.key = Ed25519PrivateKey.generate()
    fresh.buy("E1", 250)
    fresh.buy("E2", 50)
    new_batch = fresh.batch()
    assert call(technician, fresh, "POST", "journal", new_batch).status_code == 401  # new key not registered yet
    assert _bundle(technician, unit, keys).journal_position.seq == 18  # the old position: the new unit refuses it

    # the confirmation page; a wrong confirmation changes nothing; a manager may not do it
    assert technician.get("/units/unit-1/reinstalled/").status_code == 200
    assert _login("manager").post("/units/unit-1/reinstalled/", {"confirm_id": "unit-1"}).status_code == 403
    wrong = technician.post("/units/unit-1/reinstalled/", {"confirm_id": "unit-2"}, follow=True)
    assert b"type the unit id unit-1 to confirm" in wrong.content
    assert Unit.objects.get(unit_id="unit-1").journal_epoch == 1
    bad_key = technician.post("/units/unit-1/reinstalled/", {"confirm_id": "unit-1", "fingerprint": "abc"},
                              follow=True)
    assert b"64 hex digits" in bad_key.content and Unit.objects.get(unit_id="unit-1").journal_epoch == 1
    done = technician.post("/units/unit-1/reinstalled/", {"confirm_id": "unit-1", "reason": "SD card replaced",
                                                          "fingerprint": fingerprint(fresh.key)}, follow=True)
    assert b"journal 1 closed at seq 18" in done.content
    record = AuditEntry.objects.get(action="accept_new_journal")
    assert record.user == "technician" and "closed at seq 18" in record.detail and "SD card replaced" in record.detail

    # the new journal is ingested from seq 1; the old charges stay, nothing is counted twice
    answer = call(technician, fresh, "POST", "journal", new_batch)
    assert answer.status_code == 200, answer.content
    assert ledger.balance_cents("E1") == before["E1"] - 250 and ledger.balance_cents("E2") == before["E2"] - 50
    assert call(technician, fresh, "POST", "journal", new_batch).json() == answer.json()  # a retry: same receipt
    assert call(technician, unit, "POST", "journal", old_batch).status_code == 401  # the old key is retired
    replay = call(technician, fresh, "POST", "journal", old_batch, key=unit.key)
    assert replay.status_code == 401
    assert ledger.balance_cents("E1") == before["E1"] - 250 and not ledger.check_totals()
    assert len(ingested_entries()) == 18 + 6
    bundle = _bundle(technician, fresh, keys)
    assert bundle.journal_position.seq == 6 and {e.id: e.funds_cents for e in bundle.employees} == \
        {"E1": before["E1"] - 250, "E2": before["E2"] - 50}
    page = technician.get("/units/unit-1/").content.decode()
    assert "journal refused" not in page and "closed_journals" in page and "SD card replaced" in page
    summary = call(technician, fresh, "GET", "summary").json()["receipt"]
    assert (summary["entries"], summary["charged_cents"]) == (6, 300)  # the current journal's
    fresh.close()


def test_the_same_key_reinstalled_and_an_old_batch_replayed_after_are_never_counted_twice(site):
    from vendor_node.office import ledger
    from vendor_node.office.units import accept_new_journal

    unit, keys, tmp_path = site
    client = _login("technician")
    unit.buy("E1", 300)
    old_batch = unit.batch()
    assert call(client, unit, "POST", "journal", old_batch).status_code == 200
    fresh = FakeUnit(tmp_path / "restored", "unit-1")
    fresh.key = unit.key  # keys restored from a backup, journal not
    fresh.buy("E1", 40)
    refused = call(client, fresh, "POST", "journal", fresh.batch())
    assert refused.status_code == 409 and b"accept" in refused.content and b"reinstalled" in refused.content
    page = client.get("/units/unit-1/").content.decode()
    assert "journal refused" in page and "Unit reinstalled: accept a new journal" in page
    accept_new_journal("tech", "unit-1", "unit-1")
    assert call(client, fresh, "POST", "journal", fresh.batch()).status_code == 200
    assert ledger.balance_cents("E1") == 10_000 - 340
    replay = call(client, unit, "POST", "journal", old_batch)  # the old card comes back and uploads again
    assert replay.status_code == 409 and ledger.balance_cents("E1") == 10_000 - 340
    fresh.close()


def test_heartbeats_are_kept_pruned_and_the_key_mode_is_shown(site):
    from vendor_node.office.health import alerts
    from vendor_node.office.models import HeartbeatRecord
    from vendor_node.office.units import HEARTBEATS_KEPT

    unit, keys, _ = site
    client = _login("technician")
    for i in range(HEARTBEATS_KEPT + 5):
        mode = "software" if i == HEARTBEATS_KEPT + 4 else "otp"
        answer = call(client, unit, "POST", "heartbeat", heartbeat_body(key_mode=mode, journal_head_seq=i))
        assert answer.status_code == 200
    assert HeartbeatRecord.objects.filter(unit__unit_id="unit-1").count() == HEARTBEATS_KEPT
    assert min(HeartbeatRecord.objects.values_list("data__journal_head_seq", flat=True)) == 5  # the oldest went
    page = client.get("/units/unit-1/").content.decode()
    assert page.count("<tr><td>") >= HEARTBEATS_KEPT and 'id="key_mode" class="bad">software' in page
    assert "software (warning)" in client.get("/units/").content.decode()
    assert any("software mode" in a["problem"] for a in alerts())
    assert call(client, unit, "POST", "heartbeat", heartbeat_body(key_mode="otp")).status_code == 200
    assert 'id="key_mode" class="ok">otp' in client.get("/units/unit-1/").content.decode()
    assert not any("software mode" in a["problem"] for a in alerts())


def test_no_sale_alert_per_unit_or_office_wide(site):
    from vendor_node.office.models import AuditEntry
    from vendor_node.office.units import NO_SALE_DEFAULT_H

    unit, keys, _ = site
    client = _login("technician")
    assert call(client, unit, "POST", "heartbeat", heartbeat_body(
        key_mode="otp", last_purchase_at=time.time() - (NO_SALE_DEFAULT_H + 2) * 3600)).status_code == 200

    def problems():
        return [a["problem"] for a in client.get("/api/v1/alerts").json()["alerts"] if a["unit_id"] == "unit-1"]

    assert any(p.startswith(f"no sale for {NO_SALE_DEFAULT_H + 1} h") or p.startswith(f"no sale for "
               f"{NO_SALE_DEFAULT_H + 2} h") for p in problems())
    assert b"no sale for" in client.get("/alerts/").content
    answer = client.post("/alerts/", {"no_sale_alert_h": "72"}, follow=True)
    assert b"after 72 h" in answer.content and not any("no sale" in p for p in problems())
    assert b"expected whole hours" in client.post("/alerts/", {"no_sale_alert_h": "soon"}, follow=True).content
    answer = client.post("/units/unit-1/", {"no_sale_alert_h": "24"}, follow=True)
    assert b"after 24 h" in answer.content and any("(alert after 24 h)" in p for p in problems())
    client.post("/units/unit-1/", {"no_sale_alert_h": "0"})
    assert not any("no sale" in p for p in problems())
    client.post("/units/unit-1/", {"no_sale_alert_h": ""})  # back to the office-wide 72 h
    assert not any("no sale" in p for p in problems())
    unit.buy("E1", 100)  # a sale the office ingests counts even before a heartbeat says so
    call(client, unit, "POST", "journal", unit.batch())
    client.post("/alerts/", {"no_sale_alert_h": "1"})
    assert not any("no sale" in p for p in problems())
    assert AuditEntry.objects.filter(action="set_no_sale_alert").count() == 5


def test_unit_pages_need_a_login_the_right_role_and_csrf(site):
    from django.test import Client

    from vendor_node.office.models import Unit

    for page in ("/units/unit-1/", "/units/unit-1/reinstalled/"):
        answer = Client().get(page)
        assert answer.status_code == 302 and answer["Location"].startswith("/login/")
    assert _login("manager").get("/units/unit-1/").status_code == 200
    assert _login("manager", "mgr2").get("/units/unit-1/reinstalled/").status_code == 403
    assert _login("technician").get("/units/nope/").status_code == 404
    strict = _login("technician", "tech2", csrf=True)
    assert strict.post("/units/unit-1/reinstalled/", {"confirm_id": "unit-1"}).status_code == 403
    assert strict.post("/units/unit-1/", {"no_sale_alert_h": "5"}).status_code == 403
    assert strict.post("/alerts/", {"no_sale_alert_h": "5"}).status_code == 403
    assert Unit.objects.get(unit_id="unit-1").journal_epoch == 1


def test_a_unit_whose_journal_is_behind_the_office_is_flagged_as_maybe_reinstalled(site):
    from vendor_node.office.health import alerts

    unit, keys, _ = site
    client = _login("technician")
    unit.buy("E1", 100)
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    assert call(client, unit, "POST", "heartbeat", heartbeat_body(journal_head_seq=0)).status_code == 200
    assert any("reinstalled?" in a["problem"] for a in alerts())
    assert json.loads(client.get("/api/v1/alerts").content)["ok"] is False


def test_accept_journal_from_the_command_line_same_rules_as_the_page(site, capsys, monkeypatch):
    """`vendor-node office accept-journal`: the unit id typed back (flag or terminal), a bad fingerprint or unit
    refused naming it, then the same closing and audit row as the unit's page; the new journal ingests from 1."""
    import io

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vendor_node.cli import main
    from vendor_node.office import ledger
    from vendor_node.office.models import AuditEntry, JournalEpoch, Unit
    from vendor_node.office.unit_client import fingerprint

    unit, keys, tmp_path = site
    client = _login("technician")
    unit.buy("E1", 300)
    assert call(client, unit, "POST", "journal", unit.batch()).status_code == 200
    db = ["--db", "sqlite:///unused.db", "--fleet-keys", str(keys)]  # the test process's office is configured
    fresh = FakeUnit(tmp_path / "new-card", "unit-1")
    fresh.key = Ed25519PrivateKey.generate()

    assert main(["office", "accept-journal", "unit-1", "--confirm", "unit-2", *db]) == 1
    assert "type the unit id unit-1 to confirm" in capsys.readouterr().err
    assert main(["office", "accept-journal", "unit-1", "--confirm", "unit-1", "--fingerprint", "abc", *db]) == 1
    assert "64 hex digits" in capsys.readouterr().err
    assert main(["office", "accept-journal", "unit-9", "--confirm", "unit-9", *db]) == 1
    assert "no unit 'unit-9'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("unit-1\n"))  # no terminal: the flag is required
    with pytest.raises(SystemExit) as exit_info:
        main(["office", "accept-journal", "unit-1", *db])
    assert exit_info.value.code == 2 and "--confirm UNIT_ID" in capsys.readouterr().err
    assert Unit.objects.get(unit_id="unit-1").journal_epoch == 1 and not JournalEpoch.objects.exists()

    assert main(["office", "accept-journal", "unit-1", "--confirm", "unit-1", "--reason", "SD card replaced",
                 "--fingerprint", fingerprint(fresh.key), *db]) == 0
    assert "journal 1 closed at seq 3" in capsys.readouterr().out
    record = AuditEntry.objects.get(action="accept_new_journal")
    assert record.user == "command line" and "closed at seq 3" in record.detail and "SD card" in record.detail
    fresh.buy("E2", 120)
    assert call(client, fresh, "POST", "journal", fresh.batch()).status_code == 200
    assert ledger.balance_cents("E1") == 10_000 - 300 and ledger.balance_cents("E2") == 5_000 - 120
    assert _bundle(client, fresh, keys).journal_position.seq == 3
    fresh.close()
