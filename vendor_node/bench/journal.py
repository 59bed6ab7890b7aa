"""Timing the durable journal append on a real WAL/synchronous=FULL db in a temporary folder.

Kept apart from journal.py: the unit never runs it, only benchmarks and tests do.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..money.journal import Journal


def bench_journal_append(n: int = 1000, authorize=None, state_dir: Path | str | None = None) -> dict:
    """Time ``n`` purchases on a real WAL/synchronous=FULL db: approve alone (the durable append),
    authorize+approve when ``authorize(employee_id, price_cents)`` is given, and succeed.
    Returns milliseconds: {"approve": {"p50","p95","max"}, "authorize_approve": ..., "succeed": ...}."""
    import statistics
    import tempfile

    def summary(samples):
        samples = sorted(samples)
        return {"p50": statistics.median(samples), "p95": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
                "max": samples[-1], "n": len(samples)}

    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=state_dir) as tmp:
        journal = Journal.open(tmp)
        try:
            approve_ms, total_ms, succeed_ms = [], [], []
            for i in range(n):
                employee = f"bench-{i % 50}"
                session_id = journal.begin_session()
                t0 = time.perf_counter()
                if authorize is not None:
                    authorize(employee, 150)
                t1 = time.perf_counter()
                journal.approve(session_id, employee, "A1", 150)
                t2 = time.perf_counter()
                journal.succeed(session_id)
                t3 = time.perf_counter()
                approve_ms.append((t2 - t1) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
                succeed_ms.append((t3 - t2) * 1e3)
        finally:
            journal.close()
    return {"approve": summary(approve_ms), "authorize_approve": summary(total_ms), "succeed": summary(succeed_ms)}


def bench_store_after_history(unsynced: int, employees: int = 100, probes: int = 500) -> dict:
    """The store's part of a purchase (spendable funds + authorize: every floor limit) after ``unsynced``
    purchases the office has not acknowledged. Milliseconds {"p50", "p95", "max", "n"} and the fill time.

    The history is written through the real journal (hash chain, running totals) with synchronous=OFF,
    only to fill it fast; the timed part reads, as at the machine.
    """
    import os
    import statistics
    import tempfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..config import Config
    from ..money.accounts import AccountStore
    from ..money.bundle import Bundle, EmployeeRecord, encode_bundle
    from ..money.keys import KeyStore, public_key_to_pem

    signer = Ed25519PrivateKey.generate()
    now = time.time()
    staff = [EmployeeRecord(f"E{i:04d}", f"Employee {i}", funds_cents=10 ** 12) for i in range(employees)]
    policy = {"per_day_cap_cents": 10 ** 13, "unsynced_total_cap_cents": 10 ** 15}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        cfg = Config().replace(unit={"state_dir": Path(tmp) / "state", "unit_id": "bench-unit"})
        keys = KeyStore.from_config(cfg)
        keys.pin_fleet_public_key(public_key_to_pem(signer.public_key()))
        keys.install_fleet_template_key(os.urandom(32))
        data = encode_bundle(Bundle(kind="snapshot", version=1, created=now, expires=now + 86400, policy=policy,
                                    employees=staff, unit_id="bench-unit"), signer)
        (Path(tmp) / "b.vnb").write_bytes(data)
        with AccountStore.open(cfg) as store:
            store.import_bundle(Path(tmp) / "b.vnb")
            journal = store.journal
            journal.conn.execute("PRAGMA synchronous=OFF")
            t0 = time.perf_counter()
            for i in range(unsynced):
                session = journal.begin_session()
                journal.approve(session, staff[i % employees].id, "A1", 150)
                journal.succeed(session)
            fill_s = time.perf_counter() - t0
            journal.conn.execute("PRAGMA synchronous=FULL")
            samples = []
            for i in range(probes):
                employee = staff[(i * 37) % employees].id
                t0 = time.perf_counter()
                store.spendable_cents(employee)
                answer = store.authorize(employee, 150)
                samples.append((time.perf_counter() - t0) * 1e3)
                if not answer.approved:
                    raise RuntimeError(f"bench purchase refused: {answer.reason_code}")
    samples.sort()
    return {"p50": statistics.median(samples), "p95": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
            "max": samples[-1], "n": len(samples), "fill_s": fill_s}
