"""The office on a real PostgreSQL server (a throwaway one started here), driven over HTTP as units
drive it: signed uploads from two units at once, receipts, bundles, the database restarted and the
office killed mid-upload: nothing lost, nothing counted twice."""
from __future__ import annotations

import os
import json
import threading

import pytest

from test_office_support import FakeUnit, OfficeProcess, fleet_public_key, office_keys_dir, verify_receipt

pytest.importorskip("django")
pytest.importorskip("psycopg")
from vendor_node.office import pgtemp  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def office_in_this_process():
    """These tests drive offices in other processes, but check receipts and read constants with the office's
    own modules here: set Django up in this process first, as every other office test does, so a later office
    test in the same session finds it configured (not the import-only placeholder)."""
    office_keys_dir()


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
        for _ in range(8):  # each worker notices its dropped connection before using it: no request fails
            assert UnitClient(office.base, units[1].unit_id, units[1].key).request(
                "GET", "bundle", query="after=0")[0] == 200
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


class _WebLogin:
    """A browser-like session over HTTP: cookies, the CSRF token from each form, a login."""

    def __init__(self, base: str, username: str, password: str):
        import http.cookiejar
        import urllib.request

        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.post("/login/", {"username": username, "password": password})

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=60) as answer:
            return answer.read().decode()

    def post(self, path: str, fields: dict) -> str:
        import re
        import urllib.parse

        page = self.get(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **fields}).encode()
        request = __import__("urllib.request").request.Request(self.base + path, data=data,
                                                               headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=60) as answer:
            return answer.read().decode()


def test_a_reinstalled_unit_is_accepted_on_postgresql(postgres, fleet_keys, tmp_path):
    import subprocess
    import sys

    from vendor_node.office.unit_client import UnitClient

    postgres_db = postgres.url.rsplit("/", 1)[0] + "/reinstall"
    subprocess.run([str(postgres.bin / "createdb"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "office",
                    "reinstall"], check=True, capture_output=True, timeout=60)
    office = OfficeProcess(postgres_db, fleet_keys).start()
    try:
        csv_file = tmp_path / "employees.csv"
        csv_file.write_text("employee_id,display_name,funds\nE1,Ada,100.00\n")
        office.command("import-employees", str(csv_file))
        done = subprocess.run([sys.executable, "-m", "vendor_node", "office", "create-user", "tina", "--role",
                               "technician", "--db", postgres_db, "--fleet-keys", str(fleet_keys)],
                              input="a-long-password\n", capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        old = FakeUnit(tmp_path / "old", "pg-reinstalled")
        office.command("register-unit", old.unit_id, "--fingerprint", old.fingerprint)
        for _ in range(4):
            old.buy("E1", 125)
        client = UnitClient(office.base, old.unit_id, old.key)
        old_batch = old.batch()
        assert client.request("POST", "journal", old_batch)[0] == 200
        fresh = FakeUnit(tmp_path / "fresh", old.unit_id)
        fresh.key = old.key
        fresh.buy("E1", 75)
        status, answer = client.request("POST", "journal", fresh.batch())
        assert status == 409 and b"accept" in answer

        web = _WebLogin(office.base, "tina", "a-long-password")
        assert "journal refused" in web.get("/units/pg-reinstalled/")
        page = web.post("/units/pg-reinstalled/reinstalled/", {"confirm_id": "pg-reinstalled", "reason": "new card"})
        assert "journal 1 closed at seq 12" in page
        assert client.request("POST", "journal", fresh.batch())[0] == 200
        assert client.request("POST", "journal", old_batch)[0] == 409  # the old journal again: never counted
        assert _funds(office, fresh, fleet_keys) == {"E1": 10000 - 4 * 125 - 75}
        old.close()
        fresh.close()
    finally:
        office.stop()


def test_concurrent_uploads_never_wait_on_totals_and_pending_charges_count_once(postgres, fleet_keys, tmp_path):
    """Eight units upload at once while another session holds the fold lock (a fold in progress elsewhere):
    every upload is ingested (none waits for it), the charges stay pending and every bundle's funds are still
    exact; once the lock is released a later upload folds them into the totals, each counted once."""
    import subprocess
    import time

    import psycopg

    from vendor_node.office.ingest import _FOLD_LOCK
    from vendor_node.office.unit_client import UnitClient

    url = postgres.url.rsplit("/", 1)[0] + "/pending"
    subprocess.run([str(postgres.bin / "createdb"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "office",
                    "pending"], check=True, capture_output=True, timeout=60)
    office = OfficeProcess(url, fleet_keys).start()
    units = [FakeUnit(tmp_path / f"u{i}", f"pend-{i}") for i in range(8)]
    try:
        csv_file = tmp_path / "employees.csv"
        csv_file.write_text("employee_id,display_name,funds\nE1,Ada,100.00\nE2,Grace,100.00\n")
        office.command("import-employees", str(csv_file))
        for unit in units:
            office.command("register-unit", unit.unit_id, "--fingerprint", unit.fingerprint)
        spent = {"E1": 0, "E2": 0}
        for i, unit in enumerate(units):
            for j in range(5):
                employee = "E1" if (i + j) % 2 else "E2"
                unit.buy(employee, 10 + i + j)
                spent[employee] += 10 + i + j
        with psycopg.connect(url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", [_FOLD_LOCK])  # a fold "running" elsewhere
            answers = [None] * len(units)

            def upload(i):
                answers[i] = UnitClient(office.base, units[i].unit_id, units[i].key).request(
                    "POST", "journal", units[i].batch())

            threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(units))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [status for status, _ in answers] == [200] * len(units), answers
            pending = holder.execute("SELECT count(*) FROM office_chargepending").fetchone()[0]
            assert pending == len(units)  # no fold could run: every upload's charges wait, none was lost
            expected = {e: 10000 - spent[e] for e in spent}
            assert _funds(office, units[0], fleet_keys) == expected
            holder.execute("SELECT pg_advisory_unlock(%s)", [_FOLD_LOCK])
            deadline = time.monotonic() + 60
            while holder.execute("SELECT count(*) FROM office_chargepending").fetchone()[0]:  # a later upload folds
                assert time.monotonic() < deadline, "the pending charges were never folded"
                units[0].ack(json.loads(units[0].batch())["body"]["last_seq"])
                units[0].buy("E1", 1)
                spent["E1"] += 1
                assert UnitClient(office.base, units[0].unit_id, units[0].key).request(
                    "POST", "journal", units[0].batch())[0] == 200
            totals = dict(holder.execute("SELECT employee_id, charged_cents FROM office_chargetotal").fetchall())
            assert totals == spent
            assert _funds(office, units[1], fleet_keys) == {e: 10000 - spent[e] for e in spent}
    finally:
        for unit in units:
            unit.close()
        office.stop()


def test_request_authentication_refusals_on_postgresql(postgres, fleet_keys, tmp_path):
    """On PostgreSQL the unit is read and its nonce recorded by one statement: the refusals, their order and
    the nonce rules are those of the two statements SQLite runs (test_office_api); a success stamps the sync."""
    import urllib.error
    import urllib.request

    import psycopg

    from test_office_support import check_request_refusals, signed_heartbeat

    office = OfficeProcess(postgres.url, fleet_keys).start()
    unit, other = FakeUnit(tmp_path / "u", "pgauth-1"), FakeUnit(tmp_path / "o", "pgauth-2")
    try:
        for each in (unit, other):
            office.command("register-unit", each.unit_id, "--fingerprint", each.fingerprint)

        def send(claimed, key, url_unit, nonce, tamper=False):
            path, body, headers = signed_heartbeat(claimed, key, url_unit, nonce, tamper)
            request = urllib.request.Request(office.base + path, data=body, method="POST",
                                             headers={**headers, "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    return answer.status, ""
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read()).get("error", "")

        with psycopg.connect(postgres.url, autocommit=True) as db:
            check_request_refusals(send, unit.unit_id, unit.key, other.unit_id, lambda: db.execute(
                "UPDATE office_unit SET active = false WHERE unit_id = %s", [unit.unit_id]))
            stamped = dict(db.execute("SELECT unit_id, last_sync_at IS NOT NULL FROM office_unit WHERE unit_id "
                                      "IN (%s, %s)", [unit.unit_id, other.unit_id]).fetchall())
            assert stamped == {unit.unit_id: True, other.unit_id: False}
    finally:
        unit.close()
        other.close()
        office.stop()


def test_heartbeats_pruned_on_postgresql(postgres, fleet_keys, tmp_path):
    """PostgreSQL runs a heartbeat as one statement: the unit's row, the new record and the pruning of all but
    the newest HEARTBEATS_KEPT."""
    import psycopg

    from test_office_support import heartbeat_body
    from vendor_node.office.units import HEARTBEATS_KEPT
    from vendor_node.office.unit_client import UnitClient

    office = OfficeProcess(postgres.url, fleet_keys).start()
    unit = FakeUnit(tmp_path / "u", "pgbeat-1")
    try:
        office.command("register-unit", unit.unit_id, "--fingerprint", unit.fingerprint)
        client = UnitClient(office.base, unit.unit_id, unit.key)
        for i in range(HEARTBEATS_KEPT + 3):
            assert client.request("POST", "heartbeat", heartbeat_body(free_disk_bytes=i))[0] == 200
        assert client.request("GET", "bundle", query="after=0")[0] == 200
        with psycopg.connect(postgres.url, autocommit=True) as db:
            kept = [row[0] for row in db.execute(
                "SELECT (r.data->>'free_disk_bytes')::int FROM office_heartbeatrecord r JOIN office_unit u ON "
                "u.id = r.unit_id WHERE u.unit_id = %s ORDER BY r.id", [unit.unit_id]).fetchall()]
            assert kept == list(range(3, HEARTBEATS_KEPT + 3))  # the newest, the last one among them
            latest, stamped = db.execute("SELECT (heartbeat->>'free_disk_bytes')::int, last_sync_at IS NOT NULL "
                                         "FROM office_unit WHERE unit_id = %s", [unit.unit_id]).fetchone()
            assert (latest, stamped) == (HEARTBEATS_KEPT + 2, True)
    finally:
        unit.close()
        office.stop()


def test_the_load_bench_paced_and_closed_loop_ingest_everything_once(postgres, tmp_path):
    """scripts/bench_office.py, tiny: a paced run (starts spread over a window, never more than --concurrency
    in flight) and a closed loop both end with every entry ingested once and every balance exact."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_office.py"
    for name, pacing in (("bench_paced", ["--window", "2"]), ("bench_closed", [])):
        subprocess.run([str(postgres.bin / "createdb"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "office",
                        name], check=True, capture_output=True, timeout=60)
        done = subprocess.run([sys.executable, str(script), "--db", postgres.url.rsplit("/", 1)[0] + "/" + name,
                               "--units", "6", "--purchases", "4", "--employees", "5", "--concurrency", "2",
                               "--workers", "1", "--threads", "2", *pacing], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "72 entries ingested (expected 72), 0 failed requests, 0 balances differing" in done.stdout
        assert ("paced: starts spread at random over 2 s" if pacing else "closed loop: 2 concurrent") in done.stdout
        if pacing:
            most = re.search(r"at most (\d+) units in flight", done.stdout)
            assert most and 1 <= int(most.group(1)) <= 2, done.stdout
