"""The office's pages on SQLite: logins and roles, employees (CSV import with line-numbered errors,
suspend), funds (top-ups by hand and CSV, payroll month end), sales with CSV export, audit log."""
from __future__ import annotations

import json

import pytest

from test_office_support import FakeUnit, call, fleet_public_key, office, office_keys_dir  # noqa: F401

pytest.importorskip("django")


def _user(name: str, role: str):
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(name, password="a-long-password")
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def manager(office):
    from django.test import Client

    client = Client()
    client.force_login(_user("mia", "manager"))
    return client


def test_every_page_needs_a_login_but_healthz(office):
    from django.test import Client

    client = Client()
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    for page in ("/", "/employees/", "/funds/", "/sales/", "/units/", "/alerts/", "/audit/"):
        answer = client.get(page)
        assert answer.status_code == 302 and answer["Location"].startswith("/login/"), page
    assert client.get("/api/v1/alerts").status_code == 401


def test_login_form_with_csrf(office):
    from django.test import Client

    _user("tom", "technician")
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/")
    token = page.cookies["csrftoken"].value
    assert client.post("/login/", {"username": "tom", "password": "a-long-password"}).status_code == 403  # no token
    answer = client.post("/login/", {"username": "tom", "password": "a-long-password",
                                     "csrfmiddlewaretoken": token})
    assert answer.status_code == 302
    assert client.get("/units/").status_code == 200
    assert client.get("/funds/").status_code == 403  # a technician does not move money


def test_employee_csv_import_names_the_line_and_imports_nothing_on_error(manager):
    from vendor_node.office.models import Employee

    bad = b"employee_id,display_name,funds\nE1,Ada,10.00\nE2,Grace,12.345\n"
    answer = manager.post("/employees/", {"action": "import", "file": _upload("e.csv", bad)}, follow=True)
    assert b"line 3, column funds" in answer.content
    assert Employee.objects.count() == 0
    good = b"employee_id,display_name,funds,funding\nE1,Ada,10.00,prepaid\nE2,Grace,50.00,payroll\n"
    answer = manager.post("/employees/", {"action": "import", "file": _upload("e.csv", good)}, follow=True)
    assert b"2 added" in answer.content
    page = manager.get("/employees/").content.decode()
    assert "10.00" in page and "50.00" in page  # prepaid balance; payroll may spend its limit
    assert manager.post("/employees/E1/", {"action": "suspend"}).status_code == 302
    assert Employee.objects.get(employee_id="E1").status == "suspended"
    control = b"employee_id,display_name,funds\nE3,Bad\x07Name,1.00\n"
    answer = manager.post("/employees/", {"action": "import", "file": _upload("e.csv", control)}, follow=True)
    assert b"control character" in answer.content


def _upload(name, data):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="text/csv")


def test_topups_payroll_sales_and_audit(manager, tmp_path):
    from vendor_node.office import ledger
    from vendor_node.office.models import AuditEntry, TopUp
    from vendor_node.office.views import register_unit

    ledger.add_employee("t", "E1", "Ada", opening_cents=500)
    ledger.add_employee("t", "E2", "Grace", funding="payroll", payroll_limit_cents=3000)
    answer = manager.post("/funds/", {"employee_id": "E1", "amount": "2.50", "note": "cash"}, follow=True)
    assert b"topped up" in answer.content and ledger.balance_cents("E1") == 750
    answer = manager.post("/funds/", {"employee_id": "E1", "amount": "-1"}, follow=True)
    assert b"not an amount" in answer.content
    csv_bad = b"employee_id,amount\nE1,1.00\nNOPE,2.00\n"
    answer = manager.post("/funds/", {"action": "import", "file": _upload("t.csv", csv_bad)}, follow=True)
    assert b"line 3, column employee_id" in answer.content and ledger.balance_cents("E1") == 750
    csv_good = b"employee_id,amount,note\nE1,1.00,bonus\n"
    manager.post("/funds/", {"action": "import", "file": _upload("t.csv", csv_good)})
    assert ledger.balance_cents("E1") == 850

    unit = FakeUnit(tmp_path / "u", "unit-1")
    register_unit("t", unit.unit_id, unit.fingerprint)
    unit.buy("E1", 120, item="7")
    unit.buy("E2", 400, item="9")
    assert call(manager, unit, "POST", "journal", unit.batch()).status_code == 200
    assert ledger.balance_cents("E1") == 730
    from vendor_node.office.models import Employee

    assert ledger.funds_cents(Employee.objects.get(employee_id="E2"), ledger.balance_cents("E2")) == 2600
    answer = manager.post("/funds/", {"action": "payroll", "period": "2026-11"}, follow=True)
    assert b"1 deductions" in answer.content
    assert ledger.balance_cents("E2") == 0  # deducted from pay: the limit starts again
    assert b"already closed" in manager.post("/funds/", {"action": "payroll", "period": "2026-11"},
                                              follow=True).content
    assert TopUp.objects.filter(source="payroll").count() == 1
    assert manager.get("/funds/?payroll=2026-11").content.decode().splitlines() == \
        ["employee_id,name,deduction,period", "E2,Grace,4.00,2026-11"]

    by_item = manager.get("/sales/?by=item&days=31")
    assert by_item.status_code == 200 and b"<svg" in by_item.content
    exported = manager.get("/sales/?by=unit&format=csv").content.decode().splitlines()
    assert exported == ["unit,purchases,total", "unit-1,2,5.20"]
    assert manager.get("/sales/?by=nonsense").status_code == 400
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"add_employee", "top_up", "import_topups", "register_unit", "payroll_month_end"} <= actions
    assert b"payroll_month_end" in manager.get("/audit/").content
    unit.close()


def test_register_unit_page_refuses_a_bad_fingerprint(manager):
    answer = manager.post("/units/", {"unit_id": "u-1", "fingerprint": "abc"}, follow=True)
    assert b"64 hex digits" in answer.content
    grouped = " ".join(["abcd"] * 16)
    answer = manager.post("/units/", {"unit_id": "u-1", "fingerprint": grouped}, follow=True)
    assert b"registered unit u-1" in answer.content and b"never synced" not in answer.content


def test_limits_are_edited_and_reach_the_bundle(manager):
    from vendor_node.office import ledger
    from vendor_node.money.bundle import decode_bundle
    from vendor_node.office.bundles import current_bundle
    from vendor_node.office.models import AuditEntry, Employee, Unit

    ledger.add_employee("t", "E1", "Ada", funding="payroll", payroll_limit_cents=1000)
    answer = manager.post("/employees/E1/", {"action": "limits", "per_purchase_cap": "2.50", "per_day_cap": "",
                                             "payroll_limit": "40.00"}, follow=True)
    assert b"limits saved" in answer.content and b'value="2.50"' in answer.content
    e = Employee.objects.get(employee_id="E1")
    assert (e.per_purchase_cap_cents, e.per_day_cap_cents, e.payroll_limit_cents) == (250, None, 4000)
    issued = current_bundle(Unit.objects.create(unit_id="u", fingerprint="0" * 64))
    record = decode_bundle(bytes(issued.data), fleet_public_key(office_keys_dir())).employees[0]
    assert (record.per_purchase_cap_cents, record.funds_cents) == (250, 4000)
    bad = manager.post("/employees/E1/", {"action": "limits", "per_purchase_cap": "two"}, follow=True)
    assert b"per purchase cap" in bad.content
    assert AuditEntry.objects.filter(action="set_limits").count() == 1


def test_sales_csv_never_carries_a_formula(manager, tmp_path):
    from vendor_node.office import ledger
    from vendor_node.office.views import register_unit

    ledger.add_employee("t", "E1", "Ada", opening_cents=500)
    unit = FakeUnit(tmp_path / "u", "unit-1")
    register_unit("t", unit.unit_id, unit.fingerprint)
    unit.buy("E1", 100, item="=HYPERLINK(1)")
    assert call(manager, unit, "POST", "journal", unit.batch()).status_code == 200
    lines = manager.get("/sales/?by=item&format=csv").content.decode().splitlines()
    assert lines[1].startswith("'=HYPERLINK(1)")
    unit.close()


def test_five_wrong_passwords_lock_that_login_for_a_while(office):
    from django.test import Client

    _user("tom", "technician")
    client = Client()
    for _ in range(5):
        assert client.post("/login/", {"username": "tom", "password": "guess"}).status_code == 200
    locked = client.post("/login/", {"username": "tom", "password": "a-long-password"})
    assert locked.status_code == 429 and b"Too many wrong passwords" in locked.content
    assert client.get("/units/").status_code == 302  # still not logged in
    _user("ann", "technician")  # another name is not locked
    assert client.post("/login/", {"username": "ann", "password": "a-long-password"}).status_code == 302
