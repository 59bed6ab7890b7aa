"""Signed account bundles built by the office for one unit, from the ledger (format 2).

Each employee's ``funds_cents`` is the ledger's balance, which includes every charge ingested
from every unit, so also this unit's charges up to ``journal_position`` (its last ingested
entry): the unit subtracts only its own later charges. A bundle is re-issued (new version) only
when what it says changed, or when it is older than REFRESH_S so units never run out of date.
Versions are per unit and never below the wall-clock second, so they stay above any version a
technician issued with `fleet bundle` before the unit joined the office.
"""
from __future__ import annotations

from .setup import importable

importable()

import hashlib
import threading
import time
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import transaction

from ..money.bundle import (Bundle, EmployeeRecord, JournalPosition, TemplateRecord, encode_shared_bundle,
                            share_records)
from ..money.keys import FLEET_SIGNING_KEY_FILE, load_signing_key_file
from .ledger import charged_by_employee, charged_statement, topped_up_by_employee
from .models import (BUNDLE_GENERATION, Deletion, DeletionNotice, Employee, IssuedBundle, OfficeSetting,
                     SealedTemplate, TemplateRevocation, Unit, hot_cursor, new_bundle_generation)
from .units import lock_and_stamp_sync

REFRESH_S = 6 * 3600
VALIDITY_S = 30 * 86400


@lru_cache(maxsize=4)
def fleet_signing_key(keys_dir: str):
    return load_signing_key_file(Path(keys_dir) / FLEET_SIGNING_KEY_FILE)


def signing_key():
    return fleet_signing_key(settings.VENDOR_NODE_KEYS_DIR)


class _Shared:
    """What every unit's bundle shares, checked and encoded once per office state (``models.BUNDLE_GENERATION``):
    the employees (funds left open), the templates (by the unit that sent them), deletions and revocations."""

    def __init__(self, generation: int, unit: Unit):
        self.generation = generation
        accounts = list(Employee.objects.filter(deleted_at__isnull=True).order_by("employee_id").values_list(
            "employee_id", "name", "status", "funding", "payroll_limit_cents", "per_purchase_cap_cents",
            "per_day_cap_cents"))
        topped_up = topped_up_by_employee()
        # funds = max(0, base - charged): a payroll employee's base adds the limit (ledger.funds_for)
        self.base = [topped_up.get(emp, 0) + (limit if funding == "payroll" else 0)
                     for emp, _, _, funding, limit, _, _ in accounts]
        listed = {row[0] for row in accounts}
        templates = list(SealedTemplate.objects.filter(employee__deleted_at__isnull=True)
                         .order_by("employee__employee_id")
                         .values_list("employee__employee_id", "sealed", "consent_version", "consented_at",
                                      "from_unit_id"))
        self.deletions = sorted(set(Deletion.objects.values_list("employee_id", flat=True)) - listed)
        revocations = {emp: at for emp, at in TemplateRevocation.objects.values_list("employee_id", "revoked_at")
                       if emp in listed}
        stand_in = Bundle(kind="snapshot", version=1, created=0.0, expires=1.0, unit_id=unit.unit_id,
                          employees=[EmployeeRecord(id=emp, display_name=name, status=status, funding=funding,
                                                    funds_cents=0, per_purchase_cap_cents=per_purchase,
                                                    per_day_cap_cents=per_day)
                                     for emp, name, status, funding, _, per_purchase, per_day in accounts],
                          templates=[TemplateRecord(emp, bytes(sealed), consent, at)
                                     for emp, sealed, consent, at, _ in templates],
                          deletions=self.deletions, template_revocations=revocations)
        self.records = share_records(stand_in, [owner for *_, owner in templates])

    def funds(self, charged: dict[str, int] | None = None) -> list[int]:
        """Each employee's funds now: the shared top-ups minus the charges ingested up to this moment
        (``charged``: as `charged_by_employee` read them, else read now)."""
        charged = (charged_by_employee() if charged is None else charged).get
        return [max(0, base - charged(emp, 0)) for emp, base in zip(self.records.employee_ids, self.base)]


_shared: list[_Shared] = []  # this process's newest shared records
_shared_lock = threading.Lock()


def _generation_kept_and_charged(unit_pk: int) -> tuple[int | None, list[IssuedBundle], dict[str, int] | None]:
    """The office's bundle generation, the unit's kept bundles, newest first (their bytes load if read), and
    on PostgreSQL each employee's charges (`charged_by_employee`; None elsewhere: read apart), in one plain
    statement: every unit's bundle request runs it (one snapshot: read after the unit's lock, as before)."""
    from django.db import connection

    charged_sql, charged_values = charged_statement() if connection.vendor == "postgresql" else ("", [])
    with hot_cursor() as cursor:
        cursor.execute(f"SELECT value, NULL, NULL, NULL, NULL FROM {OfficeSetting._meta.db_table} WHERE name = %s "
                       f"UNION ALL SELECT NULL, id, version, content_sha256, created_at FROM "
                       f"{IssuedBundle._meta.db_table} WHERE unit_id = %s"
                       + (" UNION ALL SELECT NULL, NULL, charged.sum::bigint, charged.employee_id, NULL FROM "
                          f"({charged_sql}) charged" if charged_sql else ""),
                       [BUNDLE_GENERATION, unit_pk, *charged_values])
        rows = cursor.fetchall()
    generation = next((row[0] for row in rows if row[1] is None and row[3] is None), None)
    kept = [IssuedBundle.from_db("default", ("id", "unit_id", "version", "content_sha256", "created_at"),
                                 (pk, unit_pk, version, sha, created)) for _, pk, version, sha, created in rows if pk]
    charged = {emp: int(cents) for _, pk, cents, emp, _ in rows if pk is None and emp is not None} \
        if charged_sql else None
    return generation, sorted(kept, key=lambda issued: -issued.version), charged


def _shared_records(unit: Unit, generation: int | None) -> _Shared:
    if generation is None:  # a flushed database (tests): mark it once, so what is built now can be reused
        generation = OfficeSetting.objects.get_or_create(name=BUNDLE_GENERATION,
                                                         defaults={"value": new_bundle_generation()})[0].value
    with _shared_lock:  # one thread builds, the others of this process wait and reuse it
        if not _shared or _shared[0].generation != generation:
            _shared[:] = [_Shared(generation, unit)]
        return _shared[0]


def current_bundle(unit: Unit, now: float | None = None, stamp_sync: bool = False,
                   unit_has: int = -1) -> IssuedBundle:
    """The newest bundle for ``unit``, issuing a new version when the ledger says something new. Only the
    envelope (this unit, its journal position, version, times), the funds and which templates are this unit's
    own are made per request; the rest is shared by every unit until an office change (``_Shared``).
    ``stamp_sync``: the unit asked (its last sync is stamped by the statement that locks its row).
    ``unit_has``: the version the unit says it holds: when that is still the newest, its bytes are not made
    again (``data`` stays None: the unit is answered 204, no encoding and no signature)."""
    now = time.time() if now is None else now
    with transaction.atomic():
        locked = lock_and_stamp_sync(unit.pk) if stamp_sync else Unit.objects.select_for_update().get(pk=unit.pk)
        generation, kept, charged = _generation_kept_and_charged(locked.pk)
        shared = _shared_records(locked, generation)
        funds = shared.funds(charged)  # after the unit's lock: its own ingests have committed, all counted
        digest = hashlib.sha256(f"{shared.records.sha256} {locked.pk} {locked.last_seq} {locked.last_hash} "
                                f"{','.join(map(str, funds))}".encode()).hexdigest()
        latest = kept[0] if kept else None
        if latest is not None and latest.content_sha256 == digest and now - latest.created_at < REFRESH_S:
            if latest.version > unit_has:
                latest.data = _encode(locked, shared, funds, latest.version, latest.created_at)  # its very bytes
            return latest
        version = max((latest.version + 1) if latest else 1, int(now))
        issued = _store(IssuedBundle(unit=locked, version=version, content_sha256=digest, created_at=now))
        issued.data = _encode(locked, shared, funds, version, now)
        if shared.deletions:
            noticed = set(DeletionNotice.objects.filter(unit=locked).values_list("deletion_id", flat=True))
            DeletionNotice.objects.bulk_create([
                DeletionNotice(deletion=d, unit=locked, bundle_version=version)
                for d in Deletion.objects.filter(employee_id__in=shared.deletions) if d.pk not in noticed])
        if len(kept) > 4:  # the five newest stay, this one among them: a statement only when one goes
            IssuedBundle.objects.filter(pk__in=[old.pk for old in kept[4:]]).delete()
        return issued


def _encode(unit: Unit, shared: _Shared, funds: list[int], version: int, created_at: float) -> bytes:
    """The signed bundle of this version: the same bytes whenever the unit's journal position, the shared
    records and the funds are the same (what ``content_sha256`` covers; Ed25519 signatures are deterministic),
    so an issued bundle is recorded by version and digest, never stored (a 10,000-employee office's bundle
    is megabytes, sent to every unit every night, and may carry sealed templates)."""
    envelope = Bundle(kind="snapshot", version=version, created=round(created_at, 3),
                      expires=round(created_at + VALIDITY_S, 3), unit_id=unit.unit_id,
                      journal_position=JournalPosition(unit.last_seq, unit.last_hash))
    return encode_shared_bundle(envelope, shared.records, funds, unit.pk, signing_key())


def _store(issued: IssuedBundle) -> IssuedBundle:
    """Insert the issued bundle's record (one plain statement: every unit's bundle request runs it)."""
    with hot_cursor() as cursor:
        cursor.execute(f"INSERT INTO {IssuedBundle._meta.db_table} (unit_id, version, content_sha256, created_at) "
                       "VALUES (%s, %s, %s, %s) RETURNING id",
                       (issued.unit_id, issued.version, issued.content_sha256, issued.created_at))
        issued.pk = cursor.fetchone()[0]
    return issued
