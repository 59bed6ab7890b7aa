"""The loop's time limits under systemd's watchdog (WatchdogSec=10 in systemd/vendor-node.service).

Why: the watchdog must catch a hung loop within WatchdogSec without ever killing one that is only
waiting. The loop pings when a bounded step returns (devices/notify.py), so two numbers matter: the
longest single wait between progress points, which must stay well under WatchdogSec (checked at
start, naming the config key), and the longest a whole iteration may take (a purchase: hands,
session, vend outcome), past which its inner pings stop counting.
"""
from __future__ import annotations

import logging

log = logging.getLogger("vendor_node.unit")

RECONNECT_WINDOW_S = 5.0  # one series of reopen attempts of the board's port per loop iteration
STORE_RETRY_S = 5.0  # a database that cannot be opened (full or read-only disk) is tried again this often
WORK_MARGIN_S = 2.0  # what one step costs besides its wait (features and matching on a Pi Zero 2 W, a set-up)


def iteration_limit_s(cfg) -> float:
    """The longest one loop iteration may legitimately take, twice over: a purchase with every wait at its
    configured maximum (hand, session start, selection, vend outcome), or a board reconnect with recovery."""
    board = cfg.board
    attempts = max(1, cfg.recognition.max_attempts)
    identify = attempts * (board.hand_wait_s + cfg.camera.frame_timeout_s + WORK_MARGIN_S)
    session = (board.start_attempts * (board.reply_timeout_s + board.start_retry_s) + board.selection_timeout_s
               + board.vend_outcome_timeout_s + 12 * board.reply_timeout_s)
    reconnect = RECONNECT_WINDOW_S + 12 * board.reply_timeout_s + 2 * board.reply_timeout_s
    return 2 * (identify + session + reconnect) + 30.0


def attach_watchdog(cfg, board, notifier) -> float:
    """The board's bounded steps (reads, reopen attempts, backoff waits) become progress points that feed
    ``notifier``: a long set-up or reconnect is alive, a hung call is not. Returns the iteration's limit."""
    if hasattr(board, "progress"):
        board.progress = notifier.watchdog
    return iteration_limit_s(cfg)


def single_waits_s(cfg) -> dict[str, float]:
    """The waits the loop makes in one call, with no progress point inside, by their config key."""
    return {"camera.frame_timeout_s": cfg.camera.frame_timeout_s, "board.reply_timeout_s": cfg.board.reply_timeout_s,
            "board.start_retry_s": cfg.board.start_retry_s, "(board reconnect window)": RECONNECT_WINDOW_S,
            "(database retry)": STORE_RETRY_S}


def unsafe_waits(cfg, watchdog_s: float | None) -> list[str]:
    """Config keys whose single wait (plus the work around it and one ping interval) could outlast WatchdogSec."""
    if not watchdog_s:
        return []
    budget = watchdog_s * 0.9 - WORK_MARGIN_S
    return [f"{key} = {value:g} s (keep it under {budget:g} s with WatchdogSec={watchdog_s:g})"
            for key, value in single_waits_s(cfg).items() if value > budget]


def warn_unsafe_waits(cfg, watchdog_s: float | None) -> list[str]:
    unsafe = unsafe_waits(cfg, watchdog_s)
    for line in unsafe:
        log.error("watchdog: %s: a wait this long gets the unit restarted as if it hung", line)
    return unsafe
