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
