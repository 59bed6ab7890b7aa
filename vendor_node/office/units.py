"""What a technician does to a unit in the office, and what the office keeps of its heartbeats.

Register (id + key fingerprint), deactivate/reactivate, the no-sale alert setting (per unit or
office-wide), and "unit reinstalled: accept a new journal": a unit whose SD card was replaced starts
a fresh journal at seq 1, which the office refuses as not continuing the one it holds. Accepting it
closes the old journal where it ended (kept on record, its charges stay in the ledger and are never
counted again) and opens a new one, ingested from seq 1. Every action writes one audit row.
"""
from __future__ import annotations

from .setup import importable

importable()

import re

from django.db import transaction
from django.utils import timezone

from ..errors import OfficeError
from ..money.bundle import EMPLOYEE_ID_RE
from ..money.journal_schema import GENESIS_HASH
from .models import HeartbeatRecord, JournalEpoch, OfficeSetting, Unit, audit, hot_cursor

HEARTBEATS_KEPT = 100  # per unit: a nightly sync's heartbeats for about three months, or a day of retries
NO_SALE_SETTING = "no_sale_alert_h"
NO_SALE_DEFAULT_H = 48  # a weekend without a sale is normal in an office; two working days are not
MAX_ALERT_H = 24 * 366


def normalise_fingerprint(text: str) -> str:
    """Hex digits only, lower case (provision prints it grouped)."""
    return re.sub(r"[^0-9a-f]", "", (text or "").lower())


def _fingerprint(text: str) -> str:
    fingerprint = normalise_fingerprint(text)
    if len(fingerprint) != 64:
        raise OfficeError(f"fingerprint: expected 64 hex digits (as `vendor-node provision` prints), "
                          f"got {len(fingerprint)}")
    return fingerprint


def register_unit(user, unit_id: str, fingerprint: str, site: str = "") -> Unit:
    from .ledger import _clean_text

    if not EMPLOYEE_ID_RE.match(unit_id or ""):
        raise OfficeError(f"unit id: {unit_id!r} is not valid (letters, digits, . _ @ -)")
    fingerprint = _fingerprint(fingerprint)
    site = _clean_text(site, "site", 100)
    with transaction.atomic():
        if Unit.objects.filter(unit_id=unit_id).exists():
            raise OfficeError(f"unit id: {unit_id!r} is already registered")
        unit = Unit.objects.create(unit_id=unit_id, fingerprint=fingerprint, site=site)
        audit(user, "register_unit", unit_id, f"fingerprint {fingerprint[:16]}...")
    return unit


def set_unit_active(user, unit_id: str, active: bool) -> None:
    """A lost or stolen unit is deactivated: its key opens nothing here until it is reactivated."""
    with transaction.atomic():
        if not Unit.objects.filter(unit_id=unit_id).update(active=active):
            raise OfficeError(f"unit id: no unit {unit_id!r}")
        audit(user, "reactivate_unit" if active else "deactivate_unit", unit_id)


def accept_new_journal(user, unit_id: str, confirm_id: str, new_fingerprint: str = "",
                       reason: str = "") -> JournalEpoch:
    """Close the unit's journal where the office holds it and ingest its next uploads from seq 1."""
    from .ledger import _clean_text

    if confirm_id != unit_id:
        raise OfficeError(f"confirmation: type the unit id {unit_id} to confirm")
    reason = _clean_text(reason, "reason", 300)
    fingerprint = _fingerprint(new_fingerprint) if new_fingerprint.strip() else ""
    with transaction.atomic():
        unit = Unit.objects.select_for_update().filter(unit_id=unit_id).first()
        if unit is None:
            raise OfficeError(f"unit id: no unit {unit_id!r}")
        closed = JournalEpoch.objects.create(unit=unit, epoch=unit.journal_epoch, last_seq=unit.last_seq,
                                             last_hash=unit.last_hash, closed_by=_who(user), reason=reason)
        unit.journal_epoch += 1
        unit.last_seq, unit.last_hash, unit.gap, unit.refused = 0, GENESIS_HASH, "", ""
        fields = ["journal_epoch", "last_seq", "last_hash", "gap", "refused"]
        if fingerprint:
            unit.fingerprint = fingerprint
            fields.append("fingerprint")
        unit.save(update_fields=fields)
        audit(user, "accept_new_journal", unit_id,
              f"journal {closed.epoch} closed at seq {closed.last_seq} (hash {closed.last_hash[:16]}); "
              f"journal {unit.journal_epoch} starts at seq 1"
              + (f"; new key fingerprint {fingerprint[:16]}..." if fingerprint else "")
              + (f"; {reason}" if reason else ""))
    return closed


def _who(user) -> str:
    return (getattr(user, "username", None) or str(user or "system"))[:150]


def _hours(text, what: str) -> int | None:
    text = str(text if text is not None else "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_ALERT_H:
        raise OfficeError(f"{what}: expected whole hours from 0 (never) to {MAX_ALERT_H}, got {text!r}")
    return int(text)


def office_no_sale_hours() -> int:
    row = OfficeSetting.objects.filter(name=NO_SALE_SETTING).values_list("value", flat=True).first()
    return NO_SALE_DEFAULT_H if row is None else row


def set_office_no_sale_hours(user, text) -> int:
    hours = _hours(text, "no sale alert hours")
    if hours is None:
        raise OfficeError(f"no sale alert hours: required (0 turns the alert off, default {NO_SALE_DEFAULT_H})")
    with transaction.atomic():
        OfficeSetting.objects.update_or_create(name=NO_SALE_SETTING, defaults={"value": hours})
        audit(user, "set_no_sale_alert", "office", f"{hours} h" if hours else "off")
    return hours


def set_unit_no_sale_hours(user, unit_id: str, text) -> int | None:
    """Hours without a sale before this unit is flagged; blank follows the office-wide setting, 0 never."""
    hours = _hours(text, "no sale alert hours")
    with transaction.atomic():
        if not Unit.objects.filter(unit_id=unit_id).update(no_sale_alert_h=hours):
            raise OfficeError(f"unit id: no unit {unit_id!r}")
        audit(user, "set_no_sale_alert", unit_id,
              "office-wide setting" if hours is None else (f"{hours} h" if hours else "off"))
    return hours


# the unit row's columns a unit request reads (no datetimes or JSON: raw rows carry those per backend)
UNIT_REQUEST_FIELDS = ("id", "unit_id", "fingerprint", "active", "last_seq", "last_hash", "gap", "journal_epoch",
                       "refused")


def unit_from_row(row) -> Unit:
    """A Unit from a raw row of UNIT_REQUEST_FIELDS (the other fields load if read): the ORM's own instance,
    without a queryset's per-statement cost on the unit API's hot path."""
    values = list(row)
    values[UNIT_REQUEST_FIELDS.index("active")] = bool(values[UNIT_REQUEST_FIELDS.index("active")])
    return Unit.from_db("default", UNIT_REQUEST_FIELDS, values)


def lock_and_stamp_sync(unit_pk: int) -> Unit:
    """The unit row locked for this transaction and its last sync stamped now, in one statement (an UPDATE
    takes the row lock `select_for_update` would). A refused request rolls back, so only a request that
    succeeds counts as a sync, as before."""
    from django.db import connection

    with hot_cursor() as cursor:
        cursor.execute(f"UPDATE {Unit._meta.db_table} SET last_sync_at = %s WHERE id = %s "
                       f"RETURNING {', '.join(UNIT_REQUEST_FIELDS)}",
                       [connection.ops.adapt_datetimefield_value(timezone.now()), unit_pk])
        row = cursor.fetchone()
    if row is None:
        raise Unit.DoesNotExist(f"unit pk {unit_pk}")
    return unit_from_row(row)


def heartbeat_writes(unit_ids: str, clean: dict, clock_offset_s: float, now) -> tuple[str, list]:
    """PostgreSQL: a heartbeat's writes as WITH items (SQL, parameters) for the unit whose ``id`` the WITH item
    named ``unit_ids`` yields (none for a request that must write nothing): the latest
    heartbeat and the last sync on the unit row, the record, the records beyond the newest HEARTBEATS_KEPT
    dropped (the DELETE does not see the row inserted beside it: the newest HEARTBEATS_KEPT - 1 older ones
    stay, and the new one). ``now``: already adapted for the database."""
    from django.db import connection

    data = connection.ops.adapt_json_value(clean, None)
    units, records = Unit._meta.db_table, HeartbeatRecord._meta.db_table
    return (f"hb_u AS (UPDATE {units} SET heartbeat = %s, heartbeat_at = %s, clock_offset_s = %s, last_sync_at = %s "
            f"WHERE id IN (SELECT id FROM {unit_ids})), "
            f"hb_r AS (INSERT INTO {records} (unit_id, received_at, data, clock_offset_s) SELECT id, %s, %s, %s "
            f"FROM {unit_ids}), "
            f"hb_d AS (DELETE FROM {records} WHERE unit_id IN (SELECT id FROM {unit_ids}) AND id NOT IN (SELECT id "
            f"FROM {records} WHERE unit_id IN (SELECT id FROM {unit_ids}) ORDER BY received_at DESC, id DESC "
            "LIMIT %s))",
            [data, now, clock_offset_s, now, now, data, clock_offset_s, HEARTBEATS_KEPT - 1])


def record_heartbeat(unit: Unit, clean: dict, clock_offset_s: float) -> None:
    """The latest heartbeat on the unit (the units page), and a bounded history (the unit's page); the
    unit's last sync stamped by the same statement. Plain statements: one runs for every unit's sync, and
    the ORM's query building cost more CPU than the statements' execution (profiled)."""
    from django.db import connection

    now = connection.ops.adapt_datetimefield_value(timezone.now())
    data = connection.ops.adapt_json_value(clean, None)
    units, records = Unit._meta.db_table, HeartbeatRecord._meta.db_table
    if connection.vendor == "postgresql":  # one statement, so no transaction of its own
        writes, values = heartbeat_writes("hb_unit", clean, clock_offset_s, now)
        with hot_cursor() as cursor:
            cursor.execute(f"WITH hb_unit AS (SELECT %s::bigint AS id), {writes} SELECT 1", [unit.pk, *values])
        return
    with transaction.atomic(), hot_cursor() as cursor:
        cursor.execute(f"UPDATE {units} SET heartbeat = %s, heartbeat_at = %s, clock_offset_s = %s, "
                       "last_sync_at = %s WHERE id = %s", [data, now, clock_offset_s, now, unit.pk])
        cursor.execute(f"INSERT INTO {records} (unit_id, received_at, data, clock_offset_s) VALUES (%s, %s, %s, %s)",
                       [unit.pk, now, data, clock_offset_s])
        cursor.execute(f"DELETE FROM {records} WHERE unit_id = %s AND id NOT IN (SELECT id FROM {records} "
                       "WHERE unit_id = %s ORDER BY received_at DESC, id DESC LIMIT %s)",
                       [unit.pk, unit.pk, HEARTBEATS_KEPT])
