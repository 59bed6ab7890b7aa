"""The unit API (`/api/v1/units/<unit_id>/...`): every request signed by the unit's Ed25519 key.

Signed bytes: "vendor-node-request-v1\\n" METHOD "\\n" path_with_query "\\n" timestamp "\\n" nonce "\\n"
sha256_hex(body). Accepted only when the unit is registered and active, the key's sha256 is the
registered fingerprint, the signature verifies, the timestamp is within 300 s, the nonce is new
for this unit, and the URL's unit is X-VN-Unit. Answers the office sends (receipts, bundles) are
signed by the fleet key the unit pins. Refusals: 400 names the field, 401 auth, 403 another
unit's data, 409 journal gap or chain mismatch, 413 too large.
"""
from __future__ import annotations

from .setup import importable

importable()

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import connection, transaction
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from ..errors import UnitRequestRefused
from ..money.bundle import EMPLOYEE_ID_RE, MAX_TEMPLATE_SEALED_BYTES
from .bundles import current_bundle, signing_key
from .ingest import ingest_batch
from .models import Employee, SealedTemplate, TemplateRevocation, Unit, UnitNonce, hot_cursor
from .units import normalise_fingerprint  # noqa: F401 (the CLI's)
from .units import UNIT_REQUEST_FIELDS, heartbeat_writes, record_heartbeat, unit_from_row

REQUEST_PREFIX = b"vendor-node-request-v1\n"
CLOCK_WINDOW_S = 300
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_BODY = {"journal": 32 * 1024 * 1024, "templates": 4 * 1024 * 1024, "heartbeat": 64 * 1024, "bundle": 0}


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_answer(receipt: dict) -> JsonResponse:
    signature = signing_key().sign(canonical_json(receipt))
    return JsonResponse({"receipt": receipt, "signature": base64.b64encode(signature).decode("ascii")})


def fingerprint_of(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()


def request_bytes(method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return REQUEST_PREFIX + "\n".join([method, path_with_query, timestamp, nonce,
                                       hashlib.sha256(body).hexdigest()]).encode()


def authenticate(request, url_unit_id: str, what: str, rider=None) -> tuple[Unit, Ed25519PublicKey, bytes, bool]:
    """The unit, its key, the body and whether ``rider``'s writes were made, or UnitRequestRefused.
    ``rider(body)``: on PostgreSQL, the request's own writes as WITH items over the item ``n`` (the unit's id,
    there only when the nonce was new for the registered, active key: see `_unit_and_nonce`), so a request
    that needs nothing else is one statement; None, or a refusal (raised after every authentication refusal,
    as the handler would), and the request takes the usual way."""
    headers = request.headers
    claimed = headers.get("X-VN-Unit", "")
    timestamp, nonce = headers.get("X-VN-Timestamp", ""), headers.get("X-VN-Nonce", "")
    key_b64, sig_b64 = headers.get("X-VN-Public-Key", ""), headers.get("X-VN-Signature", "")
    for name, value in (("X-VN-Unit", claimed), ("X-VN-Timestamp", timestamp), ("X-VN-Nonce", nonce),
                        ("X-VN-Public-Key", key_b64), ("X-VN-Signature", sig_b64)):
        if not value:
            raise UnitRequestRefused(401, f"{name}: header missing")
    if not timestamp.isdigit():
        raise UnitRequestRefused(400, "X-VN-Timestamp: expected integer unix seconds")
    if not NONCE_RE.match(nonce):
        raise UnitRequestRefused(400, "X-VN-Nonce: expected 32 lowercase hex digits")
    try:
        raw_key = base64.b64decode(key_b64, validate=True)
        signature = base64.b64decode(sig_b64, validate=True)
        public_key = Ed25519PublicKey.from_public_bytes(raw_key)
    except (binascii.Error, ValueError):
        raise UnitRequestRefused(400, "X-VN-Public-Key / X-VN-Signature: not base64 of an Ed25519 key and "
                                      "signature") from None
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit():
        _refuse_unregistered(claimed, raw_key)
        raise UnitRequestRefused(400, "Content-Length: not a number")
    if int(length) > MAX_BODY[what]:
        _refuse_unregistered(claimed, raw_key)
        raise UnitRequestRefused(413, f"body: {length} bytes is more than the {MAX_BODY[what]} a {what} "
                                      "request may carry")
    body = request.body
    try:
        public_key.verify(signature, request_bytes(request.method, request.get_full_path(), timestamp, nonce, body))
    except InvalidSignature:
        _refuse_unregistered(claimed, raw_key)
        raise UnitRequestRefused(401, "X-VN-Signature: does not verify (wrong key, or the request was "
                                      "changed)") from None
    if abs(int(timestamp) - time.time()) > CLOCK_WINDOW_S:
        _refuse_unregistered(claimed, raw_key)
        raise UnitRequestRefused(401, f"X-VN-Timestamp: more than {CLOCK_WINDOW_S} s from the office's clock")
    if url_unit_id != claimed:
        _refuse_unregistered(claimed, raw_key)
        raise UnitRequestRefused(403, f"unit {claimed!r} may not use the URL of unit {url_unit_id!r}")
    now = timezone.now()
    _prune_nonces(now)
    writes, refused = None, None
    if rider is not None and connection.vendor == "postgresql":
        try:
            writes = rider(body)
        except UnitRequestRefused as exc:
            refused = exc  # the body's refusal, once the request is known to be the unit's
    unit, nonce_new = _unit_and_nonce(claimed, fingerprint_of(raw_key), nonce, now, writes)
    _refuse_unregistered(claimed, raw_key, unit)
    if not nonce_new:
        raise UnitRequestRefused(401, "X-VN-Nonce: already used (a replayed request)")
    if refused is not None:
        raise refused
    return unit, public_key, body, writes is not None


def _refuse_unregistered(claimed: str, raw_key: bytes, unit: Unit | None | bool = False) -> None:
    """UnitRequestRefused(401) when the claimed unit is not registered, not active or not this key's: the
    refusal that names the unit comes before any other the request earns (``unit`` False: look it up)."""
    if unit is False:
        unit = Unit.objects.filter(unit_id=claimed).first()
    if unit is None or not unit.active:
        raise UnitRequestRefused(401, f"X-VN-Unit: unit {claimed!r} is not registered (or not active) here")
    if fingerprint_of(raw_key) != unit.fingerprint:
        raise UnitRequestRefused(401, f"X-VN-Public-Key: its fingerprint is not the one registered for {claimed!r}")


def _unit_and_nonce(claimed: str, fingerprint: str, nonce: str, now,
                    writes: tuple[str, list] | None = None) -> tuple[Unit | None, bool]:
    """The claimed unit and whether the nonce was new for it. The nonce is recorded only for an active unit
    whose key this is, on its own (autocommit) before anything else the request does, so a replay is refused
    however the first request ended. PostgreSQL: one statement (the unit read and the nonce inserted in one
    round trip; ``writes``, WITH items over ``n``, made by the same statement when the nonce was new: all or
    nothing); SQLite, which has no INSERT inside WITH: the same two steps as two statements."""
    columns = ", ".join(UNIT_REQUEST_FIELDS)
    when = connection.ops.adapt_datetimefield_value(now)
    with hot_cursor() as cursor:
        if connection.vendor == "postgresql":
            more, values = (f", {writes[0]}", writes[1]) if writes is not None else ("", [])
            cursor.execute(
                f"WITH u AS (SELECT {columns} FROM {Unit._meta.db_table} WHERE unit_id = %s), "
                f"n AS (INSERT INTO {UnitNonce._meta.db_table} (unit_id, nonce, seen_at) SELECT id, %s, %s FROM u "
                f"WHERE active AND fingerprint = %s ON CONFLICT (unit_id, nonce) DO NOTHING RETURNING unit_id AS id)"
                f"{more} SELECT {columns}, EXISTS (SELECT 1 FROM n) FROM u",
                [claimed, nonce, when, fingerprint, *values])
            row = cursor.fetchone()
            return (None, False) if row is None else (unit_from_row(row[:-1]), bool(row[-1]))
        cursor.execute(f"SELECT {columns} FROM {Unit._meta.db_table} WHERE unit_id = %s", [claimed])
        row = cursor.fetchone()
        if row is None:
            return None, False
        unit = unit_from_row(row)
        if not unit.active or unit.fingerprint != fingerprint:
            return unit, False
        cursor.execute(f"INSERT INTO {UnitNonce._meta.db_table} (unit_id, nonce, seen_at) VALUES (%s, %s, %s) "
                       "ON CONFLICT (unit_id, nonce) DO NOTHING RETURNING 1", [unit.pk, nonce, when])
        return unit, cursor.fetchone() is not None


_pruned_at = [0.0]  # monotonic time of this process's last prune


def _prune_nonces(now) -> None:
    """Forget nonces older than twice the clock window (a request that old is refused by its timestamp):
    every unit's at once, at most every 30 s per process, not a statement on every request."""
    if time.monotonic() - _pruned_at[0] < 30:
        return
    _pruned_at[0] = time.monotonic()
    UnitNonce.objects.filter(seen_at__lt=now - dt.timedelta(seconds=2 * CLOCK_WINDOW_S)).delete()


def _stamp_sync(unit_pk: int) -> None:
    """The unit's last sync is now (one plain statement: it runs on every request)."""
    with hot_cursor() as cursor:
        cursor.execute(f"UPDATE {Unit._meta.db_table} SET last_sync_at = %s WHERE id = %s",
                       [connection.ops.adapt_datetimefield_value(timezone.now()), unit_pk])


def unit_endpoint(what: str, method: str, stamps_sync: bool = False, rider=None):
    """``stamps_sync``: the handler stamps the unit's last sync in a statement it runs anyway (the unit row's
    lock or update), else the view does after the handler succeeded. ``rider``: see `authenticate`; when its
    writes were made, the handler is called with ``body`` None and answers without writing."""
    def decorate(handler):
        @csrf_exempt
        def view(request, unit_id):
            if request.method != method:
                return JsonResponse({"error": f"use {method}"}, status=405)
            try:
                unit, public_key, body, rode = authenticate(request, unit_id, what, rider)
                response = handler(request, unit, public_key, None if rode else body)
                if not stamps_sync:
                    _stamp_sync(unit.pk)
                return response
            except UnitRequestRefused as exc:
                return JsonResponse({"error": str(exc)}, status=exc.status)
        return view
    return decorate


@unit_endpoint("journal", "POST", stamps_sync=True)
def journal(request, unit, public_key, body):
    return signed_answer(ingest_batch(unit, body, public_key))


def _json_body(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnitRequestRefused(400, f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnitRequestRefused(400, "body: expected a JSON object")
    return data


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UnitRequestRefused(400, f"{where}: expected a non-negative number")
    return float(value)


@unit_endpoint("templates", "POST")
def templates(request, unit, public_key, body):
    data = _json_body(body)
    records, revocations = data.get("templates", []), data.get("revocations", [])
    if not isinstance(records, list) or not isinstance(revocations, list):
        raise UnitRequestRefused(400, "templates / revocations: expected lists")
    parsed = []
    for i, item in enumerate(records):
        where = f"templates[{i}]"
        if not isinstance(item, dict):
            raise UnitRequestRefused(400, f"{where}: expected an object")
        emp = item.get("employee_id")
        if not isinstance(emp, str) or not EMPLOYEE_ID_RE.match(emp):
            raise UnitRequestRefused(400, f"{where}.employee_id: not a valid employee id")
        try:
            sealed = base64.b64decode(item.get("sealed") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise UnitRequestRefused(400, f"{where}.sealed: not base64") from None
        if not 28 < len(sealed) <= MAX_TEMPLATE_SEALED_BYTES:
            raise UnitRequestRefused(400, f"{where}.sealed: {len(sealed)} bytes is not a sealed template")
        consent = item.get("consent_version")
        if not isinstance(consent, str) or not consent.strip() or len(consent) > 64:
            raise UnitRequestRefused(400, f"{where}.consent_version: expected a short non-empty string")
        parsed.append((emp, sealed, consent, _number(item.get("consented_at"), f"{where}.consented_at")))
    revoked = []
    for i, item in enumerate(revocations):
        emp = item.get("employee_id") if isinstance(item, dict) else None
        if not isinstance(emp, str) or not EMPLOYEE_ID_RE.match(emp):
            raise UnitRequestRefused(400, f"revocations[{i}].employee_id: not a valid employee id")
        revoked.append((emp, _number(item.get("revoked_at"), f"revocations[{i}].revoked_at")))
    accepted = []
    with transaction.atomic():
        known = {e.employee_id: e for e in Employee.objects.filter(
            employee_id__in=[p[0] for p in parsed], deleted_at__isnull=True)}
        revoked_at = dict(TemplateRevocation.objects.filter(employee_id__in=[p[0] for p in parsed])
                          .values_list("employee_id", "revoked_at"))
        for emp, sealed, consent, consented_at in parsed:
            employee = known.get(emp)
            if employee is None:
                continue  # unknown or deleted here: not accepted, the unit keeps (or drops) its copy
            if consented_at <= revoked_at.get(emp, -1.0):
                accepted.append(emp)  # an older copy than a revocation: acknowledged, never stored or relayed
                continue
            SealedTemplate.objects.update_or_create(employee=employee, defaults={
                "sealed": sealed, "consent_version": consent, "consented_at": consented_at, "from_unit": unit})
            employee.consent_version = consent
            employee.consented_at = dt.datetime.fromtimestamp(consented_at, dt.timezone.utc)
            employee.save(update_fields=["consent_version", "consented_at"])
            accepted.append(emp)
        for emp, at in revoked:  # a later enrollment (at any unit) outlives an older unenrollment
            SealedTemplate.objects.filter(employee__employee_id=emp, consented_at__lte=at).delete()
            row, created = TemplateRevocation.objects.select_for_update().get_or_create(
                employee_id=emp, defaults={"revoked_at": at})
            if not created and at > row.revoked_at:
                row.revoked_at = at
                row.save(update_fields=["revoked_at"])
    return signed_answer({"kind": "templates", "unit_id": unit.unit_id, "accepted": accepted,
                          "revocations": [emp for emp, _ in revoked]})


HEARTBEAT_FIELDS = {"firmware": str, "model": str, "bundle_version": int, "last_purchase_at": (float, type(None)),
                    "out_of_service": (str, type(None)), "faults": list, "free_disk_bytes": int,
                    "journal_ok": bool, "journal_head_seq": int, "clock": float, "key_mode": str}


def _heartbeat_writes(body: bytes) -> tuple[str, list]:
    clean = _clean_heartbeat(body)
    return heartbeat_writes("n", clean, round(clean["clock"] - time.time(), 3),
                            connection.ops.adapt_datetimefield_value(timezone.now()))


@unit_endpoint("heartbeat", "POST", stamps_sync=True, rider=_heartbeat_writes)
def heartbeat(request, unit, public_key, body):
    """On PostgreSQL recorded by the statement that spends the nonce (``body`` None here)."""
    if body is not None:
        clean = _clean_heartbeat(body)
        record_heartbeat(unit, clean, round(clean["clock"] - time.time(), 3))
    return JsonResponse({"ok": True})


def _clean_heartbeat(body: bytes) -> dict:
    """The heartbeat's fields checked (UnitRequestRefused 400 naming the first wrong one), long texts cut."""
    data = _json_body(body)
    clean = {}
    for name, kinds in HEARTBEAT_FIELDS.items():
        if name not in data:
            raise UnitRequestRefused(400, f"{name}: missing")
        value = data[name]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise UnitRequestRefused(400, f"{name}: expected {' or '.join(k.__name__ for k in kinds)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UnitRequestRefused(400, f"{name}: not a finite number")
        if isinstance(value, str):
            value = value[:500]  # a long fault text is still a fault: kept, cut to size
        clean[name] = value
    if not all(isinstance(f, str) for f in clean["faults"]) or len(clean["faults"]) > 100:
        raise UnitRequestRefused(400, "faults: expected a list of at most 100 strings")
    clean["faults"] = [f[:500] for f in clean["faults"]]
    return clean


@unit_endpoint("bundle", "GET", stamps_sync=True)
def bundle(request, unit, public_key, body):
    after = request.GET.get("after", "0")
    if not after.isdigit() or len(after) > 19:
        raise UnitRequestRefused(400, "after: expected a non-negative integer version")
    issued = current_bundle(unit, stamp_sync=True, unit_has=int(after))
    if issued.version <= int(after):
        return HttpResponse(status=204)
    response = HttpResponse(bytes(issued.data), content_type="application/octet-stream")
    response["X-VN-Bundle-Version"] = str(issued.version)
    return response


@unit_endpoint("bundle", "GET")
def summary(request, unit, public_key, body):
    """What the office's ledger holds from this unit's current journal, signed: `simulate --office` reports it."""
    from django.db.models import Sum

    from .models import Charge, JournalBatch

    entries = JournalBatch.objects.filter(unit=unit, epoch=unit.journal_epoch).aggregate(n=Sum("entries"))["n"]
    charged = Charge.objects.filter(unit=unit, epoch=unit.journal_epoch).aggregate(s=Sum("charged_cents"))["s"]
    return signed_answer({"kind": "summary", "unit_id": unit.unit_id, "last_seq": unit.last_seq,
                          "last_hash": unit.last_hash, "entries": entries or 0, "charged_cents": charged or 0})
