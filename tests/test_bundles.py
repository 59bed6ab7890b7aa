"""Bundle file format and the technician's CSV: every bad input is a clear BundleError."""
import base64
import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.money.bundle import HEADER, MAGIC, Bundle, EmployeeRecord, TemplateRecord, decode_bundle, encode_bundle
from vendor_node.money.employees_csv import parse_amount_cents, parse_employees_csv
from vendor_node.errors import BundleError

SIGNER = Ed25519PrivateKey.generate()
FLEET = SIGNER.public_key()
NOW = time.time()


def sample(**changes) -> Bundle:
    fields = dict(kind="snapshot", version=3, created=NOW, expires=NOW + 86400, unit_id="U1",
                  policy={"per_day_cap_cents": 1000},
                  employees=[EmployeeRecord("E1", "Ann", funds_cents=1200),
                             EmployeeRecord("E2", "Bob", status="suspended", funding="payroll", funds_cents=0,
                                            per_purchase_cap_cents=300, per_day_cap_cents=900)],
                  templates=[TemplateRecord("E1", os.urandom(12 + 16 + 200), "consent-2", NOW - 10)],
                  deletions=["E9"])
    fields.update(changes)
    return Bundle(**fields)


def sign_raw_payload(payload: bytes) -> bytes:
    signed = MAGIC + HEADER.pack(len(payload)) + payload
    return signed + SIGNER.sign(signed)


def test_round_trip():
    original = sample()
    decoded = decode_bundle(encode_bundle(original, SIGNER), FLEET)
    assert decoded.employees == original.employees
    assert decoded.templates == original.templates
    assert decoded.deletions == ["E9"] and decoded.policy == {"per_day_cap_cents": 1000}
    assert (decoded.kind, decoded.version, decoded.created, decoded.expires) == ("snapshot", 3, NOW, NOW + 86400)
    assert len(decoded.sha256) == 64


def test_delta_round_trip():
    decoded = decode_bundle(encode_bundle(sample(kind="delta", base_version=2), SIGNER), FLEET)
    assert decoded.kind == "delta" and decoded.base_version == 2


def test_signature_by_another_key_is_refused():
    data = encode_bundle(sample(), Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="bad signature"):
        decode_bundle(data, FLEET)


def test_any_flipped_byte_is_refused():
    data = bytearray(encode_bundle(sample(), SIGNER))
    for position in (len(MAGIC) + HEADER.size + 5, len(data) // 2, len(data) - 1):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(BundleError, match="bad signature"):
            decode_bundle(bytes(damaged), FLEET)


@pytest.mark.parametrize("keep", [0, 5, 12, 20, 100, -1])
def test_truncated_file_is_refused(keep):
    data = encode_bundle(sample(), SIGNER)
    cut = data[:keep] if keep >= 0 else data[:-1]
    with pytest.raises(BundleError, match="truncated|bad magic"):
        decode_bundle(cut, FLEET)


def test_not_a_bundle_and_trailing_bytes():
    with pytest.raises(BundleError, match="bad magic"):
        decode_bundle(b"PK\x03\x04" + b"\0" * 200, FLEET)
    with pytest.raises(BundleError, match="unexpected bytes after the signature"):
        decode_bundle(encode_bundle(sample(), SIGNER) + b"x", FLEET)


def test_signed_but_malformed_json_is_refused():
    with pytest.raises(BundleError, match="not valid JSON"):
        decode_bundle(sign_raw_payload(b'{"format": 1, "kind": '), FLEET)
    with pytest.raises(BundleError, match="not valid JSON"):
        decode_bundle(sign_raw_payload(b"\xff\xfe"), FLEET)


def payload_of(bundle: Bundle) -> dict:
    data = encode_bundle(bundle, SIGNER)
    return json.loads(data[len(MAGIC) + HEADER.size:-64])


@pytest.mark.parametrize("mutate, fragment", [
    (lambda p: p.pop("version"), "missing field 'version'"),
    (lambda p: p.update(extra=1), "unknown field 'extra'"),
    (lambda p: p.update(format=3), "unsupported bundle format"),
    (lambda p: p.update(format=1), "format-1 bundle names no unit"),
    (lambda p: p.pop("unit_id"), "missing field 'unit_id'"),
    (lambda p: p.update(unit_id="bad unit!"), "unit_id: not a valid unit id"),
    (lambda p: p.pop("journal_position"), "missing field 'journal_position'"),
    (lambda p: p["journal_position"].update(seq=-1), "journal_position.seq"),
    (lambda p: p["journal_position"].update(hash="xyz"), "journal_position.hash: expected 64"),
    (lambda p: p["journal_position"].update(hash="a" * 64), "seq 0 .* goes with the genesis hash"),
    (lambda p: p.update(version=2 ** 63), "version: .* past the largest storable integer"),
    (lambda p: p.update(expires=p["created"] + 400 * 86400), "expires: valid for .* at most 366"),
    (lambda p: p["employees"][0].update(name="Ann\u0085"), r"employees\[0\].name: contains the control"),
    (lambda p: p["employees"][0].update(name="Ann\x7f"), r"employees\[0\].name: contains the control"),
    (lambda p: p.update(kind="full"), "kind: must be one of"),
    (lambda p: p.update(version=0), "version: must be at least 1"),
    (lambda p: p.update(version="3"), "version: expected a non-negative integer"),
    (lambda p: p.update(expires=p["created"] - 1), "expires: must be after"),
    (lambda p: p.update(base_version=1), "only a delta has a base version"),
    (lambda p: p.update(kind="delta"), "a delta needs 'base_version'"),
    (lambda p: p.update(policy={"free_snacks": 1}), "policy: unknown field 'free_snacks'"),
    (lambda p: p["employees"][0].update(funds_cents=-5), r"employees\[0\].funds_cents"),
    (lambda p: p["employees"][0].update(funds_cents=12.5), r"employees\[0\].funds_cents"),
    (lambda p: p["employees"][1].update(status="deleted"), r"employees\[1\].status: must be one of"),
    (lambda p: p["employees"][1].update(id="E1"), "duplicate employee id 'E1'"),
    (lambda p: p["employees"][0].update(id="bad id!"), "not a valid employee id"),
    (lambda p: p["employees"][0].update(name=""), r"employees\[0\].name"),
    (lambda p: p["employees"][0].pop("funding"), "missing field 'funding'"),
    (lambda p: p.update(employees={}), "employees: expected a list"),
    (lambda p: p["deletions"].append("E1"), "both listed and deleted"),
    (lambda p: p["templates"][0].update(sealed="***"), "not valid base64"),
    (lambda p: p["templates"][0].update(sealed=base64.b64encode(b"x" * 5000).decode()), "not a sealed template"),
    (lambda p: p["templates"][0].update(consent_version=""), "consent_version"),
    (lambda p: p["templates"][0].pop("consent_version"), "missing field 'consent_version'"),
    (lambda p: p["templates"].append(dict(p["templates"][0])), "second template"),
    (lambda p: p["templates"][0].update(employee_id="E9"), "template for deleted employee"),
])
def test_schema_errors_name_the_field(mutate, fragment):
    payload = payload_of(sample())
    mutate(payload)
    with pytest.raises(BundleError, match=fragment):
        decode_bundle(sign_raw_payload(json.dumps(payload).encode()), FLEET)


# --- CSV ---------------------------------------------------------------------------
def write(tmp_path, text, name="employees.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_all_columns(tmp_path):
    path = write(tmp_path, "employee_id,display_name,funds,status,funding,per_purchase_cap,per_day_cap\n"
                           "E1,Ann Smith,20.00,,,,\n"
                           "E2,\"Bob, Jr\",5.5,suspended,payroll,2.00,\n"
                           "\n"
                           "E3,Cy,0,deleted,,,\n"
                           "E4,Di,10,active,prepaid,,8\n")
    employees, deletions = parse_employees_csv(path)
    assert [e.id for e in employees] == ["E1", "E2", "E4"]
    assert employees[0] == EmployeeRecord("E1", "Ann Smith", "active", "prepaid", 2000, None, None)
    assert employees[1] == EmployeeRecord("E2", "Bob, Jr", "suspended", "payroll", 550, 200, None)
    assert employees[2].per_day_cap_cents == 800
    assert deletions == ["E3"]


def test_csv_minimal_columns_any_order(tmp_path):
    employees, _ = parse_employees_csv(write(tmp_path, "funds,employee_id,display_name\n1.25,E1,Ann\n"))
    assert employees == [EmployeeRecord("E1", "Ann", funds_cents=125)]


@pytest.mark.parametrize("text, fragment", [
    ("", "empty file"),
    ("employee_id,display_name\nE1,Ann\n", "line 1: missing column 'funds'"),
    ("employee_id,display_name,funds,colour\nE1,Ann,1,red\n", "line 1, column colour: unknown column"),
    ("employee_id,display_name,funds,funds\nE1,Ann,1,2\n", "column funds: column appears twice"),
    ("employee_id,display_name,funds\nE1,Ann,1.00\nE2,Bob,12.x\n", "line 3, column funds: '12.x' is not an amount"),
    ("employee_id,display_name,funds\nE1,Ann,-1\n", "line 2, column funds"),
    ("employee_id,display_name,funds\nE1,Ann,1.005\n", "line 2, column funds"),
    ("employee_id,display_name,funds\nE1,Ann,\n", "line 2, column funds: is required"),
    ("employee_id,display_name,funds\nE1,Ann,1\nE2,Bob,2\nE1,Ann again,3\n",
     "line 4, column employee_id: duplicate id 'E1' \\(first on line 2\\)"),
    ("employee_id,display_name,funds\nE 1,Ann,1\n", "line 2, column employee_id: not a valid employee id"),
    ("employee_id,display_name,funds,status\nE1,Ann,1,retired\n", "line 2, column status"),
    ("employee_id,display_name,funds,funding\nE1,Ann,1,credit\n", "line 2, column funding"),
    ("employee_id,display_name,funds,per_day_cap\nE1,Ann,1,lots\n", "line 2, column per_day_cap"),
    ("employee_id,display_name,funds\nE1,Ann\n", "line 2, column -: 2 fields, the header has 3"),
    ("employee_id,display_name,funds\nE1,,1\n", "line 2, column display_name"),
])
def test_bad_csv_names_line_and_column(tmp_path, text, fragment):
    with pytest.raises(BundleError, match=fragment):
        parse_employees_csv(write(tmp_path, text))


def test_csv_that_is_not_text(tmp_path):
    path = tmp_path / "employees.csv"
    path.write_bytes(b"employee_id,display_name,funds\n\xff\xfe,\x00\n")
    with pytest.raises(BundleError):
        parse_employees_csv(path)


def test_missing_csv(tmp_path):
    with pytest.raises(BundleError, match="cannot read"):
        parse_employees_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize("text, cents", [("0", 0), ("1", 100), ("1.5", 150), ("12.34", 1234), (" 7.05 ", 705)])
def test_amounts(text, cents):
    assert parse_amount_cents(text) == cents


def test_a_signed_bundle_nested_200000_deep_is_a_bundle_error_not_a_crash():
    """Even a payload the fleet key signed is parsed defensively: a RecursionError once escaped."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vendor_node.errors import BundleError

    key = Ed25519PrivateKey.generate()
    payload = b"[" * 200_000 + b"]" * 200_000
    signed = MAGIC + HEADER.pack(len(payload)) + payload
    with pytest.raises(BundleError, match="nests too deeply"):
        decode_bundle(signed + key.sign(signed), key.public_key())
