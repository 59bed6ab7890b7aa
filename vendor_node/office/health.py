"""Which units are unhealthy and why, and the alerts list (the page and `GET /api/v1/alerts`).

Besides the unit's own report (out of service, faults, a broken journal) the office flags what only it
can see: no sync for 26 h, a clock off by more than 5 min, a journal gap or another journal (a unit
reinstalled with a fresh one), no sale for N hours (per unit or office-wide), and keys kept in
`software` mode (readable from a copied SD card, issue 13)."""
from __future__ import annotations

from .setup import importable

importable()

import datetime as dt

from django.utils import timezone

from .models import Deletion, DeletionNotice, Unit

NO_SYNC_H = 26
CLOCK_OFF_S = 300
DELETION_DEADLINE_H = 24


def unit_problems(unit: Unit, now=None, no_sale_h: int | None = None) -> list[str]:
    """``no_sale_h``: the office-wide no-sale setting (read once per page by the caller), None to read it."""
    from .units import office_no_sale_hours

    now = now or timezone.now()
    problems = []
    if not unit.active:
        return ["deactivated"]
    since = unit.last_sync_at or unit.registered_at
    if now - since > dt.timedelta(hours=NO_SYNC_H):
        problems.append(f"no sync for {int((now - since).total_seconds() // 3600)} h"
                        if unit.last_sync_at else f"never synced ({NO_SYNC_H} h since registration)")
    beat = unit.heartbeat if isinstance(unit.heartbeat, dict) else {}
    if beat.get("out_of_service"):
        problems.append(f"out of service: {beat['out_of_service']}")
    if beat and beat.get("journal_ok") is False:
        problems.append("journal broken (its hash chain does not verify)")
    if unit.clock_offset_s is not None and abs(unit.clock_offset_s) > CLOCK_OFF_S:
        problems.append(f"clock off by {unit.clock_offset_s:+.0f} s")
    if unit.gap:
        problems.append(f"journal gap: {unit.gap}")
    if unit.refused:
        problems.append(f"journal refused: {unit.refused}")
    head = beat.get("journal_head_seq")
    if isinstance(head, int) and head < unit.last_seq and not unit.refused:
        problems.append(f"the unit's journal ends at seq {head} but the office holds up to seq {unit.last_seq}: "
                        "reinstalled? accept its new journal on the unit's page")
    if beat.get("key_mode") == "software":
        problems.append("keys in software mode: a copied SD card opens them (use otp or a secure element)")
    hours = unit.no_sale_alert_h if unit.no_sale_alert_h is not None else (
        office_no_sale_hours() if no_sale_h is None else no_sale_h)
    quiet = _hours_without_sale(unit, now)
    if hours and quiet is not None and quiet >= hours:
        problems.append(f"no sale for {int(quiet)} h (alert after {hours} h)")
    for fault in beat.get("faults") or []:
        problems.append(f"fault: {fault}")
    return problems


def last_sale_at(unit: Unit) -> dt.datetime | None:
    """The unit's newest sale the office knows: its heartbeat's, or the newest charge ingested."""
    from .models import Charge

    times = []
    beat = unit.heartbeat if isinstance(unit.heartbeat, dict) else {}
    if isinstance(beat.get("last_purchase_at"), (int, float)):
        times.append(float(beat["last_purchase_at"]))
    # the newest charge is near the journal's end: walk the (unit, epoch, seq) index backwards, not every entry
    newest = Charge.objects.filter(unit=unit, charged_cents__gt=0).order_by("-epoch", "-seq") \
        .values_list("ts_us", flat=True).first()
    if newest is not None:
        times.append(newest / 1e6)
    return dt.datetime.fromtimestamp(max(times), dt.timezone.utc) if times else None


def _hours_without_sale(unit: Unit, now) -> float | None:
    """Hours since the last sale (or since registration if none); None before the unit ever synced."""
    if unit.last_sync_at is None:
        return None  # "never synced" is its own problem
    since = last_sale_at(unit) or unit.registered_at
    return max(0.0, (now - since).total_seconds() / 3600)


def deletion_status() -> list[dict]:
    """Each biometric deletion and which units confirmed it (applied a bundle carrying it)."""
    units = list(Unit.objects.filter(active=True))
    rows = []
    for deletion in Deletion.objects.order_by("-requested_at")[:200]:
        notices = {n.unit_id: n.bundle_version for n in DeletionNotice.objects.filter(deletion=deletion)}
        confirmed, pending = [], []
        for unit in units:
            version = notices.get(unit.pk)
            (confirmed if version is not None and unit.applied_bundle_version >= version else pending).append(
                unit.unit_id)
        rows.append({"employee_id": deletion.employee_id, "requested_at": deletion.requested_at,
                     "confirmed": confirmed, "pending": pending})
    return rows


def alerts(now=None) -> list[dict]:
    now = now or timezone.now()
    from .units import office_no_sale_hours

    found = []
    no_sale_h = office_no_sale_hours()
    for unit in Unit.objects.all():
        for problem in unit_problems(unit, now, no_sale_h):
            found.append({"unit_id": unit.unit_id, "problem": problem})
    for row in deletion_status():
        if row["pending"] and now - row["requested_at"] > dt.timedelta(hours=DELETION_DEADLINE_H):
            found.append({"unit_id": ",".join(row["pending"]),
                          "problem": f"deletion of {row['employee_id']}'s biometric data not confirmed "
                                     f"within {DELETION_DEADLINE_H} h"})
    return found
