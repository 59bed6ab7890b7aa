"""The ledger of record: balances, top-ups (by hand, by CSV), payroll month end, employee import.

A balance is never stored: balance = sum(top-ups) - sum(charges ingested from units' journals),
integer cents, computed by the database. A payroll employee's month end is a top-up of exactly
what they spent since the last close (deducted from their pay), so the same formula holds for
both fundings; what a payroll employee may still spend is their period limit plus that balance.
"""
from __future__ import annotations

from .setup import importable

importable()

import csv
import datetime as dt
import io
import tempfile
from pathlib import Path

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from ..errors import BundleError, OfficeError
from ..money.bundle import EMPLOYEE_ID_RE
from ..money.employees_csv import parse_amount_cents, parse_employees_csv
from .models import (Charge, ChargePending, ChargeTotal, Employee, TopUp, audit, bump_bundle_generation,
                     hot_cursor)

MAX_TOPUP_CENTS = 1_000_000_00  # one top-up above 1,000,000.00 is a typo, not a top-up
MAX_CSV_BYTES = 5 * 1024 * 1024


def topped_up_cents(employee_id: str) -> int:
    return TopUp.objects.filter(employee__employee_id=employee_id).aggregate(s=Sum("amount_cents"))["s"] or 0


def charged_cents(employee_id: str) -> int:
    return charged_by_employee(employee_id).get(employee_id, 0)


def balance_cents(employee_id: str) -> int:
    return topped_up_cents(employee_id) - charged_cents(employee_id)


def topped_up_by_employee() -> dict[str, int]:
    """Each employee's top-ups summed, in one grouped query."""
    return {row["employee__employee_id"]: row["s"] or 0
            for row in TopUp.objects.values("employee__employee_id").annotate(s=Sum("amount_cents"))}


def charged_by_employee(employee_id: str | None = None) -> dict[str, int]:
    """Each employee's charges ingested so far: the running totals plus the uploads not yet folded into them,
    added up by the database in one statement (one snapshot: a fold committing meanwhile is seen whole or not
    at all). Every bundle reads this: under load many pending rows wait for a fold, and expanding their JSON
    here in Python cost more than the bundle's encoding."""
    with hot_cursor() as cursor:
        cursor.execute(*charged_statement(employee_id))
        return {emp: int(cents) for emp, cents in cursor.fetchall()}


def charged_statement(employee_id: str | None = None) -> tuple[str, list]:
    """`charged_by_employee`'s statement and parameters (rows: employee id, cents), for a statement that
    reads it with more (a bundle's, `bundles._generation_kept_and_charged`)."""
    from django.db import connection

    totals, pending = ChargeTotal._meta.db_table, ChargePending._meta.db_table
    expand = (f"SELECT p.key, p.value::bigint FROM {pending}, jsonb_each_text({pending}.charges) p"
              if connection.vendor == "postgresql" else
              f"SELECT p.key, p.value FROM {pending}, json_each({pending}.charges) p")
    one = ("WHERE employee_id = %s", "WHERE p.key = %s") if employee_id is not None else ("", "")
    return (f"SELECT employee_id, sum(cents) FROM (SELECT employee_id, charged_cents AS cents FROM {totals} "
            f"{one[0]} UNION ALL {expand} {one[1]}) charges GROUP BY employee_id",
            [employee_id, employee_id] if employee_id is not None else [])


def balances() -> dict[str, int]:
    """Every employee's balance in three queries (bundles for 10,000 employees use this)."""
    result = {eid: 0 for eid in Employee.objects.values_list("employee_id", flat=True)}
    result.update(topped_up_by_employee())
    for employee_id, charged in charged_by_employee().items():
        result[employee_id] = result.get(employee_id, 0) - charged
    return result


def check_totals() -> list[str]:
    """Each running charge total against the sum of the ingested charges themselves; the differences."""
    summed = {row["employee_id"]: row["s"] for row in Charge.objects.filter(charged_cents__gt=0)
              .values("employee_id").annotate(s=Sum("charged_cents"))}
    kept = charged_by_employee()
    return [f"{e}: total {kept.get(e, 0)}, entries {summed.get(e, 0)}"
            for e in sorted(set(summed) | set(kept)) if kept.get(e, 0) != summed.get(e, 0)]


def funds_cents(employee: Employee, balance: int) -> int:
    """What the bundle tells units the employee may spend (never negative)."""
    return funds_for(employee.funding, employee.payroll_limit_cents, balance)


def funds_for(funding: str, payroll_limit_cents: int, balance: int) -> int:
    """The same from plain row values (bundles read rows, not model objects)."""
    return max(0, payroll_limit_cents + balance) if funding == "payroll" else max(0, balance)


def _amount(text, what: str = "amount") -> int:
    try:
        cents = parse_amount_cents(str(text))
    except ValueError as exc:
        raise OfficeError(f"{what}: {exc}") from None
    if cents <= 0:
        raise OfficeError(f"{what}: must be more than 0.00")
    if cents > MAX_TOPUP_CENTS:
        raise OfficeError(f"{what}: {cents / 100:.2f} is more than one top-up may be")
    return cents


def _clean_text(value: str, what: str, max_chars: int) -> str:
    value = (value or "").strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise OfficeError(f"{what}: contains control characters")
    if len(value) > max_chars:
        raise OfficeError(f"{what}: longer than {max_chars} characters")
    return value


def top_up(user, employee_id: str, amount_text: str, note: str = "", source: str = "manual") -> TopUp:
    """One top-up by hand; OfficeError names the field."""
    cents = _amount(amount_text)
    note = _clean_text(note, "note", 200)
    with transaction.atomic():
        employee = Employee.objects.filter(employee_id=employee_id).first()
        if employee is None:
            raise OfficeError(f"employee: no employee {employee_id!r}")
        row = TopUp.objects.create(employee=employee, amount_cents=cents, source=source, note=note,
                                   created_by=getattr(user, "username", "") or "")
        audit(user, "top_up", employee_id, f"{cents} cents ({source}) {note}")
    return row


def import_topups_csv(user, data: bytes) -> int:
    """CSV ``employee_id,amount[,note]``: all lines or none; errors name the line and column."""
    if len(data) > MAX_CSV_BYTES:
        raise OfficeError(f"top-ups CSV: {len(data)} bytes is more than {MAX_CSV_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OfficeError(f"top-ups CSV: not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise OfficeError("top-ups CSV: empty file; expected columns employee_id, amount, note (optional)")
        unknown = [h for h in header if h not in ("employee_id", "amount", "note")]
        if unknown:
            raise OfficeError(f"top-ups CSV line 1, column {unknown[0]!r}: unknown column "
                              "(expected employee_id, amount, note)")
        for col in ("employee_id", "amount"):
            if col not in header:
                raise OfficeError(f"top-ups CSV line 1: missing column {col!r}")
        known = set(Employee.objects.values_list("employee_id", flat=True))
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise OfficeError(f"top-ups CSV line {line}: {len(row)} fields, the header has {len(header)}")
            cells = {name: value.strip() for name, value in zip(header, row)}
            if cells["employee_id"] not in known:
                raise OfficeError(f"top-ups CSV line {line}, column employee_id: no employee "
                                  f"{cells['employee_id']!r}")
            try:
                cents = _amount(cells["amount"], f"top-ups CSV line {line}, column amount")
                note = _clean_text(cells.get("note", ""), f"top-ups CSV line {line}, column note", 200)
            except OfficeError:
                raise
            rows.append((cells["employee_id"], cents, note))
    except csv.Error as exc:
        raise OfficeError(f"top-ups CSV line {reader.line_num}: not valid CSV: {exc}") from None
    with transaction.atomic():
        by_id = {e.employee_id: e for e in Employee.objects.filter(employee_id__in={r[0] for r in rows})}
        TopUp.objects.bulk_create([TopUp(employee=by_id[eid], amount_cents=cents, source="csv", note=note,
                                         created_by=getattr(user, "username", "") or "")
                                   for eid, cents, note in rows])
        bump_bundle_generation()  # a bulk insert sends no signal
        audit(user, "import_topups", "", f"{len(rows)} top-ups, {sum(r[1] for r in rows)} cents")
    return len(rows)


def add_employee(user, employee_id: str, name: str, funding: str = "prepaid", opening_cents: int = 0,
                 payroll_limit_cents: int = 0, per_purchase_cap_cents=None, per_day_cap_cents=None) -> Employee:
    employee_id = (employee_id or "").strip()
    if not EMPLOYEE_ID_RE.match(employee_id):
        raise OfficeError(f"employee id: {employee_id!r} is not valid (letters, digits, . _ @ -, at most 64)")
    name = _clean_text(name, "name", 100)
    if not name:
        raise OfficeError("name: required")
    if funding not in ("prepaid", "payroll"):
        raise OfficeError(f"funding: must be prepaid or payroll, got {funding!r}")
    with transaction.atomic():
        if Employee.objects.filter(employee_id=employee_id).exists():
            raise OfficeError(f"employee id: {employee_id!r} already exists")
        employee = Employee.objects.create(employee_id=employee_id, name=name, funding=funding,
                                           payroll_limit_cents=payroll_limit_cents,
                                           per_purchase_cap_cents=per_purchase_cap_cents,
                                           per_day_cap_cents=per_day_cap_cents)
        if opening_cents > 0 and funding == "prepaid":
            TopUp.objects.create(employee=employee, amount_cents=opening_cents, source="manual",
                                 note="opening balance", created_by=getattr(user, "username", "") or "")
        audit(user, "add_employee", employee_id, f"{funding}; opening {opening_cents} cents")
    return employee


def import_employees_csv(user, data: bytes) -> tuple[int, int]:
    """The technician's employee CSV (same columns as `fleet bundle`): new employees are added with their
    funds as an opening top-up (payroll: funds is the period limit); existing ones get name, status,
    funding and caps updated, never their balance. All lines or none. Returns (added, updated)."""
    if len(data) > MAX_CSV_BYTES:
        raise OfficeError(f"employees CSV: {len(data)} bytes is more than {MAX_CSV_BYTES}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "employees.csv"
        path.write_bytes(data)
        try:
            records, deletions = parse_employees_csv(path)
        except BundleError as exc:
            raise OfficeError(str(exc).replace(str(path), "employees CSV")) from None
    if deletions:
        raise OfficeError(f"employees CSV: status 'deleted' ({deletions[0]!r}) is not imported here; "
                          "use the employee's page to delete biometric data")
    for record in records:
        _clean_text(record.display_name, f"employees CSV: display_name of {record.id!r}", 100)
    added = updated = 0
    with transaction.atomic():
        existing = {e.employee_id: e for e in Employee.objects.select_for_update()
                    .filter(employee_id__in=[r.id for r in records])}
        for r in records:
            e = existing.get(r.id)
            payroll_limit = r.funds_cents if r.funding == "payroll" else 0
            if e is None:
                e = Employee.objects.create(employee_id=r.id, name=r.display_name, status=r.status,
                                            funding=r.funding, payroll_limit_cents=payroll_limit,
                                            per_purchase_cap_cents=r.per_purchase_cap_cents,
                                            per_day_cap_cents=r.per_day_cap_cents)
                if r.funding == "prepaid" and r.funds_cents > 0:
                    TopUp.objects.create(employee=e, amount_cents=r.funds_cents, source="csv",
                                         note="opening balance (employees CSV)",
                                         created_by=getattr(user, "username", "") or "")
                added += 1
            else:
                e.name, e.status, e.funding = r.display_name, r.status, r.funding
                e.payroll_limit_cents = payroll_limit if r.funding == "payroll" else e.payroll_limit_cents
                e.per_purchase_cap_cents, e.per_day_cap_cents = r.per_purchase_cap_cents, r.per_day_cap_cents
                e.save()
                updated += 1
        audit(user, "import_employees", "", f"{added} added, {updated} updated")
    return added, updated


def set_status(user, employee_id: str, status: str) -> Employee:
    if status not in ("active", "suspended"):
        raise OfficeError(f"status: must be active or suspended, got {status!r}")
    with transaction.atomic():
        employee = Employee.objects.select_for_update().filter(employee_id=employee_id).first()
        if employee is None:
            raise OfficeError(f"employee: no employee {employee_id!r}")
        employee.status = status
        employee.save(update_fields=["status"])
        audit(user, "suspend" if status == "suspended" else "reinstate", employee_id)
    return employee


def payroll_month_end(user, period: str | None = None) -> list[tuple[str, int]]:
    """Close a payroll period: each payroll employee's spending since the last close becomes a payroll
    top-up (the deduction from their pay), once per period. Returns [(employee_id, deducted cents)]."""
    period = period or timezone.now().strftime("%Y-%m")
    try:
        dt.datetime.strptime(period, "%Y-%m")
    except ValueError:
        raise OfficeError(f"period: expected YYYY-MM, got {period!r}") from None
    closed = []
    with transaction.atomic():
        payroll = list(Employee.objects.select_for_update().filter(funding="payroll"))
        if TopUp.objects.filter(source="payroll", period=period).exists():
            raise OfficeError(f"period: {period} is already closed")
        all_balances = balances()
        for employee in payroll:
            owed = -all_balances.get(employee.employee_id, 0)
            if owed > 0:
                TopUp.objects.create(employee=employee, amount_cents=owed, source="payroll", period=period,
                                     note=f"payroll deduction {period}",
                                     created_by=getattr(user, "username", "") or "")
                closed.append((employee.employee_id, owed))
        audit(user, "payroll_month_end", period, f"{len(closed)} deductions, {sum(c for _, c in closed)} cents")
    return closed


def set_limits(user, employee_id: str, per_purchase_cap_cents=None, per_day_cap_cents=None,
               payroll_limit_cents=None) -> Employee:
    """Caps (None: the unit's default) and, for payroll funding, the period's deduction limit."""
    with transaction.atomic():
        employee = Employee.objects.select_for_update().filter(employee_id=employee_id).first()
        if employee is None:
            raise OfficeError(f"employee: no employee {employee_id!r}")
        employee.per_purchase_cap_cents, employee.per_day_cap_cents = per_purchase_cap_cents, per_day_cap_cents
        if payroll_limit_cents is not None:
            employee.payroll_limit_cents = payroll_limit_cents
        employee.save(update_fields=["per_purchase_cap_cents", "per_day_cap_cents", "payroll_limit_cents"])
        audit(user, "set_limits", employee_id, f"per purchase {per_purchase_cap_cents}, per day {per_day_cap_cents}, "
                                               f"payroll limit {employee.payroll_limit_cents} (cents)")
    return employee
