"""The pages: employees, funds, sales, units, alerts, audit log; server-rendered, phone-sized.

Roles are Django groups: ``manager`` (employees, funds, sales, audit) and ``technician``
(units, alerts); both see units and alerts. Every page but /healthz needs a login; every form
is CSRF-protected; every admin action writes one audit row (never biometric data).
"""
from __future__ import annotations

from .setup import importable

importable()

import csv
import datetime as dt
import hmac
import time
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import Cast
from django.db.models import BigIntegerField, F
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from ..errors import OfficeError
from ..money.employees_csv import parse_amount_cents
from . import ledger
from .health import alerts as current_alerts
from .models import AuditEntry, Charge, Deletion, Employee, SealedTemplate, TopUp, Unit, audit
from .units import office_no_sale_hours, register_unit, set_office_no_sale_hours, set_unit_active  # noqa: F401

ROLES = ("manager", "technician")


def has_role(user, *roles) -> bool:
    return user.is_authenticated and (user.is_superuser or user.groups.filter(name__in=roles).exists())


def role_required(*roles):
    def decorate(view):
        @login_required
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not has_role(request.user, *roles):
                return HttpResponseForbidden(f"this page is for: {', '.join(roles)}")
            return view(request, *args, **kwargs)
        return wrapped
    return decorate


def cents(value) -> str:
    value = int(value or 0)
    return f"{'-' if value < 0 else ''}{abs(value) // 100}.{abs(value) % 100:02d}"


@require_GET
def healthz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return JsonResponse({"ok": True, "database": "ok", "vendor": connection.vendor})
    except Exception as exc:  # the monitor wants the reason, not a 500 page
        return JsonResponse({"ok": False, "database": f"{type(exc).__name__}: {exc}"[:300]}, status=503)


@login_required
def index(request):
    return redirect("employees" if has_role(request.user, "manager") else "units")


def _cents_field(request, name: str, what: str, required: bool = False) -> int | None:
    text = (request.POST.get(name) or "").strip()
    if not text:
        if required:
            raise OfficeError(f"{what}: required")
        return None
    try:
        return parse_amount_cents(text)
    except ValueError as exc:
        raise OfficeError(f"{what}: {exc}") from None


def not_found(request, what: str):
    """The plain 404 page naming what was asked for (an employee, a unit)."""
    return render(request, "office/message.html", {"text": f"no {what}"}, status=404)


@role_required("manager")
def employees(request):
    if request.method == "POST":
        try:
            if request.POST.get("action") == "import":
                upload = request.FILES.get("file")
                if upload is None:
                    raise OfficeError("file: choose a CSV file to import")
                added, updated = ledger.import_employees_csv(request.user, upload.read())
                messages.success(request, f"imported: {added} added, {updated} updated")
            else:
                funding = request.POST.get("funding", "prepaid")
                amount = _cents_field(request, "funds", "funds") or 0
                ledger.add_employee(request.user, request.POST.get("employee_id", ""), request.POST.get("name", ""),
                                    funding=funding, opening_cents=amount if funding == "prepaid" else 0,
                                    payroll_limit_cents=amount if funding == "payroll" else 0,
                                    per_purchase_cap_cents=_cents_field(request, "per_purchase_cap", "per purchase cap"),
                                    per_day_cap_cents=_cents_field(request, "per_day_cap", "per day cap"))
                messages.success(request, f"added {request.POST.get('employee_id')}")
            return redirect("employees")
        except OfficeError as exc:
            messages.error(request, str(exc))
    money = ledger.balances()
    rows = [{"e": e, "balance": cents(money.get(e.employee_id, 0)),
             "funds": cents(ledger.funds_cents(e, money.get(e.employee_id, 0))),
             "has_template": hasattr(e, "template")}
            for e in Employee.objects.select_related("template").all()[:2000]]
    return render(request, "office/employees.html", {"rows": rows})


@role_required("manager")
def employee(request, employee_id):
    e = Employee.objects.filter(employee_id=employee_id).first()
    if e is None:
        return not_found(request, f"employee {employee_id!r}")
    if request.method == "POST":
        try:
            action = request.POST.get("action")
            if action in ("suspend", "reinstate"):
                ledger.set_status(request.user, employee_id, "suspended" if action == "suspend" else "active")
            elif action == "limits":
                ledger.set_limits(request.user, employee_id,
                                  per_purchase_cap_cents=_cents_field(request, "per_purchase_cap", "per purchase cap"),
                                  per_day_cap_cents=_cents_field(request, "per_day_cap", "per day cap"),
                                  payroll_limit_cents=_cents_field(request, "payroll_limit", "payroll limit"))
                messages.success(request, "limits saved")
            elif action == "top_up":
                ledger.top_up(request.user, employee_id, request.POST.get("amount", ""), request.POST.get("note", ""))
                messages.success(request, "topped up")
            else:
                raise OfficeError(f"action: unknown {action!r}")
            return redirect("employee", employee_id=employee_id)
        except OfficeError as exc:
            messages.error(request, str(exc))
    balance = ledger.balance_cents(employee_id)
    charges = Charge.objects.filter(employee_id=employee_id, charged_cents__gt=0).select_related("unit") \
        .order_by("-ts_us")[:100]
    return render(request, "office/employee.html", {
        "e": e, "balance": cents(balance), "funds": cents(ledger.funds_cents(e, balance)),
        "caps": {"purchase": cents(e.per_purchase_cap_cents), "day": cents(e.per_day_cap_cents),
                 "payroll": cents(e.payroll_limit_cents)},
        "has_template": SealedTemplate.objects.filter(employee=e).exists(),
        "topups": [(t, cents(t.amount_cents)) for t in e.topups.all()[:100]],
        "charges": [(c, cents(c.charged_cents), dt.datetime.fromtimestamp(c.ts_us / 1e6, dt.timezone.utc))
                    for c in charges]})


@role_required("manager")
def delete_biometrics(request, employee_id):
    e = Employee.objects.filter(employee_id=employee_id).first()
    if e is None:
        return not_found(request, f"employee {employee_id!r}")
    if request.method == "POST":
        if request.POST.get("confirm_id") != employee_id:
            messages.error(request, f"confirmation: type the employee id {employee_id} to confirm")
        else:
            with transaction.atomic():
                templates = SealedTemplate.objects.filter(employee=e).delete()[0]
                e.deleted_at = timezone.now()
                e.save(update_fields=["deleted_at"])
                if not Deletion.objects.filter(employee_id=employee_id).exists():
                    Deletion.objects.create(employee_id=employee_id, requested_by=request.user.username)
                audit(request.user, "delete_biometrics", employee_id,
                      f"{templates} sealed template(s) deleted; every unit told in its next bundle")
            messages.success(request, f"{employee_id}: biometric data deleted here; units confirm on the units page")
            return redirect("units")
    return render(request, "office/delete.html", {"e": e})


@role_required("manager")
def funds(request):
    if request.method == "POST":
        try:
            action = request.POST.get("action")
            if action == "import":
                upload = request.FILES.get("file")
                if upload is None:
                    raise OfficeError("file: choose a CSV file to import")
                count = ledger.import_topups_csv(request.user, upload.read())
                messages.success(request, f"{count} top-ups imported")
            elif action == "payroll":
                closed = ledger.payroll_month_end(request.user, request.POST.get("period") or None)
                messages.success(request, f"payroll closed: {len(closed)} deductions, "
                                          f"{cents(sum(c for _, c in closed))}")
            else:
                ledger.top_up(request.user, request.POST.get("employee_id", ""), request.POST.get("amount", ""),
                              request.POST.get("note", ""))
                messages.success(request, "topped up")
            return redirect("funds")
        except OfficeError as exc:
            messages.error(request, str(exc))
    period = request.GET.get("payroll", "")
    if period:  # the deductions of a closed period, for the payroll department
        rows = TopUp.objects.select_related("employee").filter(source="payroll", period=period) \
            .order_by("employee__employee_id")
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="payroll-{period[:7]}.csv"'
        writer = csv.writer(response)
        writer.writerow(["employee_id", "name", "deduction", "period"])
        for t in rows:
            writer.writerow([t.employee.employee_id, t.employee.name, cents(t.amount_cents), t.period])
        return response
    history = [(t, cents(t.amount_cents)) for t in TopUp.objects.select_related("employee")[:300]]
    return render(request, "office/funds.html", {"history": history,
                                                 "employees": Employee.objects.filter(deleted_at__isnull=True),
                                                 "period": timezone.now().strftime("%Y-%m")})


SALES_GROUPS = {"unit": "unit__unit_id", "employee": "employee_id", "item": "item", "day": "day"}


@role_required("manager")
def sales(request):
    by = request.GET.get("by", "day")
    if by not in SALES_GROUPS:
        return HttpResponse(f"by: must be one of {', '.join(SALES_GROUPS)}", status=400)
    days_text = request.GET.get("days", "31")
    if not days_text.isdigit() or not 1 <= int(days_text) <= 3660:
        return HttpResponse("days: expected a whole number from 1 to 3660", status=400)
    since_us = int((time.time() - int(days_text) * 86400) * 1e6)
    qs = Charge.objects.filter(charged_cents__gt=0, ts_us__gte=since_us)
    if by == "day":
        qs = qs.annotate(day=Cast(F("ts_us") / 86_400_000_000, BigIntegerField()))
    rows = list(qs.values(SALES_GROUPS[by]).annotate(n=Count("seq"), total=Sum("charged_cents"))
                .order_by(SALES_GROUPS[by]))
    table = []
    for row in rows:
        key = row[SALES_GROUPS[by]]
        if by == "day":
            key = dt.date(1970, 1, 1) + dt.timedelta(days=int(key))
        table.append({"key": str(key if key is not None else "-"), "n": row["n"], "total": row["total"]})
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="sales-by-{by}.csv"'
        writer = csv.writer(response)
        writer.writerow([by, "purchases", "total"])
        for row in table:  # a unit's item text never becomes a spreadsheet formula
            key = "'" + row["key"] if row["key"][:1] in ("=", "+", "-", "@", "\t", "\r") else row["key"]
            writer.writerow([key, row["n"], cents(row["total"])])
        return response
    peak = max((r["total"] for r in table), default=0) or 1
    bars = [{"x": 40 + i * (560 // max(1, len(table))), "w": max(2, 560 // max(1, len(table)) - 4),
             "h": int(150 * r["total"] / peak), "label": r["key"], "total": cents(r["total"])}
            for i, r in enumerate(table[-60:])]
    for bar in bars:
        bar["y"] = 170 - bar["h"]
    return render(request, "office/sales.html", {
        "by": by, "days": days_text, "groups": list(SALES_GROUPS),
        "table": [{**r, "total": cents(r["total"])} for r in table], "bars": bars,
        "sum": cents(sum(r["total"] for r in table)), "count": sum(r["n"] for r in table)})


@role_required("manager", "technician")
def alerts_page(request):
    if request.method == "POST":
        try:
            hours = set_office_no_sale_hours(request.user, request.POST.get("no_sale_alert_h"))
            messages.success(request, f"no-sale alert: {f'after {hours} h' if hours else 'off'} for every unit "
                                      "without its own setting")
            return redirect("alerts")
        except OfficeError as exc:
            messages.error(request, str(exc))
    return render(request, "office/alerts.html", {"alerts": current_alerts(), "no_sale_h": office_no_sale_hours()})


def alerts_json(request):
    token = settings.VENDOR_NODE_MONITOR_TOKEN
    header = request.headers.get("Authorization", "")
    by_token = bool(token) and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
    if not by_token and not has_role(request.user, *ROLES):
        return JsonResponse({"error": "log in, or send Authorization: Bearer <monitor token>"}, status=401)
    found = current_alerts()
    return JsonResponse({"ok": not found, "alerts": found, "units": Unit.objects.count()})


@role_required("manager")
def audit_log(request):
    return render(request, "office/audit.html", {"rows": AuditEntry.objects.all()[:500]})
