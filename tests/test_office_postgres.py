"""The office on a real PostgreSQL server (a throwaway one started here), driven over HTTP as units
drive it: signed uploads from two units at once, receipts, bundles, the database restarted and the
office killed mid-upload: nothing lost, nothing counted twice."""
from __future__ import annotations

import os
import json
import threading

import pytest

from test_office_support import FakeUnit, OfficeProcess, fleet_public_key, verify_receipt

pytest.importorskip("django")
pytest.importorskip("psycopg")
from vendor_node.office import pgtemp  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    if not pgtemp.available():
        if os.environ.get("CI"):
            pytest.fail("CI must have PostgreSQL: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL binaries are not installed (.ci/run installs Debian's postgresql)")
    with pgtemp.ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def fleet_keys(tmp_path):
    from vendor_node.money.keys import generate_fleet_keys

    generate_fleet_keys(tmp_path / "keys")
    return tmp_path / "keys"


def _funds(office, unit, keys) -> dict[str, int]:
    from vendor_node.money.bundle import decode_bundle
    from vendor_node.office.unit_client import UnitClient

    status, data = UnitClient(office.base, unit.unit_id, unit.key).request("GET", "bundle", query="after=0")
    assert status == 200
    bundle = decode_bundle(data, fleet_public_key(keys))
    assert bundle.unit_id == unit.unit_id
    return {e.id: e.funds_cents for e in bundle.employees}


def test_units_sync_with_an_office_on_postgresql(postgres, fleet_keys, tmp_path):
    from vendor_node.office.unit_client import UnitClient

    office = OfficeProcess(postgres.url, fleet_keys).start()
    try:
        csv_file = tmp_path / "employees.csv"
        csv_file.write_text("employee_id,display_name,funds\nE1,Ada,100.00\nE2,Grace,50.00\n")
        assert "2 added" in office.command("import-employees", str(csv_file))
        units = [FakeUnit(tmp_path / f"u{i}", f"pg-unit-{i}") for i in (1, 2)]
        for unit in units:
            office.command("register-unit", unit.unit_id, "--fingerprint", unit.fingerprint)
        for i in range(30):
            units[i % 2].buy("E1" if i % 3 else "E2", 100 + i)
        expected = {"E1": 10000 - sum(100 + i for i in range(30) if i % 3),
                    "E2": 5000 - sum(100 + i for i in range(30) if not i % 3)}
        batches = [u.batch() for u in units]
        answers = [None, None]

        def upload(i):
            answers[i] = UnitClient(office.base, units[i].unit_id, units[i].key).request("POST", "journal", batches[i])

        threads = [threading.Thread(target=upload, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (status, data), unit, batch in zip(answers, units, batches):
            assert status == 200, data
            receipt = verify_receipt(fleet_keys, json.loads(data))
            assert receipt["last_hash"] == json.loads(batch)["body"]["last_hash"]
        assert _funds(office, units[0], fleet_keys) == expected

        postgres.restart()  # the database restarts under a running office
        status, again = UnitClient(office.base, units[0].unit_id, units[0].key).request("POST", "journal", batches[0])
        if status != 200:  # the first request after a restart may meet a dropped connection; the unit retries
            status, again = UnitClient(office.base, units[0].unit_id, units[0].key).request(
                "POST", "journal", batches[0])
        assert status == 200 and json.loads(again) == json.loads(answers[0][1])  # the same receipt
        assert _funds(office, units[1], fleet_keys) == expected  # nothing counted twice

        # the office killed mid-upload and restarted: the retried upload counts exactly once
        units[0].ack(json.loads(batches[0])["body"]["last_seq"])
        for _ in range(200):
            units[0].buy("E1", 10)
        big = units[0].batch()
        client = UnitClient(office.base, units[0].unit_id, units[0].key)
        def upload_until_killed():
            try:
                client.request("POST", "journal", big)
            except OSError:
                pass  # the office died under the request: the unit keeps its batch and retries

        uploader = threading.Thread(target=upload_until_killed)
        uploader.start()
        office.stop(kill=True)
        uploader.join()
        office.start()
        status, data = client.request("POST", "journal", big)
        assert status == 200, data
        expected["E1"] -= 2000
        assert _funds(office, units[1], fleet_keys) == expected
        health = json.loads(__import__("urllib.request").request.urlopen(office.base + "/healthz").read())
        assert health == {"ok": True, "database": "ok", "vendor": "postgresql"}
        for unit in units:
            unit.close()
    finally:
        office.stop()
