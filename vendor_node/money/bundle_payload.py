"""What a bundle says, and the rules every unit checks it against: the records, the limits, the validation.

Kept apart from the signed file format (bundle.py) so both the unit (reading) and the fleet side (refusing to
sign what units would refuse) use one set of rules. Every error names the field path (``employees[3].funds_cents``).
"""
from __future__ import annotations

import base64
import binascii
import math
import re
import unicodedata
from dataclasses import dataclass, field

from ..errors import BundleError
from .journal_schema import GENESIS_HASH

FORMAT = 2
MAX_INTEGER = 2 ** 63 - 1  # SQLite's largest integer: versions, seqs and cents beyond it cannot be stored
MAX_VALIDITY_DAYS = 366  # a bundle valid for longer is a typo (expires-days 1e308), not a policy
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
TEMPLATE_TRANSPORT_PURPOSE = b"vendor-node template transport v1"
EMPLOYEE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_NAME_CHARS = 100
MAX_TEMPLATE_SEALED_BYTES = 1024 + 12 + 16
STATUSES = ("active", "suspended")
FUNDING = ("prepaid", "payroll")
POLICY_KEYS = {"max_offline_age_h": float, "per_day_cap_cents": int, "unsynced_total_cap_cents": int}


@dataclass(frozen=True)
class EmployeeRecord:
    id: str
    display_name: str
    status: str = "active"
    funding: str = "prepaid"
    funds_cents: int = 0
    per_purchase_cap_cents: int | None = None
    per_day_cap_cents: int | None = None  # None: the policy's per-day cap


@dataclass(frozen=True)
class TemplateRecord:
    employee_id: str
    sealed: bytes  # AES-GCM under the fleet template key
    consent_version: str
    consented_at: float


@dataclass(frozen=True)
class JournalPosition:
    """The last entry of the unit's journal the office had ingested when it built the bundle."""

    seq: int = 0
    hash: str = GENESIS_HASH

    @classmethod
    def parse(cls, text: str) -> "JournalPosition":
        """``SEQ:HASH`` (as the CLI takes it); BundleError names what is wrong."""
        seq_text, sep, digest = text.strip().partition(":")
        if not sep or not seq_text.isdigit() or not HASH_RE.match(digest):
            raise BundleError(f"journal position {text!r}: expected SEQ:HASH, e.g. 42:<64 lowercase hex digits>")
        return _check_position(_Checker("journal position"), {"seq": int(seq_text), "hash": digest}, "position")


@dataclass(frozen=True)
class Bundle:
    kind: str
    version: int
    created: float
    expires: float
    base_version: int | None = None
    unit_id: str = ""  # required: the one unit this bundle is for
    journal_position: JournalPosition = field(default_factory=JournalPosition)
    policy: dict = field(default_factory=dict)
    employees: list[EmployeeRecord] = field(default_factory=list)
    templates: list[TemplateRecord] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    # employee id -> when their biometric data was revoked (at a unit or by the office): every template of
    # theirs consented at or before that time is deleted, and never brought back by a later bundle
    template_revocations: dict[str, float] = field(default_factory=dict)
    sha256: str = ""


def control_character(text: str) -> str | None:
    """The first control character (or line/paragraph separator) in ``text`` as U+XXXX, or None: a name
    reaches a display, a log line and a CSV export, none of which may be steered by it."""
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    return None if bad is None else f"U+{ord(bad):04X}"


class _Checker:
    """Small typed field readers whose errors name the JSON path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str):
        raise BundleError(f"{self.source}: {where}: {problem}")

    def table(self, value, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {type(value).__name__}")
        missing = sorted(required - value.keys())
        if missing:
            self.fail(where, f"missing field {missing[0]!r}")
        unknown = sorted(value.keys() - required - optional)
        if unknown:
            self.fail(where, f"unknown field {unknown[0]!r}")
        return value

    def integer(self, value, where: str, nullable: bool = False) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(where, f"expected a non-negative integer, got {value!r}")
        if value > MAX_INTEGER:
            self.fail(where, f"{value} is past the largest storable integer (2^63-1)")
        return value

    def number(self, value, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            self.fail(where, f"expected a non-negative number, got {value!r}")
        return float(value)

    def text(self, value, where: str, max_chars: int = 200) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
            self.fail(where, f"expected a non-empty string of at most {max_chars} characters, got {value!r}")
        bad = control_character(value)
        if bad is not None:
            self.fail(where, f"contains the control character {bad}")
        return value

    def employee_id(self, value, where: str) -> str:
        if not isinstance(value, str) or not EMPLOYEE_ID_RE.match(value):
            self.fail(where, f"not a valid employee id: {value!r}")
        return value

    def choice(self, value, where: str, choices) -> str:
        if value not in choices:
            self.fail(where, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def array(self, value, where: str) -> list:
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {type(value).__name__}")
        return value


def _validate_payload(raw, source: str) -> Bundle:
    c = _Checker(source)
    top = _check_top(c, raw)
    employees, seen = [], set()
    for i, item in enumerate(c.array(top["employees"], "employees")):
        employees.append(_check_employee(c, item, f"employees[{i}]", seen))
    deletions = _check_deletions(c, top["deletions"], seen)
    revocations = _check_revocations(c, top.get("template_revocations", []))
    templates, with_template = [], {}
    for i, item in enumerate(c.array(top["templates"], "templates")):
        template = _check_template(c, item, f"templates[{i}]", with_template)
        _check_template_allowed(c, f"templates[{i}]", template.employee_id, template.consented_at, set(deletions),
                                revocations)
        templates.append(template)
    return Bundle(employees=employees, templates=templates, deletions=deletions, template_revocations=revocations,
                  **_header_fields(c, top))


TOP_REQUIRED = {"format", "unit_id", "journal_position", "kind", "version", "created", "expires", "employees",
                "templates", "deletions"}
TOP_OPTIONAL = {"policy", "base_version", "template_revocations"}


def _check_top(c: "_Checker", raw) -> dict:
    if isinstance(raw, dict) and raw.get("format") == 1:
        c.fail("format", "a format-1 bundle names no unit and no journal position; this unit reads format 2 "
                         "only: rebuild it for this unit (`vendor-node fleet bundle --unit-id ...` or the office)")
    return c.table(raw, "payload", TOP_REQUIRED, TOP_OPTIONAL)


def _header_fields(c: "_Checker", top: dict) -> dict:
    """Everything of the payload but its lists, checked: the Bundle fields a streamed reader fills first."""
    if top["format"] != FORMAT:
        c.fail("format", f"unsupported bundle format {top['format']!r} (this unit reads {FORMAT})")
    if not isinstance(top["unit_id"], str) or not EMPLOYEE_ID_RE.match(top["unit_id"]):
        c.fail("unit_id", f"not a valid unit id: {top['unit_id']!r} (a bundle is built for one unit)")
    position = _check_position(c, top["journal_position"], "journal_position")
    kind = c.choice(top["kind"], "kind", ("snapshot", "delta"))
    version = c.integer(top["version"], "version")
    if version < 1:
        c.fail("version", "must be at least 1")
    base_version = None
    if kind == "delta":
        if "base_version" not in top:
            c.fail("payload", "a delta needs 'base_version'")
        base_version = c.integer(top["base_version"], "base_version")
        if base_version >= version:
            c.fail("base_version", f"{base_version} must be below version {version}")
    elif "base_version" in top:
        c.fail("base_version", "only a delta has a base version")
    created = c.number(top["created"], "created")
    expires = c.number(top["expires"], "expires")
    if expires <= created:
        c.fail("expires", "must be after 'created'")
    if expires - created > MAX_VALIDITY_DAYS * 86400.0:
        c.fail("expires", f"valid for {(expires - created) / 86400:.3g} days; at most {MAX_VALIDITY_DAYS}")
    policy = {}
    for key, value in c.table(top.get("policy", {}), "policy", set(), set(POLICY_KEYS)).items():
        policy[key] = c.integer(value, f"policy.{key}") if POLICY_KEYS[key] is int else c.number(value, f"policy.{key}")
    return {"kind": kind, "version": version, "base_version": base_version, "created": created, "expires": expires,
            "unit_id": top["unit_id"], "journal_position": position, "policy": policy}


def _check_employee(c: "_Checker", item, where: str, seen: set) -> EmployeeRecord:
    """One ``employees[i]`` entry; its id joins ``seen`` (a second one is refused)."""
    c.table(item, where, {"id", "name", "status", "funding", "funds_cents"},
            {"per_purchase_cap_cents", "per_day_cap_cents"})
    emp_id = c.employee_id(item["id"], f"{where}.id")
    if emp_id in seen:
        c.fail(f"{where}.id", f"duplicate employee id {emp_id!r}")
    seen.add(emp_id)
    return EmployeeRecord(
        id=emp_id,
        display_name=c.text(item["name"], f"{where}.name", MAX_NAME_CHARS),
        status=c.choice(item["status"], f"{where}.status", STATUSES),
        funding=c.choice(item["funding"], f"{where}.funding", FUNDING),
        funds_cents=c.integer(item["funds_cents"], f"{where}.funds_cents"),
        per_purchase_cap_cents=c.integer(item.get("per_purchase_cap_cents"), f"{where}.per_purchase_cap_cents",
                                         nullable=True),
        per_day_cap_cents=c.integer(item.get("per_day_cap_cents"), f"{where}.per_day_cap_cents", nullable=True),
    )


def _check_deletions(c: "_Checker", raw, employees: set) -> list[str]:
    deletions = []
    for i, item in enumerate(c.array(raw, "deletions")):
        emp_id = c.employee_id(item, f"deletions[{i}]")
        if emp_id in employees:
            c.fail(f"deletions[{i}]", f"employee {emp_id!r} is both listed and deleted")
        deletions.append(emp_id)
    return deletions


def _check_revocations(c: "_Checker", raw) -> dict[str, float]:
    revocations: dict[str, float] = {}
    for i, item in enumerate(c.array(raw, "template_revocations")):
        where = f"template_revocations[{i}]"
        c.table(item, where, {"employee_id", "revoked_at"})
        emp_id = c.employee_id(item["employee_id"], f"{where}.employee_id")
        if emp_id in revocations:
            c.fail(f"{where}.employee_id", f"second revocation for {emp_id!r}")
        revocations[emp_id] = c.number(item["revoked_at"], f"{where}.revoked_at")
    return revocations


def _check_template(c: "_Checker", item, where: str, with_template: dict) -> TemplateRecord:
    """One ``templates[i]`` entry on its own; ``with_template`` maps each id seen to its index (a second is
    refused). Whether a deletion or revocation refuses it is ``_check_template_allowed``."""
    c.table(item, where, {"employee_id", "sealed", "consent_version", "consented_at"})
    emp_id = c.employee_id(item["employee_id"], f"{where}.employee_id")
    if emp_id in with_template:
        c.fail(f"{where}.employee_id", f"second template for {emp_id!r}")
    consented_at = c.number(item["consented_at"], f"{where}.consented_at")
    with_template[emp_id] = where
    if not isinstance(item["sealed"], str):
        c.fail(f"{where}.sealed", "expected base64 text")
    try:
        sealed = base64.b64decode(item["sealed"], validate=True)
    except (binascii.Error, ValueError):
        c.fail(f"{where}.sealed", "not valid base64")
    if not 28 < len(sealed) <= MAX_TEMPLATE_SEALED_BYTES:
        c.fail(f"{where}.sealed", f"{len(sealed)} bytes is not a sealed template (at most 1 KiB of template)")
    return TemplateRecord(employee_id=emp_id, sealed=sealed,
                          consent_version=c.text(item["consent_version"], f"{where}.consent_version", 64),
                          consented_at=consented_at)


def _check_template_allowed(c: "_Checker", where: str, emp_id: str, consented_at: float, deleted: set,
                            revocations: dict[str, float]) -> None:
    if emp_id in deleted:
        c.fail(f"{where}.employee_id", f"template for deleted employee {emp_id!r}")
    if emp_id in revocations and consented_at <= revocations[emp_id]:
        c.fail(f"{where}.employee_id", f"template for {emp_id!r} consented before its own revocation")


def _check_position(c: "_Checker", value, where: str) -> JournalPosition:
    c.table(value, where, {"seq", "hash"})
    seq = c.integer(value["seq"], f"{where}.seq")
    digest = value["hash"]
    if not isinstance(digest, str) or not HASH_RE.match(digest):
        c.fail(f"{where}.hash", f"expected 64 lowercase hex digits, got {digest!r}")
    if seq == 0 and digest != GENESIS_HASH:
        c.fail(f"{where}.hash", "seq 0 (nothing ingested) goes with the genesis hash (64 zeros)")
    return JournalPosition(seq, digest)
