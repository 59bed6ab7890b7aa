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
import json
import time
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import transaction

from ..money.bundle import Bundle, EmployeeRecord, JournalPosition, TemplateRecord, encode_bundle
from ..money.keys import FLEET_SIGNING_KEY_FILE, load_signing_key_file
from .ledger import balances, funds_for
from .models import Deletion, DeletionNotice, Employee, IssuedBundle, SealedTemplate, TemplateRevocation, Unit

REFRESH_S = 6 * 3600
VALIDITY_S = 30 * 86400


@lru_cache(maxsize=4)
def fleet_signing_key(keys_dir: str):
    return load_signing_key_file(Path(keys_dir) / FLEET_SIGNING_KEY_FILE)


def signing_key():
    return fleet_signing_key(settings.VENDOR_NODE_KEYS_DIR)


def bundle_content(unit: Unit) -> dict:
    """What a bundle for ``unit`` says now (no version, no times), from the ledger."""
    money = balances()
    fields = ("employee_id", "name", "status", "funding", "payroll_limit_cents", "per_purchase_cap_cents",
              "per_day_cap_cents")
    employees = []  # plain rows, not model objects: a bundle is built on every sync after an upload
    for emp, name, status, funding, payroll_limit, per_purchase, per_day in (
            Employee.objects.filter(deleted_at__isnull=True).order_by("employee_id").values_list(*fields)):
        employees.append(EmployeeRecord(id=emp, display_name=name, status=status, funding=funding,
                                        funds_cents=funds_for(funding, payroll_limit, money.get(emp, 0)),
                                        per_purchase_cap_cents=per_purchase,
                                        per_day_cap_cents=per_day))
    listed = {e.id for e in employees}
    templates = [TemplateRecord(emp, bytes(sealed), consent, at) for emp, sealed, consent, at in
                 SealedTemplate.objects.filter(employee__deleted_at__isnull=True).exclude(from_unit=unit)
                 .order_by("employee__employee_id")
                 .values_list("employee__employee_id", "sealed", "consent_version", "consented_at")]
    deletions = sorted(set(Deletion.objects.values_list("employee_id", flat=True)) - listed)
    revocations = {emp: at for emp, at in TemplateRevocation.objects.values_list("employee_id", "revoked_at")
                   if emp in listed}
    return {"employees": employees, "templates": templates, "deletions": deletions, "revocations": revocations,
            "journal_position": JournalPosition(unit.last_seq, unit.last_hash)}


def _content_digest(content: dict) -> str:
    text = json.dumps({"employees": [e.__dict__ for e in content["employees"]],
                       "templates": [(t.employee_id, hashlib.sha256(t.sealed).hexdigest(), t.consent_version,
                                      t.consented_at) for t in content["templates"]],
                       "deletions": content["deletions"], "revocations": sorted(content["revocations"].items()),
                       "position": [content["journal_position"].seq, content["journal_position"].hash]},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def current_bundle(unit: Unit, now: float | None = None) -> IssuedBundle:
    """The newest bundle for ``unit``, issuing a new version when the ledger says something new."""
    now = time.time() if now is None else now
    with transaction.atomic():
        locked = Unit.objects.select_for_update().get(pk=unit.pk)
        content = bundle_content(locked)
        digest = _content_digest(content)
        latest = IssuedBundle.objects.filter(unit=locked).order_by("-version").first()
        if latest is not None and latest.content_sha256 == digest and now - latest.created_at < REFRESH_S:
            return latest
        version = max((latest.version + 1) if latest else 1, int(now))
        bundle = Bundle(kind="snapshot", version=version, created=round(now, 3), expires=round(now + VALIDITY_S, 3),
                        unit_id=locked.unit_id, journal_position=content["journal_position"],
                        employees=content["employees"], templates=content["templates"],
                        deletions=content["deletions"], template_revocations=content["revocations"])
        data = encode_bundle(bundle, signing_key())
        issued = _store(IssuedBundle(unit=locked, version=version, content_sha256=digest, created_at=now, data=data))
        if content["deletions"]:
            noticed = set(DeletionNotice.objects.filter(unit=locked).values_list("deletion_id", flat=True))
            DeletionNotice.objects.bulk_create([
                DeletionNotice(deletion=d, unit=locked, bundle_version=version)
                for d in Deletion.objects.filter(employee_id__in=content["deletions"]) if d.pk not in noticed])
        IssuedBundle.objects.filter(unit=locked, version__lt=version - 0).exclude(
            pk__in=IssuedBundle.objects.filter(unit=locked).order_by("-version").values("pk")[:5]).delete()
        return issued


def forget_issued_templates() -> None:
    """After a template is deleted here, drop every unit's kept bundles, which may carry it sealed: only the
    newest version number stays (without its bytes), so the next request issues a fresh, higher version.
    Called inside the deleting transaction; the unit rows are locked first, as `current_bundle` does."""
    list(Unit.objects.select_for_update().order_by("pk").values_list("pk", flat=True))
    for unit_id in IssuedBundle.objects.values_list("unit_id", flat=True).distinct():
        newest = IssuedBundle.objects.filter(unit_id=unit_id).order_by("-version").first()
        IssuedBundle.objects.filter(unit_id=unit_id).exclude(pk=newest.pk).delete()
    IssuedBundle.objects.update(data=b"", content_sha256="")


def _store(issued: IssuedBundle) -> IssuedBundle:
    """Insert the issued bundle. On PostgreSQL its bytes go as a binary parameter: Django's client-side
    binding would escape a 100 KB bundle into the statement's text on every sync (profiled: ~9 ms)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        issued.save(force_insert=True)
        return issued
    import psycopg

    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(f"INSERT INTO {IssuedBundle._meta.db_table} (unit_id, version, content_sha256, created_at, "
                       "data) VALUES (%s, %s, %s, %s, %b) RETURNING id",
                       (issued.unit_id, issued.version, issued.content_sha256, issued.created_at, bytes(issued.data)))
        issued.pk = cursor.fetchone()[0]
    return issued
