"""Adapter transcripts from the documentation's examples and real clients' code, replayed through BoardLink.

Each transcript is the exact line exchange: ``>`` lines the unit must write (in order), ``<`` lines the
adapter sends. The adapter's lines are released only after the unit wrote the line before them, so a
transcript also checks what the unit sends and when. Sources (docs/mdb-protocol.md): [Q2] Qibixx
vending-sessions-examples, [Q3] Qibixx always-idle tutorial, [P1] pyMDBTerminal, [P2] solomdb
(mdbdevices/qibixx.py on a Sielaff FS1500), [P3] vobox-pi-player (translator.py, creditor.py).
"""
from __future__ import annotations

import time
from collections import deque

import pytest

from vendor_node.devices.board import (
    AdapterError, BoardLink, CommandRefused, LineTransport, ReaderDisabled, ReaderEnabled, SessionCancelled,
    SessionComplete, SessionStarted, UnreadableVendRequest, VendFailed, VendRequest, VendSucceeded,
)
from vendor_node.devices.board_setup import default_adapter_settings


class ReplayTransport(LineTransport):
    """Plays a transcript: the unit's writes must match its ``>`` lines; ``<`` lines follow each write."""

    def __init__(self, transcript: list[str]):
        super().__init__()
        self.steps = deque(transcript)
        self.incoming: deque[bytes] = deque()
        self.unexpected: list[str] = []
        self._release()

    def _release(self) -> None:
        while self.steps and self.steps[0].startswith("<"):
            self.incoming.append(self.steps.popleft()[1:].strip().encode("ascii") + b"\r\n")

    def _read_bytes(self, timeout: float) -> bytes:
        if self.incoming:
            return self.incoming.popleft()
        time.sleep(min(timeout, 0.001))
        return b""

    def _write_bytes(self, data: bytes) -> None:
        line = data.decode("ascii").rstrip("\n")
        if not self.steps or self.steps[0][1:].strip() != line:
            self.unexpected.append(f"wrote {line!r}, transcript expected {self.steps[0] if self.steps else 'nothing'}")
            return
        self.steps.popleft()
        self._release()

    @property
    def done(self) -> bool:
        return not self.steps and not self.incoming and not self.unexpected


def set_up(price_format="decimal", answer="c,SET,OK") -> list[str]:
    """The unit's start-up exchange: C,0, each setting answered, V, then C,1."""
    lines = ["> C,0", '< c,ERR,"cashless is off"']
    for key, value in default_adapter_settings(price_format):
        lines += [f"> C,SETCONF,{key}={value}", f"< {answer}"]
    return lines + ["> V", "< v,3.8.0.0,0123456789AB", "> C,1"]


def replay(transcript, actions, price_format="decimal"):
    """Run ``actions(link)`` against the transcript; returns the events polled."""
    transport = ReplayTransport(transcript)
    link = BoardLink(transport, price_format=price_format, reply_timeout_s=0.2, start_retry_s=0.0)
    events = actions(link)
    while (event := link.poll(0.01)) is not None:
        events.append(event)
    assert transport.unexpected == []
    assert transport.done, f"transcript not finished: {list(transport.steps)[:3]}"
    return events


def drain(link, until):
    events = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        event = link.poll(0.01)
        if event is not None:
            events.append(event)
            if isinstance(event, until):
                return events
    raise AssertionError(f"no {until} in {events}")


# [Q2] Selection First / Always Idle, the slave's column, verbatim after our set-up
QIBIXX_ALWAYS_IDLE = set_up() + [
    "< c,STATUS,INACTIVE", "< c,1", "< c,STATUS,INACTIVE", "< r,ACK", "< c,STATUS,DISABLED", "< r,ACK",
    "< r,ACK", "< c,STATUS,ENABLED", "< c,STATUS,VEND,1.00,5",
    "> C,VEND,1.00",
    "< r,ACK", "< c,VEND,SUCCESS", "< c,STATUS,IDLE", "< c,STATUS,ENABLED", "< r,ACK",
]


def test_qibixx_selection_first_example_ends_in_one_success():
    def actions(link):
        link.enable_reader()
        events = drain(link, VendRequest)
        assert link.approve_vend(100, request=events[-1])
        return events + drain(link, SessionComplete)

    events = replay(QIBIXX_ALWAYS_IDLE, actions)
    assert events == [ReaderDisabled("inactive"), ReaderEnabled(), VendRequest(100, "5"), VendSucceeded(),
                      SessionComplete(interrupted=None)]


# [Q3] the always-idle tutorial: a denied request (C,STOP) and a failed dispense (c,ERR,VEND 3)
def test_qibixx_always_idle_tutorial_deny_and_failed_dispense():
    transcript = set_up() + [
        "< c,STATUS,ENABLED", "< c,STATUS,VEND,1.00,2", "> C,STOP", "< c,STATUS,IDLE", "< c,STATUS,ENABLED",
        "< c,STATUS,VEND,1.00,2", "> C,VEND,1.00", "< c,ERR,VEND 3", "< c,STATUS,IDLE", "< c,STATUS,ENABLED",
    ]

    def actions(link):
        link.enable_reader()
        events = drain(link, VendRequest)
        link.end_session()  # the tutorial's deny
        events += drain(link, VendRequest)
        link.approve_vend(100, request=events[-1])
        return events + drain(link, SessionComplete)

    events = replay(transcript, actions)
    assert [e for e in events if isinstance(e, (VendFailed, VendSucceeded))] == [VendFailed("VEND 3")]


# [P2] solomdb's start-up (C,0, two settings, C,1) is what the simulator must accept; its session lines
# here: a request the customer cancels (c,ERR,VEND 1), then one that succeeds
def test_solomdb_session_lines_cancel_then_success():
    transcript = set_up() + [
        "< c,STATUS,ENABLED", "< c,STATUS,VEND,2.50,12", "< c,ERR,VEND 1", "< c,STATUS,IDLE", "< c,STATUS,ENABLED",
        "< c,STATUS,VEND,2.50,12", "> C,VEND,2.50", "< x,ACK", "< c,VEND,SUCCESS", "< c,STATUS,IDLE",
        "< c,STATUS,ENABLED",
    ]

    def actions(link):
        link.enable_reader()
        events = drain(link, SessionComplete)
        events += drain(link, VendRequest)
        link.approve_vend(250, request=events[-1])
        return events + drain(link, SessionComplete)

    events = replay(transcript, actions)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ReaderEnabled", "VendRequest", "SessionCancelled", "SessionComplete", "VendRequest",
                     "VendSucceeded", "SessionComplete"]
    assert SessionCancelled() in events


# [P1] pyMDBTerminal's own test line "c,STATUS,VEND,500,0": an adapter printing scaled integers
@pytest.mark.parametrize("price_format, expected", [("cents", VendRequest(500, "0")), ("decimal", None)])
def test_pymdbterminal_integer_price_is_read_only_in_the_configured_format(price_format, expected):
    transcript = set_up(price_format) + ["< c,STATUS,ENABLED", "< c,STATUS,VEND,500,0"]
    if expected is None:
        transcript.append("> C,VEND,-1")  # never guessed as 500.00 (or 5.00): denied at once

    def actions(link):
        link.enable_reader()
        return drain(link, (VendRequest, UnreadableVendRequest))

    events = replay(transcript, actions, price_format=price_format)
    if expected is None:
        assert isinstance(events[-1], UnreadableVendRequest) and "500" in events[-1].line
    else:
        assert events[-1] == expected


# [P1] pyMDBTerminal's answer table: every documented error line becomes its event
@pytest.mark.parametrize("line, event", [
    ('c,ERR,"START -3"', CommandRefused("START", -3)), ("c,ERR,-3", CommandRefused("", -3)),
    ("c,ERR,VEND 1", SessionCancelled()), ("c,ERR,VEND 3", VendFailed("VEND 3")),
    ('c,ERR,"VEND -2"', CommandRefused("VEND", -2)), ('c,ERR,"VEND -3"', CommandRefused("VEND", -3)),
    ('c,UNKNOWN," C"', AdapterError('adapter did not understand a command (c,UNKNOWN," C")')),
])
def test_pymdbterminal_answer_table(line, event):
    transcript = set_up() + ["< c,STATUS,ENABLED", "< c,STATUS,VEND,1.00,3", "> C,VEND,1.00", f"< {line}"]

    def actions(link):
        link.enable_reader()
        events = drain(link, VendRequest)
        link.approve_vend(100, request=events[-1])
        return events

    assert replay(transcript, actions)[-1] == event


# [P3] vobox-pi-player arms credit with C,START up to 12 times, 0.9 s apart, while the machine says START -3
def test_vobox_start_retries_through_busy_answers():
    transcript = set_up() + ["< c,STATUS,ENABLED"]
    for _ in range(3):
        transcript += ["> C,START,5.00", '< c,ERR,"START -3"']
    transcript += ["> C,START,5.00", "< c,STATUS,IDLE,5.00", "< c,STATUS,VEND,1.20,7", "> C,VEND,1.20",
                   "< c,VEND,SUCCESS", "< c,STATUS,IDLE", "< c,STATUS,ENABLED"]

    def actions(link):
        link.enable_reader()
        events = drain(link, ReaderEnabled)
        assert link.start_session(500) is True  # busy three times is not a fault
        events += drain(link, VendRequest)
        link.approve_vend(120, request=events[-1])
        return events + drain(link, SessionComplete)

    events = replay(transcript, actions)
    assert [type(e).__name__ for e in events] == ["ReaderEnabled", "VendRequest", "VendSucceeded", "SessionComplete"]


def test_a_session_start_with_an_extra_field_is_a_session_not_a_reset():
    """A session answer with an extra field (issue 14: c,STATUS,IDLE,500,1 reset the link) still answers C,START."""
    transcript = set_up() + ["< c,STATUS,ENABLED", "> C,START,5.00", "< c,STATUS,IDLE,5.00,1"]

    def actions(link):
        link.enable_reader()
        events = drain(link, ReaderEnabled)
        assert link.start_session(500) is True and link.state == "session"
        return events

    replay(transcript, actions)


def test_a_refused_setting_is_a_link_error_naming_it():
    transcript = ["> C,0", '< c,ERR,"cashless is off"', "> C,SETCONF,mdb-always-idle=1", '< c,UNKNOWN," C"']
    transport = ReplayTransport(transcript)
    link = BoardLink(transport, reply_timeout_s=0.2)
    from vendor_node.errors import BoardLinkError

    with pytest.raises(BoardLinkError, match="refused setting mdb-always-idle=1"):
        link.enable_reader()
    assert transport.unexpected == [] and transport.done


def test_session_started_event_keeps_funds_in_the_configured_format():
    transcript = set_up() + ["< c,STATUS,ENABLED", "< c,STATUS,IDLE,3.00"]

    def actions(link):
        link.enable_reader()
        return drain(link, SessionStarted)

    assert replay(transcript, actions)[-1] == SessionStarted(300)


def test_online_cash_sale_and_revalue_lines_are_understood():
    """c,STATUS,ONLINE: the reader is on but not enabled (an assumption); a cash sale is not ours to charge;
    a revalue request is refused with C,REVALUE,0 (no stored value on the unit)."""
    from vendor_node.devices.board import CashSale, RevalueRefused

    transcript = set_up() + ["< c,STATUS,ONLINE", "< c,STATUS,ENABLED", "< c,STATUS,CASHSALE,1.20,4",
                             "< c,STATUS,REVALUE,2.00", "> C,REVALUE,0"]

    def actions(link):
        link.enable_reader()
        return drain(link, RevalueRefused)

    events = replay(transcript, actions)
    assert [type(e) for e in events] == [ReaderDisabled, ReaderEnabled, CashSale, RevalueRefused]
    assert events[0] == ReaderDisabled("inactive")
