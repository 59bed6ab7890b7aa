"""The back office's tables. Money is integer cents; a balance is always computed, never stored.

balance(employee) = sum(TopUp.amount_cents) - sum(Charge.charged_cents), where charges come only
from units' signed, hash-chained batches, unique by (unit, journal epoch, seq).
"""
from __future__ import annotations

from .setup import importable

importable()

import secrets
from contextlib import contextmanager

from django.db import models

@contextmanager
def hot_cursor():
    """A cursor for the unit API's hot path (every unit's sync runs these statements). PostgreSQL: psycopg's
    own cursor, parameters sent apart from the statement, each statement prepared once per connection after
    its fifth run (no quoting of every value in Python, no parse and plan in the server: Django's cursor binds
    on the client side); its errors still come out as Django's (IntegrityError...). SQLite: Django's cursor.
    (psycopg's pipeline mode does not send a transaction's BEGIN with its first statement: it syncs after the
    BEGIN, and its extra flushes made more system calls, not fewer: tried, strace'd, left out.)"""
    from django.db import connection

    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    import psycopg

    _close_if_gone(connection)  # as Django's own cursor() does: a connection the database dropped (a
    connection.ensure_connection()  # restart) is replaced before the request uses it
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def _close_if_gone(connection) -> None:
    """Django's health check at a request's first statement (CONN_HEALTH_CHECKS) without its round trip:
    instead of a SELECT 1 on every unit request, one poll of the idle connection's socket. The server sends
    nothing to an idle connection of this office (no LISTEN) but its goodbye when it shuts down (a message,
    then the socket closed): anything to read means the connection is gone (at worst, one reconnect)."""
    import select

    from psycopg import pq

    raw = connection.connection
    if raw is None or not connection.health_check_enabled or connection.health_check_done:
        return
    if raw.closed or raw.pgconn.status != pq.ConnStatus.OK:
        gone = True
    else:
        poller = select.poll()
        poller.register(raw.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        gone = bool(poller.poll(0))
    if gone:
        connection.close()
    connection.health_check_done = True


STATUS_CHOICES = [("active", "active"), ("suspended", "suspended")]
FUNDING_CHOICES = [("prepaid", "prepaid"), ("payroll", "payroll")]
TOPUP_SOURCES = [("manual", "by hand"), ("csv", "CSV import"), ("payroll", "payroll deduction")]


class Employee(models.Model):
    employee_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="active")
    funding = models.CharField(max_length=16, choices=FUNDING_CHOICES, default="prepaid")
    payroll_limit_cents = models.BigIntegerField(default=0)  # payroll: what may be deducted per period
    per_purchase_cap_cents = models.BigIntegerField(null=True, blank=True)
    per_day_cap_cents = models.BigIntegerField(null=True, blank=True)
    consent_version = models.CharField(max_length=64, blank=True, default="")
    consented_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)  # biometric data deleted, gone from every unit

    class Meta:
        ordering = ["employee_id"]

    def __str__(self):
        return f"{self.employee_id} {self.name}"


class TopUp(models.Model):
    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="topups")
    amount_cents = models.BigIntegerField()
    source = models.CharField(max_length=16, choices=TOPUP_SOURCES)
    note = models.CharField(max_length=200, blank=True, default="")
    period = models.CharField(max_length=7, blank=True, default="")  # payroll month end: YYYY-MM
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["employee", "period"], condition=~models.Q(period=""),
                                               name="one_payroll_close_per_period")]


class Unit(models.Model):
    unit_id = models.CharField(max_length=64, unique=True)
    fingerprint = models.CharField(max_length=64)  # sha256 hex of the raw Ed25519 public key
    site = models.CharField(max_length=100, blank=True, default="")
    active = models.BooleanField(default=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seq = models.BigIntegerField(default=0)  # last journal entry ingested from this unit
    last_hash = models.CharField(max_length=64, default="0" * 64)
    gap = models.CharField(max_length=300, blank=True, default="")  # a refused batch past last+1, flagged
    last_sync_at = models.DateTimeField(null=True, blank=True)
    heartbeat = models.JSONField(default=dict, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    clock_offset_s = models.FloatField(null=True, blank=True)
    # a reinstalled unit starts a new journal at seq 1: each journal it ever had is one epoch here
    journal_epoch = models.IntegerField(default=1)
    refused = models.CharField(max_length=300, blank=True, default="")  # a batch refused as another journal
    no_sale_alert_h = models.IntegerField(null=True, blank=True)  # None: the office-wide setting; 0: never

    class Meta:
        ordering = ["unit_id"]

    @property
    def applied_bundle_version(self) -> int:
        value = self.heartbeat.get("bundle_version") if isinstance(self.heartbeat, dict) else None
        return value if isinstance(value, int) else 0


class UnitNonce(models.Model):
    """A request's nonce, once per unit (every unit request inserts one, on its own commit): keyed by (unit,
    nonce) itself, no surrogate id (one index and a sequence fewer per request); pruned by ``seen_at``."""
    pk = models.CompositePrimaryKey("unit", "nonce")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, db_constraint=False)  # (and the unit API's other
    # inserts, every request: no foreign-key check by the database; a unit is deactivated, never deleted)
    nonce = models.CharField(max_length=32)
    seen_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["seen_at"], name="unit_nonce_seen_at")]


class JournalBatch(models.Model):
    """A batch ingested from a unit, kept once as the unit sent it (``document``: the signed batch, so its
    signature and hash chain can be checked again; batches ingested before migration 0009 hold the entries as
    the office had them, unsigned). Its new entries are seq ``last_seq - entries + 1`` .. ``last_seq`` (an
    ingest takes only entries that continue the journal it holds): `journal_store.stored_entries` reads them."""
    unit = models.ForeignKey(Unit, on_delete=models.PROTECT, db_constraint=False)  # units are never deleted:
    # no foreign-key check by the database on every upload
    epoch = models.IntegerField(default=1)  # which of the unit's journals (Unit.journal_epoch)
    batch_id = models.CharField(max_length=80)
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    ingested_at = models.FloatField()
    entries = models.IntegerField(default=0)  # how many of its entries were new (the tail of the batch)
    document = models.BinaryField(null=True)  # PostgreSQL: stored with lz4 or uncompressed (migration 0009)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "epoch", "batch_id"], name="batch_once_per_journal")]


class Charge(models.Model):
    """One charge ingested from a unit's journal (a vend that succeeded, a review settled as charged): the
    rows the ledger's check, the sales and employee pages and the no-sale alert read. Every other entry
    (sessions begun, approvals, voids...) lives only in its batch's document: a night's upload writes its 200
    charges as rows, not its 600 entries. Unique by (unit, epoch, seq), as the entries are; written only by an
    ingest holding the unit's row lock. Keyed by (unit, epoch, seq) itself: no surrogate id, so a COPY of
    a night's charges feeds one sequence and one index fewer."""
    pk = models.CompositePrimaryKey("unit", "epoch", "seq")
    unit = models.ForeignKey(Unit, on_delete=models.PROTECT, db_constraint=False, db_index=False)
    epoch = models.IntegerField(default=1)
    seq = models.BigIntegerField()
    ts_us = models.BigIntegerField()
    kind = models.CharField(max_length=32)
    employee_id = models.CharField(max_length=64, null=True, blank=True)
    item = models.CharField(max_length=64, null=True, blank=True)
    charged_cents = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["employee_id"], name="charge_by_employee")]


class SealedTemplate(models.Model):
    """A template sealed under the fleet template key: stored and relayed, never opened here."""
    employee = models.OneToOneField(Employee, on_delete=models.CASCADE, related_name="template")
    sealed = models.BinaryField()
    consent_version = models.CharField(max_length=64)
    consented_at = models.FloatField()
    from_unit = models.ForeignKey(Unit, on_delete=models.SET_NULL, null=True)
    received_at = models.DateTimeField(auto_now=True)


class Deletion(models.Model):
    """An employee's biometric data deleted: every unit must apply a bundle carrying it."""
    employee_id = models.CharField(max_length=64, db_index=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    requested_by = models.CharField(max_length=150, blank=True, default="")


class DeletionNotice(models.Model):
    """The first bundle version for ``unit`` carrying ``deletion``; confirmed when the unit applied it."""
    deletion = models.ForeignKey(Deletion, on_delete=models.CASCADE, related_name="notices")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE)
    bundle_version = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deletion", "unit"], name="one_notice_per_unit")]


class IssuedBundle(models.Model):
    """A bundle issued to a unit, by version and digest: its bytes are made again when asked for, never stored
    (`bundles._encode`); ``data`` holds them only on the instance `current_bundle` returns."""
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, db_constraint=False)
    version = models.BigIntegerField()
    content_sha256 = models.CharField(max_length=64)  # of what the bundle says, without version and times
    created_at = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "version"], name="bundle_version_once_per_unit")]


class AuditEntry(models.Model):
    at = models.DateTimeField(auto_now_add=True)
    user = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=100, blank=True, default="")
    detail = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-at", "-id"]


def audit(user, action: str, target: str = "", detail: str = "") -> AuditEntry:
    """One row per admin action; never biometric data (templates are never passed here)."""
    name = getattr(user, "username", None) or str(user or "system")
    return AuditEntry.objects.create(user=name[:150], action=action[:64], target=str(target)[:100],
                                     detail=str(detail)[:500])


class ChargeTotal(models.Model):
    """Running sum of an employee's ingested charges, so a bundle reads one row per employee (plus the few
    pending ones) instead of summing the whole history; `ledger.check_totals` recomputes it."""
    employee_id = models.CharField(max_length=64, unique=True)
    charged_cents = models.BigIntegerField(default=0)


class ChargePending(models.Model):
    """One ingest's charges per employee (a JSON object, employee id -> cents), added in the ingest's own
    transaction as one new row: uploads from many units at once never wait on each other's locks (every upload
    touches most employees' running totals). Moved into ChargeTotal right after, by whichever process gets to
    it (`ingest.fold_pending_charges`); one row per upload keeps the table small to read between folds.
    PostgreSQL: jsonb, parsed once when written, not by every bundle and fold that reads it."""
    charges = models.JSONField()


class LoginFailure(models.Model):
    """A failed login, kept briefly: five in 15 minutes lock that user name for the rest of the window."""
    username = models.CharField(max_length=150, db_index=True)
    at = models.DateTimeField(db_index=True)


class TemplateRevocation(models.Model):
    """A unit reported an employee's template revoked (unenrolled) at this time: relayed in every bundle so
    other units delete their copies consented before it; an older copy is never relayed again."""
    employee_id = models.CharField(max_length=64, unique=True)
    revoked_at = models.FloatField()


class JournalEpoch(models.Model):
    """One of a unit's earlier journals, closed by a technician when the unit was reinstalled with a fresh
    one: where it ended stays on record; its entries stay in the ledger (never counted again)."""
    unit = models.ForeignKey(Unit, on_delete=models.PROTECT, related_name="closed_journals")
    epoch = models.IntegerField()
    last_seq = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    closed_at = models.DateTimeField(auto_now_add=True)
    closed_by = models.CharField(max_length=150)
    reason = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "epoch"], name="journal_closed_once")]


class HeartbeatRecord(models.Model):
    """A unit's recent heartbeats (the unit's page shows them); pruned to HEARTBEATS_KEPT per unit."""
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="heartbeats", db_constraint=False)
    received_at = models.DateTimeField()
    data = models.JSONField()
    clock_offset_s = models.FloatField(null=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["unit", "-received_at"])]


class OfficeSetting(models.Model):
    """Office-wide settings changed in the web page (audited): one row per name."""
    name = models.CharField(max_length=64, unique=True)
    value = models.IntegerField()


BUNDLE_GENERATION = "bundle_generation"  # an OfficeSetting: a random marker, new on every change bundles share


def bump_bundle_generation(**_signal) -> None:
    """Something every unit's bundle says changed (an employee, a top-up, a template, a revocation, a deletion):
    a new random marker, so each process rebuilds its shared bundle records at their next use. Random, not a
    counter: a database flushed and refilled (tests) can never bring back a marker a process has cached."""
    OfficeSetting.objects.update_or_create(name=BUNDLE_GENERATION, defaults={"value": new_bundle_generation()})


def new_bundle_generation() -> int:
    return secrets.randbelow(2 ** 31)


BUNDLE_SOURCES = (Employee, TopUp, SealedTemplate, TemplateRevocation, Deletion)  # saved or deleted: bump
