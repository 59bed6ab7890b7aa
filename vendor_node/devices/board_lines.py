"""What each line from the MDB adapter means: BoardLink's line interpreter (a mixin) and its states.

Why separate: board.py sends commands and waits for answers; this module turns one received line into
typed events and the reader state they imply, with each line's source in docs/mdb-protocol.md. The
few lines that need an answer of their own at once (an unreadable vend request is denied, a revalue
request refused) are answered here through ``_send``.
"""
from __future__ import annotations

import logging
import re
import time

from .board_events import (
    AdapterError, AdapterReset, BoardEvent, CashSale, CommandRefused, ReaderDisabled, ReaderEnabled,
    RevalueRefused, SessionCancelled, SessionComplete, SessionStarted, UnreadableVendRequest, VendFailed,
    VendRequest, VendSucceeded,
)
from .board_format import parse_price
from ..errors import ProtocolError

log = logging.getLogger("vendor_node.board")

_PRINTABLE = re.compile(r"[\x20-\x7e]+")

# reader states we track (the adapter is the authority; this is our best knowledge)
UNKNOWN, OFF, DISABLED, ENABLED = "unknown", "off", "disabled", "enabled"
SESSION, VEND_REQUESTED, VEND_APPROVED, ENDING = "session", "vend_requested", "vend_approved", "ending"
OPEN_STAGES = (SESSION, VEND_REQUESTED, VEND_APPROVED)
_QUIET_HEADS = {"r", "d", "x", "v", "f", "l", "h"}  # answers of the adapter's other instances
_QUIET_LINES = {"c,SET,OK", "c,1", "c,0"}  # acknowledgements [Q2]; SETCONF's are awaited in board.py
_NOT_OURS = {"REVALUE", "CASHSALE", "SALE"}  # [P1] names the commands; the line layout is an assumption


class RateLimitedWarning:
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


class LineInterpreter:
    """Lines -> events and reader state. BoardLink provides ``_send``, ``price_format`` and the fields."""

    state: str
    price_format: str
    open_vend: VendRequest | None
    approved_cents: int | None
    _unsettled: str | None
    _warn: RateLimitedWarning
    _request_seq: int
    _off_answers_due: int
    _reader_wanted: bool
    _reenable_needed: bool
    _state_before_request: str | None = None

    def _send(self, line: str) -> None:  # pragma: no cover - BoardLink's
        raise NotImplementedError

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
            if fields[0] in _QUIET_HEADS or line in _QUIET_LINES:
                if line == "c,0" and self._off_answers_due:
                    self._off_answers_due -= 1
                return []
            if fields[0] != "c" or len(fields) < 2:
                raise ProtocolError("not a cashless-slave answer")
            if fields[1] == "STATUS" and len(fields) >= 3:
                if fields[2] in _NOT_OURS:
                    return self._not_ours(fields[2], line)
                return self._on_status(fields[2:], line)
            if fields[1:] == ["VEND", "SUCCESS"]:
                return [self._on_success()]
            if fields[1] == "ERR" and len(fields) >= 3:
                return self._on_error(",".join(fields[2:]).strip().strip('"').strip())
            if fields[1] == "UNKNOWN":  # the adapter did not know a command we sent [P1]
                return [AdapterError(f"adapter did not understand a command ({line})")]
            if fields[1] in _NOT_OURS:
                return self._not_ours(fields[1], line)
            raise ProtocolError("unknown answer")
        except ProtocolError as exc:
            self._warn("MDB adapter: ignored line %r: %s", line[:80], exc)
            return []

    def _on_success(self) -> VendSucceeded:
        if self.state == VEND_APPROVED or self._unsettled:
            self._set_state(ENDING)
            self._unsettled = None
            return VendSucceeded()
        log.warning("MDB adapter: a vend success with no approval of ours open (state %s)", self.state)
        return VendSucceeded(stray=True)

    def _not_ours(self, kind: str, line: str) -> list[BoardEvent]:
        if kind == "REVALUE":
            log.warning("MDB adapter: revalue request refused (the unit holds no stored value): %s", line)
            self._send("C,REVALUE,0")
            return [RevalueRefused(line)]
        log.info("MDB adapter: cash sale reported, nothing for the unit to charge: %s", line)
        return [CashSale(line)]

    def _on_status(self, args: list[str], line: str) -> list[BoardEvent]:
        name, previous = args[0], self.state
        if name == "ENABLED" and len(args) == 1:
            unsettled, self._unsettled = self._unsettled, None
            self._set_state(ENABLED)
            if previous not in (SESSION, VEND_REQUESTED, VEND_APPROVED, ENDING):
                return [ReaderEnabled()]
            interrupted = previous if previous in (VEND_REQUESTED, VEND_APPROVED) else unsettled
            return [SessionComplete(interrupted=interrupted)]
        if name in ("INACTIVE", "DISABLED", "OFF", "ONLINE") and len(args) == 1:
            events: list[BoardEvent] = []
            if previous in OPEN_STAGES:
                events.append(AdapterReset(interrupted=previous))
            self._set_state(DISABLED if name == "DISABLED" else OFF)
            if previous not in (OFF, DISABLED):
                events.append(ReaderDisabled("inactive" if name == "ONLINE" else name.lower()))
            return events
        if name == "IDLE" and len(args) == 1:
            if previous in (VEND_REQUESTED, VEND_APPROVED):
                self._unsettled = previous
            if previous in OPEN_STAGES:
                self._set_state(ENDING)
            return []
        if name == "IDLE":  # a session began: c,STATUS,IDLE,<funds>[,...] ([P3]; an extra field is tolerated)
            funds = self._funds_of(args[1])
            self._set_state(SESSION)
            return [SessionStarted(funds)]
        if name == "VEND" and len(args) == 3:
            return self._on_request(args[1], args[2].strip(), line)
        raise ProtocolError("unknown status")

    def _funds_of(self, text: str) -> int | None:
        try:
            return parse_price(text, self.price_format, strict=True)
        except ProtocolError as exc:
            self._warn("MDB adapter: session funds %r not in the configured format: %s", text, exc)
            return None

    def _on_request(self, price_text: str, item: str, line: str) -> list[BoardEvent]:
        self._state_before_request = self.state
        try:
            if not item:
                raise ProtocolError("vend request without an item")
            price = parse_price(price_text, self.price_format, strict=True)
        except ProtocolError as exc:  # never guess a price: deny it now, so the machine does not wait
            log.error("MDB adapter: vend request %r denied: %s", line[:80], exc)
            self._send("C,VEND,-1")
            self._set_state(ENDING)
            return [UnreadableVendRequest(line[:80], str(exc))]
        self._request_seq += 1
        request = VendRequest(price, item, seq=self._request_seq)
        self.state, self.open_vend, self.approved_cents = VEND_REQUESTED, request, None
        return [request]

    def _on_error(self, text: str) -> list[BoardEvent]:
        if text == "cashless is on":
            return []  # the answer to C,1 when already on
        if text == "cashless is off":
            if self._off_answers_due:  # the answer to our own C,0
                self._off_answers_due -= 1
                return []
            # We did not switch it off: the adapter restarted and lost its settings [P1]; set up again.
            log.warning("MDB adapter: the reader is off though the unit did not switch it off")
            previous = self.state
            self._set_state(OFF)
            self._reenable_needed = self._reader_wanted
            events: list[BoardEvent] = [AdapterReset(interrupted=previous)] if previous in OPEN_STAGES else []
            return events + [ReaderDisabled("off")]
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
            elif refused.group(1) == "VEND" and self.state == ENDING and self._state_before_request == ENABLED:
                self._set_state(ENABLED)  # our deny found no request: the reader is idle again (assumption)
            return [CommandRefused(refused.group(1), int(refused.group(2)))]
        return [AdapterError(text)]

    @property
    def interrupted_stage(self) -> str | None:
        """The open session stage a loss of the link would interrupt, or None."""
        return self.state if self.state in OPEN_STAGES else None


# --- the answers BoardLink's commands wait for -----------------------------------------------
def start_answer(line: str):
    """C,START's answers: a session (IDLE,<funds>[,...]), busy (START <n>), or the reader is off."""
    if line.startswith("c,STATUS,IDLE,"):
        return "started"
    if line.startswith('c,ERR,"START') or line.startswith("c,ERR,START"):
        return "busy"
    if line == 'c,ERR,"cashless is off"':
        return "off"
    return None


def late_start(line: str):
    return "started" if line.startswith("c,STATUS,IDLE,") else None


def setconf_answer(line: str):
    """C,SETCONF's answer: True for c,SET,OK [Q4], the line itself for a refusal, None for other lines."""
    if line == "c,SET,OK":
        return True
    if line == 'c,ERR,"cashless is off"':
        return None  # the answer to our C,0, not to this setting
    if line.startswith(("c,ERR", "c,UNKNOWN", "c,SET,")):
        return line
    return None
