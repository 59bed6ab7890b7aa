#!/usr/bin/env python3
"""Load figure for the back office: many simulated units upload a night of purchases, post a heartbeat
and pull their bundle, N at a time, over loopback HTTP against `vendor-node office serve` on PostgreSQL.
By default a closed loop (every unit queued at once: the saturation figure); `--window` paces the starts
at random over a window, as a fleet's nightly timers with a randomised delay fire.

    .venv/bin/python scripts/bench_office.py --units 1000 --purchases 200 --concurrency 50
    .venv/bin/python scripts/bench_office.py --units 1000 --purchases 200 --window 120   # paced: starts spread
    .venv/bin/python scripts/bench_office.py --bundle-employees 10000      # bundle build time only
    .venv/bin/python scripts/bench_office.py --units 60 --in-process [--profile]   # CPU per request kind

A throwaway PostgreSQL server is started (Debian's postgresql, with pg_stat_statements) unless --db names
one. Each unit's batch is the exact signed format `journal export` writes (entries hash-chained, signed by the
unit's own key), all made before the clock starts. Prints per-request p50/p95/p99/max, requests/s, the CPU
per request of the office, PostgreSQL and this client, the throughput ceiling that CPU implies on free cores
(independent of other load on the machine), sampled database wait events and the top statements, then
checks the ledger: every entry ingested once, every balance equal to top-ups minus charges. Exit 1 when a
check fails.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.money.journal_export import BATCH_FORMAT, BATCH_VERSION, _canonical
from vendor_node.money.journal_schema import GENESIS_HASH, canonical_entry, chain_hash
from vendor_node.office.unit_client import fingerprint, raw_public_key, signed_headers

PRICES = (90, 120, 150, 175, 200, 250, 300)


def night_batch(key, unit_id: str, employees: list[str], purchases: int, rng: random.Random) -> tuple[bytes, dict]:
    """A signed journal batch of ``purchases`` vended sales (begin, approve, succeed each); per-employee charges."""
    entries, prev, seq, charged = [], GENESIS_HASH, 0, {}
    ts = int((time.time() - 8 * 3600) * 1e6)
    for _ in range(purchases):
        session, employee, amount, item = uuid.uuid4().hex, rng.choice(employees), rng.choice(PRICES), str(rng.randint(1, 40))
        for kind, emp, it, cents in (("session_begun", None, None, None), ("vend_approved", employee, item, amount),
                                     ("vend_succeeded", employee, item, amount)):
            seq += 1
            ts += rng.randint(1000, 90_000_000)
            digest = chain_hash(prev, canonical_entry(seq, ts, kind, session, emp, it, cents, None))
            entries.append({"seq": seq, "ts_us": ts, "kind": kind, "session_id": session, "employee_id": emp,
                            "item": it, "amount_cents": cents, "detail": None, "prev_hash": prev, "hash": digest})
            prev = digest
        charged[employee] = charged.get(employee, 0) + amount
    body = {"format": BATCH_FORMAT, "version": BATCH_VERSION, "unit_id": unit_id,
            "batch_id": f"00000001-{seq:08d}-{prev[:16]}", "first_seq": 1, "last_seq": seq, "created_us": ts,
            "prev_hash": GENESIS_HASH, "last_hash": prev, "charged_cents": sum(charged.values()),
            "unit_public_key": base64.b64encode(raw_public_key(key)).decode(), "entries": entries}
    document = {"body": body, "signature": base64.b64encode(key.sign(_canonical(body))).decode()}
    return _canonical(document) + b"\n", charged


def heartbeat() -> bytes:
    return json.dumps({"firmware": "bench", "model": "bench", "bundle_version": 0, "last_purchase_at": time.time(),
                       "out_of_service": None, "faults": [], "free_disk_bytes": 10 ** 9, "journal_ok": True,
                       "journal_head_seq": 0, "clock": time.time(), "key_mode": "software"}).encode()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants, reaped ones included (they add to cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))

    def total(p: int, with_reaped: bool) -> float:
        fields = stats.get(p)
        if fields is None:
            return 0.0
        own = sum(int(v) for v in fields[11:13]) + (sum(int(v) for v in fields[13:15]) if with_reaped else 0)
        return own / tick + sum(total(c, True) for c in children.get(p, []))

    return total(pid, True)


def postmaster_pid(pg) -> int | None:
    try:
        return int((pg.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class WaitSampler(threading.Thread):
    """Samples pg_stat_activity every ``every_s``: what each of the office's backends is doing (on CPU, waiting for
    a lock, idle inside a transaction while the office's Python holds it open...). Counts, not times."""

    def __init__(self, db_url: str, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.db_url, self.every_s, self.counts, self.samples, self.backends = db_url, every_s, {}, 0, set()
        self.stop = threading.Event()

    def run(self):
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop.wait(self.every_s):
                rows = conn.execute("SELECT state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-'), pid "
                                    "FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                    "AND pid <> pg_backend_pid() AND state IS NOT NULL").fetchall()
                self.samples += 1
                self.backends.update(row[3] for row in rows)
                for row in rows:
                    key = row[0] if row[0] in ("idle", "idle in transaction") else f"active, {row[1]}:{row[2]}"
                    self.counts[key] = self.counts.get(key, 0) + 1

    def report(self) -> str:
        total = sum(self.counts.values()) or 1
        busy = {k: v for k, v in self.counts.items() if k != "idle"}
        return (f"  database backends, {self.samples} samples of pg_stat_activity (mean per sample; idle "
                f"{self.counts.get('idle', 0) / max(1, self.samples):.1f}):\n" + "\n".join(
                    f"    {v / max(1, self.samples):5.2f}  {k}" for k, v in sorted(busy.items(), key=lambda kv: -kv[1])[:8])
                + f"\n    ({sum(busy.values()) / total:.0%} of backend samples not idle; {len(self.backends)} distinct "
                  "backends seen: one per gunicorn thread when connections are kept)")


def top_statements(db_url: str, requests: int, n: int = 8) -> str:
    """pg_stat_statements' statements by total execution time (server side), when the extension is loaded."""
    import psycopg

    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows = conn.execute("SELECT calls, total_exec_time, query FROM pg_stat_statements "
                                "ORDER BY total_exec_time DESC LIMIT %s", (n,)).fetchall()
            calls = conn.execute("SELECT sum(calls) FROM pg_stat_statements WHERE query NOT LIKE '%%pg_stat%%'"
                                 ).fetchone()[0] or 0
    except psycopg.Error as exc:
        return f"  pg_stat_statements: not available ({str(exc).strip()[:80]})"
    return (f"  PostgreSQL statements: {calls / max(1, requests):.1f} per request (BEGIN/COMMIT not counted); "
            "by total execution time:\n") + "\n".join(
        f"    {total / 1000:7.2f} s  {calls:6} calls  {total / max(1, calls):6.2f} ms  {' '.join(query.split())[:90]}"
        for calls, total, query in rows)


def _reset_statements(db_url: str) -> None:
    import psycopg

    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error:
        pass  # a server without the library: the report says so


def start_times(units: int, window: float | None, seed: int) -> list[float] | None:
    """Each unit's start, seconds after the run's start: uniform at random over the window, as a fleet's nightly
    timers with a randomised delay fire (a steady rate on average). None: a closed loop, every unit at once."""
    if window is None:
        return None
    rng = random.Random(seed)
    return [rng.uniform(0.0, window) for _ in range(units)]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def start_office(db_url: str, keys: Path, workers: int, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(keys.parent / "office.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "vendor_node", "office", "serve", "--db", db_url, "--fleet-keys",
                             str(keys), "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads",
                             str(threads)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=keys.parent,  # not the caller's folder: in a checkout `-m vendor_node` imports it
                            env={**os.environ, "VENDOR_NODE_OFFICE_ACCESS_LOG": "0"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2).read()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    raise SystemExit(f"office did not start; see {keys.parent / 'office.log'}")


def bundle_build_time(employees: int) -> float:
    from django.db import transaction

    from vendor_node.office.bundles import current_bundle
    from vendor_node.office.models import Employee, TopUp, Unit

    with transaction.atomic():
        made = Employee.objects.bulk_create([Employee(employee_id=f"B{i:06d}", name=f"Bench Person {i}")
                                             for i in range(employees)], batch_size=2000)
        TopUp.objects.bulk_create([TopUp(employee=e, amount_cents=2000, source="manual") for e in made], batch_size=2000)
        unit = Unit.objects.create(unit_id="bundle-bench", fingerprint="0" * 64)
    started = time.perf_counter()
    issued = current_bundle(unit)
    elapsed = time.perf_counter() - started
    print(f"bundle for {Employee.objects.filter(deleted_at__isnull=True).count()} employees: built and signed in "
          f"{elapsed:.2f} s ({len(bytes(issued.data)) / 1e6:.1f} MB)", flush=True)
    return elapsed


def _statement_calls(db_url: str) -> int:
    """Statements PostgreSQL ran since the last reset (pg_stat_statements), the bench's own not counted."""
    import psycopg

    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            return conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query NOT LIKE "
                                "'%%pg_stat_statements%%'").fetchone()[0]
    except psycopg.Error:
        return 0


def _backend_cpu_s() -> float:
    """CPU seconds of the PostgreSQL backend serving this process's Django connection (what the requests'
    statements cost the server, without its background processes: autovacuum, WAL writer, checkpointer)."""
    from django.db import connection

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process_costs(unit_keys, nights: Path, profile: bool, db_url: str, pg_pid: int | None,
                     full_middleware: bool = False) -> None:
    """CPU per request kind with no HTTP server and no concurrency: journal uploads of every unit, then their
    heartbeats, then their bundles, each request timed (process CPU, the request alone) and optionally profiled.
    Then the bundles again with the shared records rebuilt for every request (each unit's kept bundle dropped
    and the office marked changed before it, untimed): what a bundle cost before the records were shared."""
    import cProfile
    import pstats

    from django.core.wsgi import get_wsgi_application
    from django.test import RequestFactory

    from vendor_node.office.models import IssuedBundle, bump_bundle_generation
    from vendor_node.office.unit_client import signed_headers

    if full_middleware:
        application = get_wsgi_application()
    else:
        from vendor_node.office.server import office_application

        application = office_application()  # what `office serve` runs
    factory = RequestFactory()

    def call(method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        request = factory.post(path, data=body, content_type="application/json", headers=headers) \
            if method == "POST" else factory.get(path, headers=headers)
        status = []
        chunks = application(request.environ, lambda line, _headers: status.append(int(line.split()[0])))
        try:
            return status[0], b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()  # the request's end: Django's request_finished
    kinds = (("journal", "POST", None), ("heartbeat", "POST", None), ("bundle", "GET", None),
             ("bundle, records rebuilt for each", "GET", bump_bundle_generation))
    for what, method, before_each in kinds:
        endpoint = what.split(",")[0]
        profiler = cProfile.Profile(time.process_time) if profile else None
        cpu, each = 0.0, []
        _reset_statements(db_url)
        db_before = tree_cpu_s(pg_pid) if pg_pid else 0.0
        backend_before = _backend_cpu_s()
        for i, key in enumerate(unit_keys):
            unit_id = f"bench-{i:04d}"
            if before_each:
                IssuedBundle.objects.filter(unit__unit_id=unit_id).delete()
                before_each()
            body = (nights / f"{i}.json").read_bytes() if endpoint == "journal" else heartbeat() \
                if endpoint == "heartbeat" else b""
            path = f"/api/v1/units/{unit_id}/{endpoint}" + ("?after=0" if endpoint == "bundle" else "")
            headers = signed_headers(key, unit_id, method, path, body)
            started = time.process_time()
            if profiler:
                profiler.enable()
            status, content = call(method, path, body, headers)
            if profiler:
                profiler.disable()
            cpu += time.process_time() - started
            each.append((time.process_time() - started) * 1000)
            if status != 200:
                raise SystemExit(f"{unit_id} {what}: {status} {content[:200]!r}")
        db_ms = ((tree_cpu_s(pg_pid) - db_before) / len(unit_keys) * 1000) if pg_pid else float("nan")
        backend_ms = (_backend_cpu_s() - backend_before) / len(unit_keys) * 1000
        statements = _statement_calls(db_url) / len(unit_keys)
        print(f"  {what:9} {cpu / len(unit_keys) * 1000:6.1f} ms CPU per request in this process, median "
              f"{pct(each, 50):.1f} ms (Django and the database client); the database server {db_ms:.1f} ms "
              f"(its whole process tree, this bench's few statements included; the office's own backend "
              f"{backend_ms:.1f} ms); "
              f"{statements:.1f} statements per request{' (profiled)' if profile else ''}", flush=True)
        if profiler:
            print(top_statements(db_url, len(unit_keys), n=20))
            pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(
                r"vendor_node|django/(core/handlers|middleware|contrib)|psycopg/(cursor|copy)|json", 30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="postgresql://... (default: a throwaway PostgreSQL server)")
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--purchases", type=int, default=200, help="purchases per unit in its night")
    parser.add_argument("--employees", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="a paced run: the units start at random over this window (nightly timers with a "
                             "randomised delay), never more than --concurrency in flight; default: a closed loop "
                             "(every unit queued at once, --concurrency at a time: the saturation figure)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4, as the systemd unit)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per worker (default 1: sync workers, as the systemd unit; more: gthread)")
    parser.add_argument("--bundle-employees", type=int, default=0, help="only time one bundle of this many employees")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--in-process", action="store_true",
                        help="no server: each unit's requests through Django's test client in this one thread, "
                             "CPU ms per request kind (the figure contention distorts least)")
    parser.add_argument("--profile", action="store_true", help="with --in-process: cProfile's top entries per kind")
    parser.add_argument("--durable", action="store_true",
                        help="the throwaway server flushes every commit to disk as a production server does "
                             "(default: fsync off, for a figure of CPU rather than of this machine's disk)")
    parser.add_argument("--full-middleware", action="store_true",
                        help="with --in-process: the unit API through every page's middleware (as before the "
                             "unit API's own handler), for comparison")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the throwaway PostgreSQL server (repeatable), e.g. "
                             "default_toast_compression=pglz to compare with the production setting")
    args = parser.parse_args()
    pg_settings = dict(item.split("=", 1) for item in args.pg_setting if "=" in item)
    if len(pg_settings) != len(args.pg_setting):
        parser.error("--pg-setting: expected NAME=VALUE")
    if args.window is not None and not args.window > 0:
        parser.error(f"--window: {args.window} is not a positive number of seconds")

    from vendor_node.money.keys import generate_fleet_keys
    from vendor_node.office import pgtemp
    from vendor_node.office.server import prepare

    root = Path(tempfile.mkdtemp(prefix="bench-office-"))
    keys = root / "keys"
    generate_fleet_keys(keys)
    durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"} if args.durable else {}
    pg = None if args.db else pgtemp.ThrowawayPostgres(
        settings={"shared_preload_libraries": "pg_stat_statements", **durable, **pg_settings}).start()
    db_url = args.db or pg.url
    proc = None
    try:
        prepare(db_url, keys)
        if args.bundle_employees:
            return 0 if bundle_build_time(args.bundle_employees) <= 2.0 else 1
        from django.db import connections, transaction

        from vendor_node.office.models import Employee, JournalBatch, TopUp, Unit
        from vendor_node.office import ledger

        employees = [f"E{i:05d}" for i in range(args.employees)]
        unit_keys = [Ed25519PrivateKey.generate() for _ in range(args.units)]
        with transaction.atomic():
            made = Employee.objects.bulk_create([Employee(employee_id=e, name=f"Employee {e}") for e in employees])
            TopUp.objects.bulk_create([TopUp(employee=e, amount_cents=1_000_000, source="manual") for e in made])
            Unit.objects.bulk_create([Unit(unit_id=f"bench-{i:04d}", fingerprint=fingerprint(k))
                                      for i, k in enumerate(unit_keys)])
        connections.close_all()
        timings = {"journal": [], "heartbeat": [], "bundle": []}
        failures, charged_total, lock = [], {}, threading.Lock()

        # each unit's night is made before the clock starts (a real unit builds its batch on its own CPU)
        nights = root / "nights"
        nights.mkdir()
        for i, key in enumerate(unit_keys):
            batch, charged = night_batch(key, f"bench-{i:04d}", employees, args.purchases,
                                         random.Random(args.seed * 100_003 + i))
            (nights / f"{i}.json").write_bytes(batch)
            for e, c in charged.items():
                charged_total[e] = charged_total.get(e, 0) + c
        if args.in_process:
            in_process_costs(unit_keys, nights, args.profile, db_url, postmaster_pid(pg), args.full_middleware)
            return 0
        proc, base = start_office(db_url, keys, args.workers, args.threads)

        starts = start_times(args.units, args.window, args.seed)
        lags, in_flight, most_in_flight = [], [0], [0]

        def one_unit(i: int):
            if starts is not None:
                lag = time.perf_counter() - started - starts[i]
                with lock:
                    lags.append(lag * 1000)
            with lock:
                in_flight[0] += 1
                most_in_flight[0] = max(most_in_flight[0], in_flight[0])
            try:
                visit(i)
            finally:
                with lock:
                    in_flight[0] -= 1

        def unit_requests(i: int) -> list[tuple[str, str, str, bytes, dict]]:
            """The unit's three requests, signed (what, method, path, body, headers)."""
            unit_id, key = f"bench-{i:04d}", unit_keys[i]
            made = []
            for what, method, body, query in (("journal", "POST", (nights / f"{i}.json").read_bytes(), ""),
                                              ("heartbeat", "POST", heartbeat(), ""), ("bundle", "GET", b"", "after=0")):
                path = f"/api/v1/units/{unit_id}/{what}" + (f"?{query}" if query else "")
                headers = signed_headers(key, unit_id, method, path, body)
                if body:
                    headers["Content-Type"] = "application/json"
                made.append((what, method, path, body, headers))
            return made

        # closed loop: every request signed before the clock starts (a unit signs on its own CPU; here the client
        # shares the office's cores); a unit whose turn comes near the end of the office's 300 s clock window
        # signs again then. Paced: signed when the unit's timer fires
        presigned = [unit_requests(i) for i in range(args.units)] if starts is None else None
        signed_at = time.time()
        host, port = base.removeprefix("http://").rsplit(":", 1)

        def visit(i: int):
            fresh = presigned is not None and time.time() - signed_at < 240
            for what, method, path, body, headers in (presigned[i] if fresh else unit_requests(i)):
                started = time.perf_counter()
                connection = http.client.HTTPConnection(host, int(port), timeout=120)  # one per request, as a unit
                try:
                    connection.request(method, path, body=body if method == "POST" else None, headers=headers)
                    response = connection.getresponse()
                    status, data = response.status, response.read()
                finally:
                    connection.close()
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    timings[what].append(elapsed)
                    if status != 200:
                        failures.append(f"bench-{i:04d} {what}: {status} {data[:200]!r}")

        pg_pid = postmaster_pid(pg)
        sampler = WaitSampler(db_url)
        _reset_statements(db_url)
        sampler.start()
        cpu_before = (tree_cpu_s(proc.pid), tree_cpu_s(pg_pid) if pg_pid else 0.0, sum(os.times()[:2]))
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:  # never more than --concurrency units in flight
            if starts is None:
                list(pool.map(one_unit, range(args.units)))
            else:
                for i in sorted(range(args.units), key=starts.__getitem__):
                    time.sleep(max(0.0, starts[i] - (time.perf_counter() - started)))  # the unit's timer fires
                    pool.submit(one_unit, i)
        wall = time.perf_counter() - started
        sampler.stop.set()
        cpu_after = (tree_cpu_s(proc.pid), tree_cpu_s(pg_pid) if pg_pid else 0.0, sum(os.times()[:2]))
        office_cpu, db_cpu, client_cpu = (after - before for after, before in zip(cpu_after, cpu_before))
        everything = [t for v in timings.values() for t in v]
        pacing = (f"paced: starts spread at random over {args.window:.0f} s ({args.units / args.window:.1f} units/s), "
                  f"at most {args.concurrency} in flight" if starts is not None
                  else f"closed loop: {args.concurrency} concurrent")
        print(f"{args.units} units x {args.purchases} purchases ({args.units * args.purchases * 3} journal entries), "
              f"{pacing}, PostgreSQL{' (durable commits)' if args.durable else ''}, gunicorn "
              f"{args.workers}x{args.threads}: {wall:.1f} s")
        for what, values in timings.items():
            print(f"  {what:9} n={len(values):5}  p50 {pct(values, 50):7.1f} ms  p95 {pct(values, 95):7.1f} ms  "
                  f"p99 {pct(values, 99):7.1f} ms  max {max(values):7.1f} ms")
        print(f"  all       n={len(everything):5}  p50 {pct(everything, 50):7.1f} ms  p95 {pct(everything, 95):7.1f} ms  "
              f"p99 {pct(everything, 99):7.1f} ms (target: p95 <= 200 ms)")
        n = len(everything)
        if starts is not None:
            print(f"  units' start after their timer (late when all {args.concurrency} slots were busy): p50 "
                  f"{pct(lags, 50):.1f} ms, p95 {pct(lags, 95):.1f} ms, max {max(lags):.1f} ms; at most "
                  f"{most_in_flight[0]} units in flight")
        print(f"  {n / wall:.1f} requests/s; CPU per request: office {office_cpu / n * 1000:.1f} ms, PostgreSQL "
              f"{db_cpu / n * 1000:.1f} ms, this client {client_cpu / n * 1000:.1f} ms "
              f"(CPU-s: office {office_cpu:.1f}, db {db_cpu:.1f}, client {client_cpu:.1f}; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        cores = os.cpu_count() or 1
        served_ms = (office_cpu + db_cpu) / n * 1000
        print(f"  the office and its database used {(office_cpu + db_cpu) / wall:.2f} of the {cores} cores, this client "
              f"{client_cpu / wall:.2f} ({client_cpu / (office_cpu + db_cpu + client_cpu):.0%} of the run's CPU); the "
              f"rest went to other work. Independent of the load: {served_ms:.1f} ms of CPU per request, a ceiling of "
              f"{cores * 1000 / served_ms:.0f} requests/s on {cores} free cores with the client elsewhere "
              f"({cores * 1000 / (served_ms + client_cpu / n * 1000):.0f} with it on the same cores)")
        print(sampler.report())
        print(top_statements(db_url, len(timings['journal']) * 3))
        from django.db.models import Sum

        from vendor_node.office.journal_store import verify_stored

        ingested = JournalBatch.objects.aggregate(n=Sum("entries"))["n"] or 0
        expected_entries = args.units * args.purchases * 3
        broken = [f"{unit.unit_id}: {verify_stored(unit.pk, unit.journal_epoch)}" for unit in Unit.objects.all()
                  if verify_stored(unit.pk, unit.journal_epoch) != (unit.last_seq, None)]
        balances = ledger.balances()
        wrong = [e for e in employees if balances[e] != 1_000_000 - charged_total.get(e, 0)] + ledger.check_totals()
        print(f"ledger: {ingested} entries ingested (expected {expected_entries}), {len(failures)} failed requests, "
              f"{len(wrong)} balances differing from top-ups minus charges, {len(broken)} units whose stored "
              "batches do not verify again as their hash chain")
        for line in broken[:5]:
            print("  " + line)
        for line in failures[:5]:
            print("  " + line)
        return 0 if ingested == expected_entries and not failures and not wrong and not broken else 1
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        if pg is not None:
            from django.db import connections

            connections.close_all()
            pg.stop()
        shutil.rmtree(root / "nights", ignore_errors=True)  # the units' nights (200 MB for the closed loop); the
        # office's log and keys (a few KB) stay for a look after a failure


if __name__ == "__main__":
    sys.exit(main())
