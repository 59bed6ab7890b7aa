"""The technician's employee CSV, turned into bundle records: errors name the line and the column.

The back office and `vendor-node fleet bundle` read the same columns, so a file that imports in one
imports in the other.
"""
from __future__ import annotations

import csv
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..errors import BundleError
from .bundle import EMPLOYEE_ID_RE, FUNDING, MAX_NAME_CHARS, STATUSES, EmployeeRecord, control_character

CSV_REQUIRED = ("employee_id", "display_name", "funds")
CSV_OPTIONAL = ("status", "funding", "per_purchase_cap", "per_day_cap")
CSV_HELP = (
    "CSV columns: employee_id, display_name, funds (required); status (active|suspended|deleted, "
    "default active), funding (prepaid|payroll, default prepaid), per_purchase_cap, per_day_cap "
    "(optional, blank for none / the unit default). Amounts in currency units like 12.50."
)
_AMOUNT_RE = re.compile(r"^\d{1,7}(\.\d{1,2})?$")


def parse_amount_cents(text: str) -> int:
    """'12.5' -> 1250; ValueError for anything but a plain non-negative amount with <= 2 decimals."""
    text = text.strip()
    if not _AMOUNT_RE.match(text):
        raise ValueError(f"{text!r} is not an amount like 12.50")
    try:
        return int(Decimal(text) * 100)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount like 12.50") from None


def parse_employees_csv(path: Path | str) -> tuple[list[EmployeeRecord], list[str]]:
    """Employees and deletions from a technician's CSV; errors name the line and column."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from None
    employees: list[EmployeeRecord] = []
    deletions: list[str] = []
    first_line: dict[str, int] = {}
    with handle:
        reader = csv.reader(handle)

        def fail(line, column, problem):
            raise BundleError(f"{path} line {line}, column {column}: {problem}")

        try:
            header = next(reader, None)
            if header is None:
                raise BundleError(f"{path}: empty file; {CSV_HELP}")
            header = [h.strip() for h in header]
            for col in header:
                if col not in CSV_REQUIRED + CSV_OPTIONAL:
                    fail(1, col or "(blank)", f"unknown column; {CSV_HELP}")
            if len(set(header)) != len(header):
                dup = next(h for h in header if header.count(h) > 1)
                fail(1, dup, "column appears twice")
            for col in CSV_REQUIRED:
                if col not in header:
                    raise BundleError(f"{path} line 1: missing column {col!r}; {CSV_HELP}")
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    fail(line, "-", f"{len(row)} fields, the header has {len(header)}")
                cells = {name: value.strip() for name, value in zip(header, row)}
                emp_id = cells["employee_id"]
                if not EMPLOYEE_ID_RE.match(emp_id):
                    fail(line, "employee_id", f"not a valid employee id: {emp_id!r} (letters, digits, . _ @ -)")
                if emp_id in first_line:
                    fail(line, "employee_id", f"duplicate id {emp_id!r} (first on line {first_line[emp_id]})")
                first_line[emp_id] = line
                status = cells.get("status") or "active"
                if status not in STATUSES + ("deleted",):
                    fail(line, "status", f"must be active, suspended or deleted, got {status!r}")
                if status == "deleted":
                    deletions.append(emp_id)
                    continue
                name = cells["display_name"]
                if not name or len(name) > MAX_NAME_CHARS:
                    fail(line, "display_name", f"must be 1 to {MAX_NAME_CHARS} characters")
                if control_character(name):
                    fail(line, "display_name", f"contains the control character {control_character(name)}")
                funding = cells.get("funding") or "prepaid"
                if funding not in FUNDING:
                    fail(line, "funding", f"must be prepaid or payroll, got {funding!r}")
                amounts = {}
                for col in ("funds", "per_purchase_cap", "per_day_cap"):
                    text = cells.get(col, "")
                    if not text:
                        if col == "funds":
                            fail(line, col, "is required")
                        amounts[col] = None
                        continue
                    try:
                        amounts[col] = parse_amount_cents(text)
                    except ValueError as exc:
                        fail(line, col, str(exc))
                employees.append(EmployeeRecord(
                    id=emp_id, display_name=name, status=status, funding=funding,
                    funds_cents=amounts["funds"], per_purchase_cap_cents=amounts["per_purchase_cap"],
                    per_day_cap_cents=amounts["per_day_cap"],
                ))
        except csv.Error as exc:
            raise BundleError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise BundleError(f"{path}: not UTF-8 text: {exc}") from None
    return employees, deletions
