"""The serial link to the vending board: an MDB adapter in cashless-peripheral ("slave") mode.

Why this split: Python cannot meet MDB's 5 ms bus timing, so a Qibixx-style adapter (MDB Pi Hat,
MDB-USB) answers the vending machine controller (VMC) on the bus and talks to us in text lines.
The adapter does the bus; this module does the session. ``SerialTransport`` (board_transport.py,
re-exported here) moves lines, ``BoardLink`` speaks the protocol: it configures the adapter at every
enable (its settings are volatile), retries a busy ``C,START`` on a bounded schedule, binds each
approval to the request it answers, and shows display text only where the adapter accepts it. What
each received line means is board_lines.py's; the settings the unit needs are board_setup.py's.

The line protocol, its sources ([Q1].., [P1].., [S1]..) and the assumptions made where they are
silent are in docs/mdb-protocol.md. Prices, amounts and display text in the adapter's formats are
board_format.py's (re-exported here).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Sequence

from .board_events import (  # noqa: F401 (re-exported: the events are part of this module's contract)
    BoardEvent, ReaderEnabled, ReaderDisabled, SessionStarted, VendRequest, VendSucceeded, VendFailed,
    SessionCancelled, SessionComplete, AdapterReset, CommandRefused, AdapterError, LinkRestored,
    UnreadableVendRequest, RevalueRefused, CashSale,
)
from .board_format import DISPLAY_WIDTH, display_text, format_price, parse_price  # noqa: F401 (re-exported)
from .board_lines import (  # noqa: F401 (the states are part of this module's contract)
    DISABLED, ENABLED, ENDING, OFF, OPEN_STAGES, SESSION, UNKNOWN, VEND_APPROVED, VEND_REQUESTED,
    LineInterpreter, RateLimitedWarning, late_start as _late_start, setconf_answer as _setconf_answer,
    start_answer as _start_answer,
)
from .board_setup import START_ATTEMPTS, START_RETRY_S, default_adapter_settings, adapter_settings_from
from .board_transport import MAX_LINE_BYTES, LineTransport, SerialTransport  # noqa: F401 (re-exported)
from ..errors import BoardLinkError

log = logging.getLogger(__name__)

LATE_LINE_LIMIT = 64  # lines poll() still reads after its deadline when none carries an event
DISPLAY_HOLD_S = 5.0  # display text asked for outside Enabled is shown if Enabled comes within this


class BoardLink(LineInterpreter):
    """The cashless-peripheral session protocol over a line transport (context manager).

    Commands write one line; those with a documented answer wait at most ``reply_timeout_s`` for
    it and raise BoardLinkError without one. ``poll()`` returns typed events; lines it cannot use are
    logged (rate-limited) and ignored, only a lost port raises (BoardLinkError). ``reopen()``
    reopens the port with capped exponential backoff and re-synchronises the reader.
    ``adapter_settings`` are the ``C,SETCONF`` (key, value) pairs sent before every ``C,1``.
    """

    def __init__(self, transport: LineTransport, *, price_format: str = "decimal",
                 reply_timeout_s: float = 1.0, reopen_transport: Callable[[], LineTransport] | None = None,
                 initial_backoff_s: float = 0.1, max_backoff_s: float = 30.0,
                 wait: Callable[[float, threading.Event | None], None] | None = None,
                 adapter_settings: Sequence[tuple[str, str]] | None = None,
                 start_attempts: int = START_ATTEMPTS, start_retry_s: float = START_RETRY_S,
                 display_hold_s: float = DISPLAY_HOLD_S, progress: Callable[[], None] | None = None):
        if price_format not in ("decimal", "cents"):
            raise ValueError(f"price_format must be 'decimal' or 'cents', got {price_format!r}")
        self._transport: LineTransport | None = transport
        self.price_format = price_format
        self.reply_timeout_s = reply_timeout_s
        self._reopen_transport = reopen_transport
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._wait = wait or _wait_or_stop
        self.adapter_settings = list(adapter_settings if adapter_settings is not None
                                     else default_adapter_settings(price_format))
        self.start_attempts, self.start_retry_s = max(1, int(start_attempts)), start_retry_s
        self.display_hold_s = display_hold_s
        # called whenever a bounded step returns (a read, a reopen attempt, a backoff wait): the unit's loop
        # feeds systemd's watchdog from it, so a long set-up or reconnect is alive while a hung call is not
        self.progress: Callable[[], None] = progress or (lambda: None)
        self.start_commands: list[str] = []  # what the last set-up sent, C,0 to C,1 (for reports)
        self.adapter_version: str | None = None
        self._pending: deque[BoardEvent] = deque()
        self._warn = RateLimitedWarning()
        self._reader_wanted = False
        self._reenable_needed = False
        self._off_answers_due = 0  # our C,0 lines whose answer may still come
        self._request_seq = 0
        self._display_due: tuple[str, float] | None = None
        self._recording: list[str] | None = None
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

    # --- commands ---
    def enable_reader(self) -> None:
        """Set the adapter up (C,0, every C,SETCONF checked, V logged) and switch the peripheral on (C,1);
        the machine enables it later (ReaderEnabled). BoardLinkError names a refused setting."""
        self._reader_wanted, self._reenable_needed = True, False
        self._recording, before = [], self.state
        try:
            self._switch_off()
            for key, value in self.adapter_settings:
                self._configure(key, value)
            self.adapter_version = self.ping()
            log.info("MDB adapter %s set up: %s", self.adapter_version,
                     ", ".join(f"{key}={value}" for key, value in self.adapter_settings))
            self._send("C,1")
            self.state = before if before in (UNKNOWN, OFF) else UNKNOWN  # the machine tells us the rest
            self._await("C,1", lambda line: True if line.startswith("c,STATUS,") or line == "c,1"
                        or line == 'c,ERR,"cashless is on"' else None, keep_events=True)
            self._off_answers_due = 0  # answers come in order: any to our C,0 came before C,1's
            self.start_commands = self._recording
        finally:
            self._recording = None

    def disable_reader(self) -> None:
        """Switch the peripheral off so the machine shows card payment unavailable (out of service)."""
        self._reader_wanted = False
        self._switch_off()

    def start_session(self, funds_cents: int) -> bool:
        """Open a session offering ``funds_cents`` (hand first), retrying a busy machine on a bounded
        schedule (``start_attempts`` tries, ``start_retry_s`` apart, like real clients [P3]). False when
        the machine stayed busy, a vend request came first (poll() delivers it) or the reader is off;
        BoardLinkError when the adapter answered none of the tries."""
        line = f"C,START,{format_price(funds_cents, self.price_format)}"
        answered, queued_before = False, len(self._pending)
        stop = lambda: self.state == VEND_REQUESTED or self._reenable_needed  # noqa: E731
        for attempt in range(1, self.start_attempts + 1):
            self._send(line)
            answer = self._read_until(time.monotonic() + self.reply_timeout_s, _start_answer, keep_events=False)
            if answer != "started" and attempt < self.start_attempts and answer != "off" and not stop():
                # busy (START -3) or no answer yet: listen (a slow adapter's answer may still come), try again
                answer = self._read_until(time.monotonic() + self.start_retry_s, _late_start, keep_events=False,
                                          until=stop) or answer
            if answer == "started":
                if attempt > 1:  # the machine ended its last session meanwhile: that end is not this one's
                    log.debug("MDB adapter: session started at try %d", attempt)
                    self._pending = deque(e for i, e in enumerate(self._pending)
                                          if i < queued_before or not isinstance(e, (SessionComplete, ReaderEnabled)))
                return True
            answered = answered or answer is not None
            if answer == "off" or stop():
                break  # a selection came first, or the reader must be set up again: not for retrying
        if not answered:
            raise BoardLinkError(f"MDB adapter did not answer C,START in {self.start_attempts} tries")
        log.info("MDB adapter: the machine did not start a session (state %s)", self.state)
        return False

    def request_pending(self, request: VendRequest) -> bool:
        """True when ``request`` is still the machine's pending request (lines already received are read
        first), i.e. an approval now would answer it and nothing newer."""
        self._absorb()
        current = self.open_vend
        return (self.state == VEND_REQUESTED and current is not None and current.seq == request.seq
                and (current.price_cents, current.item) == (request.price_cents, request.item))

    def approve_vend(self, amount_cents: int, request: VendRequest | None = None) -> bool:
        """Give the pending vend request ``amount_cents`` of credit; the outcome arrives via poll().

        With ``request``, the approval is bound to it: it must still be pending (request_pending) and
        ``amount_cents`` must be its price, else nothing is sent and False is returned.
        """
        if amount_cents <= 0:
            raise ValueError(f"an approved amount must be positive, got {amount_cents!r}")
        if request is not None:
            if amount_cents != request.price_cents:
                raise ValueError(f"approving {amount_cents} cents for a {request.price_cents}-cent request")
            if not self.request_pending(request):
                log.warning("MDB adapter: approval of %s for %d cents not sent: the machine's request changed "
                            "(now %s)", request.item, amount_cents, self.open_vend)
                return False
        elif self.state != VEND_REQUESTED:
            log.warning("MDB adapter: approving %d cents with no vend request seen (state %s)", amount_cents, self.state)
        self._send(f"C,VEND,{format_price(amount_cents, self.price_format)}")
        self.state, self.approved_cents = VEND_APPROVED, amount_cents
        return True

    def deny_vend(self) -> None:
        """Refuse the pending vend request; the machine then ends the session."""
        self._send("C,VEND,-1")
        if self.state in OPEN_STAGES:
            self._set_state(ENDING)

    def end_session(self) -> None:
        """End a session that has no pending vend request (customer walked away, hand timeout)."""
        self._send("C,STOP")

    def display(self, text: str) -> bool:
        """Show ``text`` (made ASCII, at most 32 characters) on the machine's display.

        The adapter accepts a display request only while the reader is Enabled [P1]: outside it the
        text waits (the newest only) up to ``display_hold_s`` for Enabled, and False is returned, so
        the caller's LED and buzzer carry the message meanwhile.
        """
        text = display_text(text)
        if self.state == ENABLED:
            self._display_due = None
            self._send(f"C,DISPLAY,{text}")
            return True
        self._display_due = (text, time.monotonic() + self.display_hold_s)
        return False

    def ping(self) -> str:
        """The adapter's version line; proves it is alive (BoardLinkError otherwise)."""
        self._send("V")
        return self._await("V", lambda line: line if line.startswith("v,") else None, keep_events=True)

    # --- events ---
    def poll(self, timeout: float) -> BoardEvent | None:
        """The next event, waiting at most ``timeout`` s; None when none came."""
        self._catch_up()
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
            self._catch_up()
            if self._pending:
                return self._pending.popleft()
            if remaining <= 0:  # lines already there still count, but a chatter flood cannot hold us
                late_lines += 1
                if late_lines > LATE_LINE_LIMIT:
                    return None

    def _catch_up(self) -> None:
        """What a received line asked of us: set the adapter up again, show held display text."""
        if self._reenable_needed:
            log.warning("MDB adapter: setting the adapter up again and re-enabling the reader")
            self.enable_reader()
        if self._display_due is not None and self.state == ENABLED:
            text, until = self._display_due
            self._display_due = None
            if time.monotonic() <= until:
                self._send(f"C,DISPLAY,{text}")

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
                self.progress()
                if deadline_s is not None and time.monotonic() - started + delay > deadline_s:
                    raise BoardLinkError(f"MDB adapter: gave up reopening after {attempt} attempts: {exc}") from None
                log.warning("MDB adapter: reopen attempt %d failed (%s); retrying in %.1f s", attempt, exc, delay)
                self._wait(delay, stop_event)
                self.progress()
                delay = min(delay * 2, self.max_backoff_s)
        log.info("MDB adapter: link restored after %d attempt(s); interrupted stage: %s", attempt, interrupted)
        return LinkRestored(interrupted=interrupted, vend=vend, approved_cents=approved)

    def _resync(self) -> None:
        """Bring adapter and reader to a known state: any half session ends with C,0 [S1], and the
        adapter (which may have restarted) is set up again before the reader comes back."""
        self.state, self.open_vend, self.approved_cents, self._unsettled = OFF, None, None, None
        self._display_due = None
        if self._reader_wanted:
            self.enable_reader()
        else:
            self._switch_off()
            self.ping()

    # --- internals ---
    def _switch_off(self) -> None:
        self._send("C,0")
        self._off_answers_due += 1
        self._set_state(OFF)

    def _configure(self, key: str, value: str) -> None:
        line = f"C,SETCONF,{key}={value}"
        self._send(line)
        answer = self._await(line, _setconf_answer, keep_events=True)
        if answer is not True:
            raise BoardLinkError(f"MDB adapter refused setting {key}={value} ({answer}); "
                                 "check the adapter's firmware and the [board] config")

    def _send(self, line: str) -> None:
        if self._transport is None:
            raise BoardLinkError("the board link is closed")
        log.debug("MDB -> %s", line)
        if self._recording is not None:
            self._recording.append(line)
        self._transport.write_line(line)

    def _readline(self, timeout: float) -> str | None:
        if self._transport is None:
            raise BoardLinkError("the board link is closed")
        line = self._transport.readline(timeout)
        if line is not None:
            log.debug("MDB <- %s", line)
        return line

    def _absorb(self) -> None:
        """Read the lines already received (no waiting), so the state is as current as it can be."""
        for _ in range(LATE_LINE_LIMIT):
            line = self._readline(0.0)
            if line is None:
                return
            self._pending.extend(self._interpret(line))

    def _await(self, what: str, match: Callable[[str], object], *, keep_events: bool):
        """Read until ``match(line)`` is not None; other lines still become events (queued)."""
        result = self._read_until(time.monotonic() + self.reply_timeout_s, match, keep_events=keep_events)
        if result is None:
            raise BoardLinkError(f"MDB adapter did not answer {what} within {self.reply_timeout_s:.1f} s")
        return result

    def _read_until(self, deadline: float, match: Callable[[str], object], *, keep_events: bool, until=None):
        """The first ``match(line)`` that is not None before ``deadline`` (None: none came); stops early
        when ``until()`` turns true. Lines that do not match still become events (queued)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (until is not None and until()):
                return None
            line = self._readline(remaining)
            self.progress()
            if line is None:
                continue
            result = match(line)
            events = self._interpret(line)
            if result is None or keep_events:
                self._pending.extend(events)
            if result is not None:
                return result


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
    time.sleep(delay_s) if stop_event is None else stop_event.wait(delay_s)


def open_board_link(board_cfg, *, port: str | None = None,
                    stop_event: threading.Event | None = None) -> ReconnectingBoardLink:
    """The unit's link from its [board] config; ``port`` overrides it (e.g. the simulator's pty)."""
    path = str(port or board_cfg.port)

    def open_transport() -> SerialTransport:
        return SerialTransport(path, board_cfg.baudrate, write_timeout_s=board_cfg.reply_timeout_s)

    return ReconnectingBoardLink(open_transport(), stop_event=stop_event, reopen_transport=open_transport,
                                 **board_link_options(board_cfg))


def board_link_options(board_cfg, recognition_attempts: int = 2) -> dict:
    """BoardLink's keyword arguments from the [board] config (the unit's own waits size the adapter's)."""
    return dict(price_format=board_cfg.price_format, reply_timeout_s=board_cfg.reply_timeout_s,
                max_backoff_s=board_cfg.reconnect_max_backoff_s,
                adapter_settings=adapter_settings_from(board_cfg, recognition_attempts),
                start_attempts=board_cfg.start_attempts, start_retry_s=board_cfg.start_retry_s)
