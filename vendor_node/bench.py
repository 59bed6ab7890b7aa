"""`vendor-node bench ...`: speed and memory figures printed as tables with ratios to their targets.

Benchmarks live here, not in unit tests, so a slow CI machine never flakes a test.
"""
from __future__ import annotations


def run(what: str, args) -> int:
    """Dispatch to one benchmark; each prints a table and returns an exit code."""
    if what == "recognition":
        return bench_recognition(args)
    if what == "accounts":
        return bench_accounts(args)
    if what == "loop":
        return bench_loop(args)
    raise ValueError(what)


def bench_recognition(args) -> int:  # owned by the recognition engineer
    raise NotImplementedError("bench recognition is not written yet")


def bench_accounts(args) -> int:  # owned by the accounts engineer
    raise NotImplementedError("bench accounts is not written yet")


def bench_loop(args) -> int:  # owned by the unit engineer
    raise NotImplementedError("bench loop is not written yet")
