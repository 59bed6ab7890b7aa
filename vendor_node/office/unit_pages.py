"""The technician's unit pages: the units list, one unit's page (health, key mode, heartbeat history,
earlier journals, its no-sale alert) and the confirmed "unit reinstalled: accept a new journal" action.
Units and alerts are for both roles; accepting a new journal is a technician's action."""
from __future__ import annotations

from .setup import importable

importable()

import datetime as dt

from django.contrib import messages
from django.shortcuts import redirect, render

from ..errors import OfficeError
from .health import deletion_status, last_sale_at, unit_problems
from .models import HeartbeatRecord, JournalEpoch, Unit
from .units import (HEARTBEATS_KEPT, accept_new_journal, office_no_sale_hours, register_unit, set_unit_active,
                    set_unit_no_sale_hours)
from .views import not_found, role_required

KEY_MODE_WARNING = "software"  # key files readable from a copied SD card (issue 13); otp / secure element are bound


def key_mode(unit: Unit) -> str:
    beat = unit.heartbeat if isinstance(unit.heartbeat, dict) else {}
    return str(beat.get("key_mode") or "")


@role_required("manager", "technician")
def units(request):
    if request.method == "POST":
        try:
            unit_id = (request.POST.get("unit_id") or "").strip()
            action = request.POST.get("action", "register")
            if action in ("deactivate", "reactivate"):
                set_unit_active(request.user, unit_id, action == "reactivate")
                messages.success(request, f"unit {unit_id} {action}d")
                return redirect("units")
            register_unit(request.user, unit_id, request.POST.get("fingerprint", ""), request.POST.get("site", ""))
            messages.success(request, f"registered unit {unit_id}")
            return redirect("units")
        except OfficeError as exc:
            messages.error(request, str(exc))
    no_sale_h = office_no_sale_hours()
    rows = [{"u": u, "problems": unit_problems(u, no_sale_h=no_sale_h), "key_mode": key_mode(u),
             "key_warning": key_mode(u) == KEY_MODE_WARNING} for u in Unit.objects.all()]
    return render(request, "office/units.html", {"rows": rows, "deletions": deletion_status()})


@role_required("manager", "technician")
def unit_page(request, unit_id):
    unit = Unit.objects.filter(unit_id=unit_id).first()
    if unit is None:
        return not_found(request, f"unit {unit_id!r}")
    if request.method == "POST":
        try:
            hours = set_unit_no_sale_hours(request.user, unit_id, request.POST.get("no_sale_alert_h"))
            messages.success(request, "no-sale alert: " + ("the office-wide setting" if hours is None else
                                                           f"after {hours} h" if hours else "off"))
            return redirect("unit", unit_id=unit_id)
        except OfficeError as exc:
            messages.error(request, str(exc))
    beats = [{"at": b.received_at, "offset": b.clock_offset_s, **_beat_row(b.data)}
             for b in HeartbeatRecord.objects.filter(unit=unit)[:HEARTBEATS_KEPT]]
    return render(request, "office/unit.html", {
        "u": unit, "problems": unit_problems(unit), "key_mode": key_mode(unit),
        "key_warning": key_mode(unit) == KEY_MODE_WARNING, "beats": beats, "last_sale": last_sale_at(unit),
        "office_no_sale_h": office_no_sale_hours(),
        "closed": JournalEpoch.objects.filter(unit=unit).order_by("-epoch")})


def _beat_row(data: dict) -> dict:
    data = data if isinstance(data, dict) else {}
    last = data.get("last_purchase_at")
    return {"firmware": data.get("firmware", ""), "bundle": data.get("bundle_version", ""),
            "key_mode": data.get("key_mode", ""), "journal_ok": data.get("journal_ok"),
            "head": data.get("journal_head_seq", ""), "free_mb": int(data.get("free_disk_bytes") or 0) // 2 ** 20,
            "out_of_service": data.get("out_of_service") or "", "faults": data.get("faults") or [],
            "last_purchase": dt.datetime.fromtimestamp(last, dt.timezone.utc) if isinstance(last, float) else None}


@role_required("technician")
def reinstalled(request, unit_id):
    unit = Unit.objects.filter(unit_id=unit_id).first()
    if unit is None:
        return not_found(request, f"unit {unit_id!r}")
    if request.method == "POST":
        try:
            closed = accept_new_journal(request.user, unit_id, request.POST.get("confirm_id", ""),
                                        request.POST.get("fingerprint", ""), request.POST.get("reason", ""))
            messages.success(request, f"{unit_id}: journal {closed.epoch} closed at seq {closed.last_seq}; "
                                      "the unit's new journal is ingested from seq 1 at its next sync")
            return redirect("unit", unit_id=unit_id)
        except OfficeError as exc:
            messages.error(request, str(exc))
    return render(request, "office/reinstalled.html", {"u": unit})
