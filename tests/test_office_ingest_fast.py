"""An upload is checked the same with the office extra's orjson as with the standard library alone: the
entries' canonical bytes orjson writes are `canonical_entry`'s for anything an entry can hold, and a batch
(odd characters, a changed entry, a wrong layout) gets the same verdict and the same rows either way."""
from __future__ import annotations

import json

import pytest

from test_office_support import FakeUnit, office  # noqa: F401

pytest.importorskip("django")
orjson = pytest.importorskip("orjson")


def test_orjson_writes_an_entrys_canonical_bytes():
    """What parse_batch hashes when orjson is installed equals the reference encoding (drawn strings with
    quotes, backslashes, control and non-ASCII characters; integers of any size, past 64 bits the reference
    way), so a unit's chain verifies exactly as before."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st

    from test_office_support import office_keys_dir

    office_keys_dir()  # the office's modules import once Django is configured
    from vendor_node.money.journal_schema import canonical_entry
    from vendor_node.office.ingest import _canonical_entry

    text, maybe_text = st.text(), st.none() | st.text()
    number = st.integers(min_value=-2 ** 70, max_value=2 ** 70)

    @settings(max_examples=500, deadline=None)
    @given(st.tuples(number, number, text, text, maybe_text, maybe_text, st.none() | number, maybe_text))
    def check(values):
        assert _canonical_entry(*values) == canonical_entry(*values)

    check()


def _verdict(data: bytes, unit, key):
    from vendor_node.errors import UnitRequestRefused
    from vendor_node.office.ingest import parse_batch

    try:
        return parse_batch(data, unit, key)
    except UnitRequestRefused as exc:
        return exc.status, str(exc)


def test_a_batch_gets_the_same_verdict_with_and_without_orjson(office, tmp_path, monkeypatch):  # noqa: F811
    from vendor_node.office import ingest
    from vendor_node.office.models import Unit

    unit = FakeUnit(tmp_path / "u", "unit-fast")
    try:
        for item in ("12", "é \"quoted\" \\ back", "tab\there\x01\x1f\x7f", "\u2028 line ✓ 😀"):
            unit.buy("E1", 150, item=item)
        unit.buy("E2", 90, succeed=False)
        registered = Unit(unit_id=unit.unit_id, fingerprint=unit.fingerprint)
        key = unit.key.public_key()
        good = unit.batch()
        document = json.loads(good)
        document["body"]["entries"][3]["item"] = "13"  # changed after hashing, signed again by the unit's key
        from vendor_node.money.journal_export import _canonical

        document["signature"] = __import__("base64").b64encode(unit.key.sign(_canonical(document["body"]))).decode()
        changed = _canonical(document) + b"\n"
        spaced = json.dumps(json.loads(good), indent=1).encode()  # not the layout `journal export` writes
        for data in (good, changed, spaced, good.replace(b'"version":1', b'"version":1.5')):
            fast = _verdict(data, registered, key)
            monkeypatch.setattr(ingest, "_fast_dumps", None)
            monkeypatch.setattr(ingest, "_fast_loads", json.loads)
            assert _verdict(data, registered, key) == fast
            monkeypatch.undo()
        body, rows = _verdict(good, registered, key)
        assert isinstance(body, dict) and len(rows) == 4  # the charges: each vend that succeeded
        assert [row[4] for row in rows] == [body["entries"][i]["item"] for i in (2, 5, 8, 11)] and \
            rows[1][4] == "é \"quoted\" \\ back" and {row[5] for row in rows} == {150}
        assert _verdict(changed, registered, key)[0] == 409 and "hash chain broken" in _verdict(changed, registered,
                                                                                                 key)[1]
    finally:
        unit.close()
