"""The figures a benchmark measured, collected for `vendor-node bench ... --json`.

Why a collector beside the printed tables: the tables are for people, the JSON is for the fleet's
dashboards and CI; each benchmark records a figure once, where it prints it, so both always agree.
"""
from __future__ import annotations

import contextlib

_collected: list[dict] | None = None


def record(name: str, value: float, unit: str, target: float | None = None, **extra) -> None:
    """Note one figure (and its target: met when value <= target); a no-op unless someone is collecting."""
    if _collected is None:
        return
    figure = {"name": name, "value": value, "unit": unit, "target": target,
              "met": None if target is None else bool(value <= target)}
    figure.update(extra)
    _collected.append(figure)


@contextlib.contextmanager
def collecting():
    """Collect the figures recorded inside the block into the list it yields."""
    global _collected
    previous, _collected = _collected, []
    try:
        yield _collected
    finally:
        _collected = previous
