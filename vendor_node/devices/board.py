"""The serial link to the vending board: an MDB adapter in cashless-peripheral ("slave") mode.

Why this split: Python cannot meet MDB's 5 ms bus timing, so a Qibixx-style adapter (MDB Pi Hat,
MDB-USB) answers the vending machine controller (VMC) on the bus and talks to us in text lines.
The adapter does the bus; this module does the session. ``SerialTransport`` (board_transport.py,
re-exported here) moves lines, ``BoardLink`` speaks the protocol and turns lines into typed events.

The line protocol (what we write, what we read and the event each line becomes), its sources
[Q1]..[S3] cited in the code, and the assumptions made where they are silent are in
docs/mdb-protocol.md. Prices, amounts and display text in the adapter's formats are board_format.py's
(re-exported here).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from typing import Callable

from .board_events import (  # noqa: F401 (re-exported: the events are part of this module's contract)
    BoardEvent, ReaderEnabled, ReaderDisabled, SessionStarted, VendRequest, VendSucceeded, VendFailed,
    SessionCancelled, SessionComplete, AdapterReset, CommandRefused, AdapterError, LinkRestored,
)
from .board_format import DISPLAY_WIDTH, display_text, format_price, parse_price  # noqa: F401 (re-exported)
from .board_transport import MAX_LINE_BYTES, LineTransport, SerialTransport  # noqa: F401 (re-exported)
from ..errors import BoardLinkError, ProtocolError

log = logging.getLogger(__name__)

LATE_LINE_LIMIT = 64  # lines poll() still reads after its deadline when none carries an event
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


class _RateLimitedWarning:
    """Log the first few bad lines per period, then only how many were suppressed."""

    def __init__(self, burst: int = 5, period_s: float = 60.0):
        self.burst, self.period_s = burst, period_s
        self._window_start = -1e18
        self._count = 0
        self._suppressed = 0

    def __call__(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.period_s:
            if self._suppressed:
                log.warning("MDB adapter: %d more unusable lines were ignored", self._suppressed)
            self._window_start, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count <= self.burst:
            log.warning(message, *args)
        else:
            self._suppressed += 1


# reader states we track (the adapter is the authority; this is our best knowledge)
UNKNOWN, OFF, DISABLED, ENABLED = "unknown", "off", "disabled", "enabled"
SESSION, VEND_REQUESTED, VEND_APPROVED, ENDING = "session", "vend_requested", "vend_approved", "ending"
_OPEN_STAGES = (SESSION, VEND_REQUESTED, VEND_APPROVED)
_QUIET_HEADS = {"r", "d", "x", "v", "f", "l", "h"}  # answers of the adapter's other instances


class BoardLink:
    """The cashless-peripheral session protocol over a line transport (context manager).

    Commands write one line; those with a documented answer wait at most ``reply_timeout_s`` for
    it and raise BoardLinkError without one. ``poll()`` returns typed events; lines it cannot use are
    logged (rate-limited) and ignored, only a lost port raises (BoardLinkError). ``reopen()``
    reopens the port with capped exponential backoff and re-synchronises the reader.
    """

    def __init__(self, transport: LineTransport, *, price_format: str = "decimal",
                 reply_timeout_s: float = 1.0, reopen_transport: Callable[[], LineTransport] | None = None,
                 initial_backoff_s: float = 0.1, max_backoff_s: float = 30.0,
                 wait: Callable[[float, threading.Event | None], None] | None = None):
        if price_format not in ("decimal", "cents"):
            raise ValueError(f"price_format must be 'decimal' or 'cents', got {price_format!r}")
        self._transport: LineTransport | None = transport
        self.price_format = price_format
        self.reply_timeout_s = reply_timeout_s
        self._reopen_transport = reopen_transport
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._wait = wait or _wait_or_stop
        self._pending: deque[BoardEvent] = deque()
        self._warn = _RateLimitedWarning()
        self._reader_wanted = False
        self.state = UNKNOWN
        self.open_vend: VendRequest | None = None
        self.approved_cents: int | None = None
        self._unsettled: str | None = None  # a vend stage whose session began ending with no outcome line

    # --- lifecycle ---
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    @property
    def interrupted_stage(self) -> str | None:
        """The open session stage a loss of the link would interrupt, or None."""
        return self.state if self.state in _OPEN_STAGES else None

    # --- commands ---
    def enable_reader(self) -> None:
        """Switch the cashless peripheral on; the machine enables it later (ReaderEnabled)."""
        self._reader_wanted = True
        self._send("C,1")
        self._await("C,1", lambda line: True if line.startswith("c,STATUS,") or line == 'c,ERR,"cashless is on"'
                    else None, keep_events=True)

    def disable_reader(self) -> None:
        """Switch the peripheral off so the machine shows card payment unavailable (out of service)."""
        self._reader_wanted = False
        self._send("C,0")
        self._set_state(OFF)

    def start_session(self, funds_cents: int) -> bool:
        """Open a session offering ``funds_cents`` (hand first). False when the machine refused it,
        e.g. the reader is not enabled or a vend request is already pending (poll() delivers it)."""
        self._send(f"C,START,{format_price(funds_cents, self.price_format)}")

        def answer(line: str):
            if line.startswith("c,STATUS,IDLE,"):
                try:
                    parse_price(line[len("c,STATUS,IDLE,"):], self.price_format)
                except ProtocolError:
                    return None  # garbled: not the answer, and _interpret logs it
                return True
            if line.startswith('c,ERR,"START') or line.startswith("c,ERR,START"):
                return False
            return None

        started = self._await("C,START", answer, keep_events=False)
        if not started:
            log.info("MDB adapter: the machine refused to start a session (state %s)", self.state)
        return started

    def approve_vend(self, amount_cents: int) -> None:
        """Give the pending vend request ``amount_cents`` of credit; the outcome arrives via poll()."""
        if amount_cents <= 0:
            raise ValueError(f"an approved amount must be positive, got {amount_cents!r}")
        if self.state != VEND_REQUESTED:
            log.warning("MDB adapter: approving %d cents with no vend request seen (state %s)", amount_cents, self.state)
        self._send(f"C,VEND,{format_price(amount_cents, self.price_format)}")
        self.state, self.approved_cents = VEND_APPROVED, amount_cents

    def deny_vend(self) -> None:
        """Refuse the pending vend request; the machine then ends the session."""
        self._send("C,VEND,-1")
        if self.state in _OPEN_STAGES:
            self._set_state(ENDING)

    def end_session(self) -> None:
        """End a session that has no pending vend request (customer walked away, hand timeout)."""
        self._send("C,STOP")

    def display(self, text: str) -> None:
        """Show ``text`` (made ASCII, at most 32 characters) on the machine's display."""
        self._send(f"C,DISPLAY,{display_text(text)}")

    def ping(self) -> str:
        """The adapter's version line; proves it is alive (BoardLinkError otherwise)."""
        self._send("V")
        return self._await("V", lambda line: line if line.startswith("v,") else None, keep_events=True)

    # --- events ---
    def poll(self, timeout: float) -> BoardEvent | None:
        """The next event, waiting at most ``timeout`` s; None when none came."""
        if self._pending:
            return self._pending.popleft()
        deadline = time.monotonic() + max(0.0, timeout)
        late_lines = 0
        while True:
            remaining = deadline - time.monotonic()
            line = self._readline(max(0.0, remaining))
            if line is None:
                return None
            self._pending.extend(self._interpret(line))
            if self._pending:
                return self._pending.popleft()
            if remaining <= 0:  # lines already there still count, but a chatter flood cannot hold us
                late_lines += 1
                if late_lines > LATE_LINE_LIMIT:
                    return None

    # --- reconnecting ---
    def reopen(self, *, stop_event: threading.Event | None = None, deadline_s: float | None = None) -> LinkRestored:
        """Reopen the port with capped exponential backoff, then re-synchronise the reader.

        Raises BoardLinkError when stopped, past ``deadline_s``, or when this link has no way to reopen.
        """
        if self._reopen_transport is None:
            raise BoardLinkError("this board link cannot reopen its port (no transport factory)")
        interrupted, vend, approved = self.interrupted_stage, self.open_vend, self.approved_cents
        self.close()
        delay, attempt, started = self.initial_backoff_s, 0, time.monotonic()
        while True:
            if stop_event is not None and stop_event.is_set():
                raise BoardLinkError("stopped while reopening the MDB adapter's port")
            attempt += 1
            try:
                self._transport = self._reopen_transport()
                self._resync()
                break
            except BoardLinkError as exc:
                self.close()
                if deadline_s is not None and time.monotonic() - started + delay > deadline_s:
                    raise BoardLinkError(f"MDB adapter: gave up reopening after {attempt} attempts: {exc}") from None
                log.warning("MDB adapter: reopen attempt %d failed (%s); retrying in %.1f s", attempt, exc, delay)
                self._wait(delay, stop_event)
                delay = min(delay * 2, self.max_backoff_s)
        log.info("MDB adapter: link restored after %d attempt(s); interrupted stage: %s", attempt, interrupted)
        return LinkRestored(interrupted=interrupted, vend=vend, approved_cents=approved)

    def _resync(self) -> None:
        """Bring adapter and reader to a known state: any half session ends with C,0 [S1]."""
        self.state, self.open_vend, self.approved_cents, self._unsettled = UNKNOWN, None, None, None
        self._send("C,0")
        self._set_state(OFF)
        if self._reader_wanted:
            self.enable_reader()
        else:
            self.ping()

    # --- internals ---
    def _send(self, line: str) -> None:
        if self._transport is None:
            raise BoardLinkError("the board link is closed")
        log.debug("MDB -> %s", line)
        self._transport.write_line(line)

    def _readline(self, timeout: float) -> str | None:
        if self._transport is None:
            raise BoardLinkError("the board link is closed")
        line = self._transport.readline(timeout)
        if line is not None:
            log.debug("MDB <- %s", line)
        return line

    def _await(self, what: str, match: Callable[[str], object], *, keep_events: bool):
        """Read until ``match(line)`` is not None; other lines still become events (queued)."""
        deadline = time.monotonic() + self.reply_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BoardLinkError(f"MDB adapter did not answer {what} within {self.reply_timeout_s:.1f} s")
            line = self._readline(remaining)
            if line is None:
                continue
            result = match(line)
            events = self._interpret(line)
            if result is None or keep_events:
                self._pending.extend(events)
            if result is not None:
                return result

    def _set_state(self, state: str) -> None:
        self.state = state
        if state not in (VEND_REQUESTED, VEND_APPROVED):
            self.open_vend, self.approved_cents = None, None

    def _interpret(self, line: str) -> list[BoardEvent]:
        """Events for one line, state updated; lines we cannot use are logged and give none."""
        try:
            if not _PRINTABLE.fullmatch(line):
                raise ProtocolError("not printable ASCII")
            fields = line.split(",")
            if fields[0] in _QUIET_HEADS or line in ("c,SET,OK", "c,1", "c,0"):
                return []
            if fields[0] != "c" or len(fields) < 2:
                raise ProtocolError("not a cashless-slave answer")
            if fields[1] == "STATUS" and len(fields) >= 3:
                return self._on_status(fields[2:])
            if fields[1:] == ["VEND", "SUCCESS"]:
                self._set_state(ENDING)
                self._unsettled = None
                return [VendSucceeded()]
            if fields[1] == "ERR" and len(fields) >= 3:
                return self._on_error(",".join(fields[2:]).strip().strip('"').strip())
            raise ProtocolError("unknown answer")
        except ProtocolError as exc:
            self._warn("MDB adapter: ignored line %r: %s", line[:80], exc)
            return []

    def _on_status(self, args: list[str]) -> list[BoardEvent]:
        name, previous = args[0], self.state
        if name == "ENABLED" and len(args) == 1:
            unsettled, self._unsettled = self._unsettled, None
            self._set_state(ENABLED)
            if previous not in (SESSION, VEND_REQUESTED, VEND_APPROVED, ENDING):
                return [ReaderEnabled()]
            interrupted = previous if previous in (VEND_REQUESTED, VEND_APPROVED) else unsettled
            return [SessionComplete(interrupted=interrupted)]
        if name in ("INACTIVE", "DISABLED", "OFF") and len(args) == 1:
            events: list[BoardEvent] = []
            if previous in _OPEN_STAGES:
                events.append(AdapterReset(interrupted=previous))
            self._set_state(DISABLED if name == "DISABLED" else OFF)
            if previous not in (OFF, DISABLED):
                events.append(ReaderDisabled(name.lower()))
            return events
        if name == "IDLE" and len(args) == 1:
            if previous in (VEND_REQUESTED, VEND_APPROVED):
                self._unsettled = previous
            if previous in _OPEN_STAGES:
                self._set_state(ENDING)
            return []
        if name == "IDLE" and len(args) == 2:
            funds = parse_price(args[1], self.price_format)
            self._set_state(SESSION)
            return [SessionStarted(funds)]
        if name == "VEND" and len(args) == 3:
            price = parse_price(args[1], self.price_format)
            item = args[2].strip()
            if not item:
                raise ProtocolError("vend request without an item")
            request = VendRequest(price, item)
            self.state, self.open_vend, self.approved_cents = VEND_REQUESTED, request, None
            return [request]
        raise ProtocolError("unknown status")

    def _on_error(self, text: str) -> list[BoardEvent]:
        if text in ("cashless is on", "cashless is off"):
            return []  # answers to C,1 / C,0 when already in that state
        vend = re.fullmatch(r"VEND\s+(-?\d+)", text)
        if vend and int(vend.group(1)) >= 0:
            code, stage = int(vend.group(1)), self.interrupted_stage or self._unsettled
            self._unsettled = None
            if code == 1:
                self._set_state(ENDING)
                return [SessionCancelled()]
            if code == 5:
                self._set_state(UNKNOWN)
                return [AdapterReset(interrupted=stage)]
            self._set_state(ENDING)
            return [VendFailed(f"VEND {code}")]
        refused = re.fullmatch(r"([A-Z]*)\s*(-\d+)", text)
        if refused:
            if refused.group(1) == "VEND" and self.state == VEND_APPROVED:  # the approval never took effect
                self.state, self.approved_cents = (VEND_REQUESTED if self.open_vend else ENDING), None
            return [CommandRefused(refused.group(1), int(refused.group(2)))]
        return [AdapterError(text)]


class ReconnectingBoardLink(BoardLink):
    """A BoardLink whose poll() survives a lost port: it reopens and returns LinkRestored.

    Commands still raise BoardLinkError (the caller must know an approval may not have arrived);
    the next poll() then reopens. Reopening stops when ``stop_event`` is set.
    """

    def __init__(self, transport: LineTransport, *, stop_event: threading.Event | None = None, **kwargs):
        super().__init__(transport, **kwargs)
        self.stop_event = stop_event

    def poll(self, timeout: float) -> BoardEvent | None:
        try:
            if self._transport is None:
                raise BoardLinkError("the port is not open")
            return super().poll(timeout)
        except BoardLinkError as exc:
            log.warning("MDB adapter: link lost (%s); reopening", exc)
            return self.reopen(stop_event=self.stop_event)


def _wait_or_stop(delay_s: float, stop_event: threading.Event | None) -> None:
    if stop_event is None:
        time.sleep(delay_s)
    else:
        stop_event.wait(delay_s)


def open_board_link(board_cfg, *, port: str | None = None,
                    stop_event: threading.Event | None = None) -> ReconnectingBoardLink:
    """The unit's link from its [board] config; ``port`` overrides it (e.g. the simulator's pty)."""
    path = str(port or board_cfg.port)

    def open_transport() -> SerialTransport:
        return SerialTransport(path, board_cfg.baudrate, write_timeout_s=board_cfg.reply_timeout_s)

    return ReconnectingBoardLink(
        open_transport(), stop_event=stop_event, reopen_transport=open_transport,
        price_format=board_cfg.price_format, reply_timeout_s=board_cfg.reply_timeout_s,
        max_backoff_s=board_cfg.reconnect_max_backoff_s,
    )
