"""Which units are unhealthy and why, and the alerts list (the page and `GET /api/v1/alerts`)."""
from __future__ import annotations

from .setup import importable

importable()

import datetime as dt

from django.utils import timezone

from .models import Deletion, DeletionNotice, Unit

NO_SYNC_H = 26
CLOCK_OFF_S = 300
DELETION_DEADLINE_H = 24


def unit_problems(unit: Unit, now=None) -> list[str]:
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
    for fault in beat.get("faults") or []:
        problems.append(f"fault: {fault}")
    return problems


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
    found = []
    for unit in Unit.objects.all():
        for problem in unit_problems(unit, now):
            found.append({"unit_id": unit.unit_id, "problem": problem})
    for row in deletion_status():
        if row["pending"] and now - row["requested_at"] > dt.timedelta(hours=DELETION_DEADLINE_H):
            found.append({"unit_id": ",".join(row["pending"]),
                          "problem": f"deletion of {row['employee_id']}'s biometric data not confirmed "
                                     f"within {DELETION_DEADLINE_H} h"})
    return found
