"""The MDB adapter's settings the unit needs, sent as ``C,SETCONF,<key>=<value>`` before every ``C,1``.

Why: the adapter forgets its settings at every power-up [Q4], and the selection-first order only works
with ``mdb-always-idle=1``; prices are only readable when the adapter prints them in the format the
unit parses; and the adapter's own timeouts must outlast the unit's waits, or a late ``C,VEND`` is
refused and the sale lost. The keys are the documentation's names [P1]; docs/mdb-protocol.md says
which readings of their meaning are assumptions.
"""
from __future__ import annotations

import math

from .board_format import adapter_decimal_places
from ..config import check_mdb_currency_code
from ..errors import ConfigError

START_ATTEMPTS = 12  # C,START tries while the machine answers busy: vobox-pi-player's schedule [P3]
START_RETRY_S = 0.4  # ... and its pause between two tries [P3]
RECOGNITION_BUDGET_S = 3.0  # capture + features + match for one presentation on a Pi, generously
TIMEOUT_MARGIN_S = 5.0  # the adapter's timeouts outlast the unit's own waits by at least this
ADDRESSES = ("0x10", "0x60")  # cashless device #1 / #2 [P1]


def adapter_timeouts(*, hand_wait_s: float, selection_timeout_s: float, recognition_attempts: int) -> dict:
    """The adapter's timeouts (whole seconds) sized from the unit's own waits, plus margin.

    ``mdb-timeout-vend``: how long a vend request may wait for our answer; the unit's longest answer
    is selection first: a hand within ``hand_wait_s`` for each presentation, each recognised.
    ``mdb-timeout-idle``: how long a session we started may wait for a selection; the unit ends it
    itself (C,STOP) after ``selection_timeout_s``, so the adapter's must come later.
    """
    attempts = max(1, int(recognition_attempts))
    answer_s = attempts * (hand_wait_s + RECOGNITION_BUDGET_S)
    return {"mdb-timeout-vend": str(math.ceil(answer_s + TIMEOUT_MARGIN_S)),
            "mdb-timeout-idle": str(math.ceil(selection_timeout_s + TIMEOUT_MARGIN_S))}


def adapter_settings(*, price_format: str = "decimal", currency_code: str = "0x1978", address: str = "0x10",
                     hand_wait_s: float = 10.0, selection_timeout_s: float = 30.0,
                     recognition_attempts: int = 2) -> list[tuple[str, str]]:
    """The (key, value) pairs, in the order they are sent."""
    if address not in ADDRESSES:
        raise ConfigError(f"board.mdb_address: must be one of {', '.join(ADDRESSES)}, got {address!r}")
    timeouts = adapter_timeouts(hand_wait_s=hand_wait_s, selection_timeout_s=selection_timeout_s,
                                recognition_attempts=recognition_attempts)
    return [
        ("mdb-always-idle", "1"),  # selection first needs it [Q3]; a machine without it still starts sessions
        ("mdb-currency-code", check_mdb_currency_code(currency_code)),
        ("mdb-decimal-places", str(adapter_decimal_places(price_format))),
        ("mdb-scale-factor", "1"),
        ("mdb-timeout-vend", timeouts["mdb-timeout-vend"]),
        ("mdb-timeout-idle", timeouts["mdb-timeout-idle"]),
        ("mdb-address", address),
    ]


def default_adapter_settings(price_format: str = "decimal") -> list[tuple[str, str]]:
    return adapter_settings(price_format=price_format)


def adapter_settings_from(board_cfg, recognition_attempts: int = 2) -> list[tuple[str, str]]:
    """The settings for a [board] config (``recognition_attempts``: [recognition] max_attempts)."""
    return adapter_settings(price_format=board_cfg.price_format,
                            currency_code=getattr(board_cfg, "mdb_currency_code", "0x1978"),
                            address=getattr(board_cfg, "mdb_address", "0x10"),
                            hand_wait_s=board_cfg.hand_wait_s, selection_timeout_s=board_cfg.selection_timeout_s,
                            recognition_attempts=recognition_attempts)
