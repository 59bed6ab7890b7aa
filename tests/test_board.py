"""The MDB adapter protocol against scripted bytes: exact lines in, exact lines out, typed events."""
import logging
import threading
import time
from collections import deque

import pytest

from vendor_node.devices.board import (
    AdapterError, AdapterReset, BoardLink, CommandRefused, LineTransport, LinkRestored, ReaderDisabled,
    ReaderEnabled, ReconnectingBoardLink, SerialTransport, SessionCancelled, SessionComplete, SessionStarted,
    VendFailed, VendRequest, VendSucceeded, display_text, format_price, parse_price,
)
from vendor_node.config import BoardConfig
from vendor_node.devices.board import UnreadableVendRequest
from vendor_node.devices.board_setup import default_adapter_settings
from vendor_node.errors import BoardLinkError, ProtocolError


class ScriptedTransport(LineTransport):
    """Bytes the 'adapter' sends are scripted chunks; lines we write are recorded (and may trigger replies)."""

    def __init__(self, *chunks: bytes, replies: dict[str, bytes] | None = None):
        super().__init__()
        self.incoming: deque = deque(chunks)
        self.written: list[str] = []
        self.replies = dict(replies or {})
        self.lost = False
        self.closed = False

    def feed(self, *chunks: bytes) -> None:
        self.incoming.extend(chunks)

    def _read_bytes(self, timeout: float) -> bytes:
        if self.incoming:
            return self.incoming.popleft()
        if self.lost:
            raise BoardLinkError("scripted: port lost")
        time.sleep(timeout)
        return b""

    def _write_bytes(self, data: bytes) -> None:
        if self.lost:
            raise BoardLinkError("scripted: write on a lost port")
        line = data.decode("ascii")
        assert line.endswith("\n") and line.count("\n") == 1
        self.written.append(line[:-1])
        if line[:-1] in self.replies:
            self.incoming.append(self.replies[line[:-1]])

    def close(self) -> None:
        self.closed = True


def drain(link, timeout=0.0):
    events = []
    while (event := link.poll(timeout)) is not None:
        events.append(event)
    return events


def make_link(*chunks, replies=None, **kwargs):
    transport = ScriptedTransport(*chunks, replies=replies)
    kwargs.setdefault("reply_timeout_s", 0.05)
    kwargs.setdefault("start_retry_s", 0.01)
    return BoardLink(transport, **kwargs), transport


SETTINGS = default_adapter_settings("decimal")
SETCONF_LINES = [f"C,SETCONF,{key}={value}" for key, value in SETTINGS]
SET_UP = ["C,0", *SETCONF_LINES, "V"]  # what every enable sends before C,1
ADAPTER_OK = {line: b"c,SET,OK\r\n" for line in SETCONF_LINES} | {"V": b"v,3.8.0.0,ABC\r\n"}


def adapter(**replies: bytes) -> dict:
    """An adapter that accepts the set-up, plus ``replies`` (keys: lines with ',' written as '_')."""
    return ADAPTER_OK | {key.replace("_", ","): value for key, value in replies.items()}


# --- framing ------------------------------------------------------------------
def test_cr_lf_and_crlf_all_end_a_line():
    link, _ = make_link(b"c,STATUS,ENABLED\r\nc,STATUS,IDLE,5.00\nc,STATUS,VEND,1.50,12\r")
    assert drain(link) == [ReaderEnabled(), SessionStarted(500), VendRequest(150, "12")]


def test_partial_lines_wait_for_their_end():
    link, transport = make_link(b"c,STA", b"TUS,VEND,1.", b"50,A7")
    assert drain(link) == []
    transport.feed(b"\r", b"\n", b"c,VEND,SUC")
    assert drain(link) == [VendRequest(150, "A7")]
    transport.feed(b"CESS\r\n")
    assert drain(link) == [VendSucceeded()]


def test_garbage_and_malformed_lines_are_ignored_never_raised(caplog):
    link, transport = make_link(
        b"\x00\xff\xfe\r\n",
        b"c,STATUS,VEND,abc,12\n",        # price is not a number
        b"c,STATUS,VEND,1.505,12\n",      # three decimal places
        b"c,STATUS,VEND,-1.50,12\n",      # negative
        b"c,STATUS,VEND,1.50,\n",         # no item
        b"c,STAT\xc3\x28US,ENABLED\n",    # not UTF-8
        b"hello world\n", b"c,BOGUS\n", b"c,STATUS,WEIRD\n", b"\x1b[2J\n", b",,,,\n",
        b"c,STATUS,VEND,2.00,9\r\n",
    )
    with caplog.at_level(logging.WARNING, logger="vendor_node.board"):
        events = drain(link)
    assert events[-1] == VendRequest(200, "9")
    unreadable = [e.line for e in events if isinstance(e, UnreadableVendRequest)]
    assert unreadable == ["c,STATUS,VEND,abc,12", "c,STATUS,VEND,1.505,12", "c,STATUS,VEND,-1.50,12",
                          "c,STATUS,VEND,1.50,"]
    assert len(events) == 5  # nothing else became an event
    garbage_warnings = [r for r in caplog.records if "ignored line" in r.getMessage()]
    assert 1 <= len(garbage_warnings) <= 6  # rate-limited: the first five, not one per line
    assert transport.written == ["C,VEND,-1"] * 4  # a request we cannot read is denied, never left waiting


def test_nul_bytes_are_dropped_and_surrounding_spaces_trimmed():
    link, _ = make_link(b"\x00c,VEND,SUCCESS\x00  \r\n")
    assert drain(link) == [VendSucceeded()]


def test_overlong_line_is_dropped_up_to_its_end():
    link, transport = make_link(b"x" * 300 + b"c,STATUS,ENABLED")
    assert drain(link) == []
    transport.feed(b"\r\nc,STATUS,ENABLED\r\n", b"y" * 400 + b"\n", b"c,VEND,SUCCESS\n")
    assert drain(link) == [ReaderEnabled(), VendSucceeded()]


def test_quiet_lines_give_no_event_and_no_warning(caplog):
    link, _ = make_link(b"r,ACK\r\nc,SET,OK\r\nd,STATUS,IDLE\r\nx,ACK\r\nv,3.8.0.0,ABC\r\n"
                        b'c,ERR,"cashless is on"\r\nc,1\r\n')
    with caplog.at_level(logging.WARNING, logger="vendor_node.board"):
        assert drain(link) == []
    assert caplog.records == []


def test_write_line_refuses_line_breaks_and_non_ascii():
    transport = ScriptedTransport()
    with pytest.raises(ValueError, match="CR or LF"):
        transport.write_line("C,DISPLAY,a\nC,1")
    with pytest.raises(ValueError, match="ASCII"):
        transport.write_line("C,DISPLAY,José")


# --- money ----------------------------------------------------------------------
@pytest.mark.parametrize("text, cents", [("1.00", 100), ("1", 100), ("1.5", 150), ("0.05", 5), ("99.20", 9920),
                                         ("0", 0), (" 2.50 ", 250)])
def test_decimal_prices_become_exact_cents(text, cents):
    assert parse_price(text, "decimal") == cents


@pytest.mark.parametrize("text", ["1.505", "-1.00", "1e3", "", "1,50", "abc", "1.", ".5", "nan"])
def test_bad_decimal_prices_are_protocol_errors(text):
    with pytest.raises(ProtocolError):
        parse_price(text, "decimal")


def test_scaled_integer_prices():
    assert parse_price("150", "cents") == 150
    with pytest.raises(ProtocolError):
        parse_price("1.50", "cents")
    assert format_price(150, "cents") == "150"


def test_format_price():
    assert [format_price(c) for c in (0, 5, 150, 9920, 123456)] == ["0.00", "0.05", "1.50", "99.20", "1234.56"]
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError):
            format_price(bad)


def test_cents_price_format_on_the_wire():
    link, transport = make_link(b"c,STATUS,VEND,250,4\r\n", replies={"C,START,500": b"c,STATUS,IDLE,500\r\n"},
                                price_format="cents")
    assert drain(link) == [VendRequest(250, "4")]
    link.approve_vend(250)
    assert transport.written == ["C,VEND,250"]


# --- commands and their acknowledgements -----------------------------------------
def test_enable_reader_waits_for_a_status_line_then_the_machine_enables():
    link, transport = make_link(replies=adapter(C_1=b"c,STATUS,INACTIVE\r\n"))
    link.enable_reader()
    assert transport.written == SET_UP + ["C,1"]
    transport.feed(b"r,ACK\r\nc,STATUS,DISABLED\r\nr,ACK\r\nc,STATUS,ENABLED\r\n")
    assert drain(link) == [ReaderDisabled("inactive"), ReaderEnabled()]
    assert link.state == "enabled"


def test_enable_reader_already_on_is_acknowledged():
    link, transport = make_link(replies=adapter(C_1=b'c,ERR,"cashless is on"\r\n'))
    link.enable_reader()
    assert drain(link) == []


def test_enable_reader_without_an_answer_raises_within_the_timeout():
    link, transport = make_link(reply_timeout_s=0.1, replies=ADAPTER_OK)
    started = time.monotonic()
    with pytest.raises(BoardLinkError, match="did not answer C,1 within 0.1 s"):
        link.enable_reader()
    assert time.monotonic() - started < 1.0  # generous: the machine's 2 cores are shared


def test_start_session_consumes_its_answer():
    link, transport = make_link(replies={"C,START,5.00": b"r,ACK\r\nc,STATUS,IDLE,5.00\r\n"})
    assert link.start_session(500) is True
    assert transport.written == ["C,START,5.00"]
    assert link.state == "session" and drain(link) == []


def test_start_session_refused_by_the_machine():
    link, _ = make_link(replies={"C,START,5.00": b'c,ERR,"START -3"\r\n'})
    assert link.start_session(500) is False
    assert drain(link) == []


def test_vend_request_racing_a_start_is_delivered_by_poll():
    """Selection first: the machine asked just as the unit tried to open a session."""
    link, _ = make_link(replies={"C,START,5.00": b'c,STATUS,VEND,1.20,7\r\nc,ERR,"START -3"\r\n'})
    assert link.start_session(500) is False
    assert drain(link) == [VendRequest(120, "7")]
    assert link.state == "vend_requested"


def test_late_session_answer_after_a_timeout_becomes_an_event():
    link, transport = make_link(reply_timeout_s=0.05)
    with pytest.raises(BoardLinkError, match="C,START"):
        link.start_session(500)
    transport.feed(b"c,STATUS,IDLE,5.00\r\n")
    assert drain(link) == [SessionStarted(500)]  # the loop can now end the session it gave up on


def test_commands_write_exact_lines():
    link, transport = make_link(b"c,STATUS,ENABLED\r\n")
    assert drain(link) == [ReaderEnabled()]  # display requests are accepted only while Enabled
    assert link.display("Hi José - €3,50 left\r\nC,1") is True
    link.approve_vend(150)
    link.deny_vend()
    link.end_session()
    link.disable_reader()
    assert transport.written == ["C,DISPLAY,Hi Jose - 3,50 left C,1", "C,VEND,1.50", "C,VEND,-1", "C,STOP", "C,0"]
    assert link.display("later") is False and transport.written[-1] == "C,0"  # off: held for Enabled
    with pytest.raises(ValueError):
        link.approve_vend(0)
    with pytest.raises(ValueError):
        link.start_session(-5)


def test_display_text_fits_the_display():
    assert len(display_text("x" * 80)) == 32
    assert display_text("\x00Bad\tchars\x7f") == "Bad chars"


def test_ping_returns_the_version_line():
    link, _ = make_link(replies={"V": b"v,3.8.0.0,0123456789AB\r\n"})
    assert link.ping() == "v,3.8.0.0,0123456789AB"


# --- sessions as the adapter reports them -----------------------------------------
SESSION_START = {"C,START,5.00": b"c,STATUS,IDLE,5.00\r\n"}


def test_hand_first_purchase():
    link, transport = make_link(b"c,STATUS,ENABLED\r\n", replies=SESSION_START)
    assert drain(link) == [ReaderEnabled()]
    assert link.start_session(500)
    transport.feed(b"c,STATUS,VEND,1.50,12\r\n")
    request = link.poll(0)
    assert request == VendRequest(150, "12") and link.open_vend == request
    link.approve_vend(request.price_cents)
    assert link.interrupted_stage == "vend_approved" and link.approved_cents == 150
    transport.feed(b"r,ACK\r\nc,VEND,SUCCESS\r\nc,STATUS,IDLE\r\nc,STATUS,ENABLED\r\n")
    assert drain(link) == [VendSucceeded(), SessionComplete(interrupted=None)]
    assert link.state == "enabled" and link.open_vend is None


@pytest.mark.parametrize("line, event", [
    (b"c,ERR,VEND 3", VendFailed("VEND 3")),
    (b"c,ERR,VEND 7", VendFailed("VEND 7")),       # unknown failure: never a charge
    (b"c,ERR,VEND 1", SessionCancelled()),
    (b"c,ERR,VEND 5", AdapterReset(interrupted="vend_approved")),
    (b'c,ERR,"VEND -3"', CommandRefused("VEND", -3)),
    (b'c,ERR,"VEND -2"', CommandRefused("VEND", -2)),
    (b'c,ERR,"START -3"', CommandRefused("START", -3)),
    (b"c,ERR,-3", CommandRefused("", -3)),
    (b'c,ERR,"something odd"', AdapterError("something odd")),
])
def test_vend_outcomes_and_errors(line, event):
    link, transport = make_link(b"c,STATUS,VEND,1.50,12\r\n")
    assert link.poll(0) == VendRequest(150, "12")
    link.approve_vend(150)
    transport.feed(line + b"\r\n")
    assert drain(link) == [event]


def test_session_ending_without_an_outcome_reports_the_open_approval():
    link, transport = make_link(b"c,STATUS,VEND,1.50,12\r\n")
    link.poll(0)
    link.approve_vend(150)
    transport.feed(b"c,STATUS,IDLE\r\nc,STATUS,ENABLED\r\n")
    assert drain(link) == [SessionComplete(interrupted="vend_approved")]


def test_reader_reset_in_a_session_is_reported_before_disabled():
    link, transport = make_link(replies=SESSION_START)
    link.start_session(500)
    transport.feed(b"c,STATUS,INACTIVE\r\nc,STATUS,DISABLED\r\nc,STATUS,ENABLED\r\n")
    assert drain(link) == [AdapterReset(interrupted="session"), ReaderDisabled("inactive"), ReaderEnabled()]


def test_lost_port_raises_board_link_error_from_poll():
    link, transport = make_link(b"c,STATUS,ENABLED\r\n")
    transport.lost = True
    assert link.poll(0) == ReaderEnabled()
    with pytest.raises(BoardLinkError, match="lost"):
        link.poll(0.01)


# --- reopening with backoff and re-synchronisation -----------------------------------
class FlakyFactory:
    """Fails ``failures`` times, then hands out a transport whose adapter answers the resync."""

    def __init__(self, failures: int, replies=None):
        self.failures = failures
        self.replies = adapter(C_1=b"c,STATUS,INACTIVE\r\n") if replies is None else replies
        self.opened: list[ScriptedTransport] = []

    def __call__(self):
        if self.failures > 0:
            self.failures -= 1
            raise BoardLinkError("serial port /dev/ttyMDB: cannot open: no such file")
        transport = ScriptedTransport(replies=self.replies)
        self.opened.append(transport)
        return transport


def test_reopen_backs_off_exponentially_capped_and_resyncs():
    waits = []
    factory = FlakyFactory(failures=5)
    old = ScriptedTransport(replies=adapter(C_1=b"c,STATUS,INACTIVE\r\n"))
    link = BoardLink(old, reopen_transport=factory, reply_timeout_s=0.05, initial_backoff_s=0.1,
                     max_backoff_s=0.5, wait=lambda delay, stop: waits.append(delay))
    link.enable_reader()
    assert drain(link) == [ReaderDisabled("inactive")]
    old.feed(b"c,STATUS,VEND,1.50,12\r\n")
    assert link.poll(0) == VendRequest(150, "12")
    link.approve_vend(150)
    old.lost = True
    with pytest.raises(BoardLinkError):
        link.poll(0.01)
    restored = link.reopen()
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert old.closed
    assert restored == LinkRestored(interrupted="vend_approved", vend=VendRequest(150, "12"), approved_cents=150)
    new = factory.opened[-1]
    assert new.written == SET_UP + ["C,1"]  # any half session ends with C,0 [S1]; set up again, then C,1
    assert link.open_vend is None and link.state == "off"
    new.feed(b"c,STATUS,DISABLED\r\nc,STATUS,ENABLED\r\n")
    assert drain(link) == [ReaderEnabled()]


def test_reopen_keeps_a_deliberately_disabled_reader_disabled():
    factory = FlakyFactory(failures=0)
    link = BoardLink(ScriptedTransport(), reopen_transport=factory, reply_timeout_s=0.05)
    link.disable_reader()
    assert link.reopen() == LinkRestored(None, None, None)
    assert factory.opened[-1].written == ["C,0", "V"]


def test_reopen_stops_on_the_stop_event_and_on_its_deadline():
    stop = threading.Event()
    waits = []

    def wait(delay, stop_event):
        waits.append(delay)
        stop_event.set()

    link = BoardLink(ScriptedTransport(), reopen_transport=FlakyFactory(failures=99), wait=wait)
    with pytest.raises(BoardLinkError, match="stopped"):
        link.reopen(stop_event=stop)
    assert waits == [0.1]
    link = BoardLink(ScriptedTransport(), reopen_transport=FlakyFactory(failures=99), wait=lambda d, s: None,
                     max_backoff_s=0.2)
    with pytest.raises(BoardLinkError, match="gave up reopening after"):
        link.reopen(deadline_s=0.0)


def test_a_resync_without_an_answer_counts_as_a_failed_attempt():
    factory = FlakyFactory(failures=0, replies={})
    waits = []
    link = BoardLink(ScriptedTransport(replies=adapter(C_1=b"c,STATUS,ENABLED\r\n")), reopen_transport=factory,
                     reply_timeout_s=0.01, wait=lambda d, s: waits.append(d))
    link.enable_reader()
    with pytest.raises(BoardLinkError, match="gave up"):
        link.reopen(deadline_s=0.35)
    assert len(factory.opened) >= 2 and all(t.closed for t in factory.opened)


def test_reopen_without_a_factory_is_an_error():
    link = BoardLink(ScriptedTransport())
    with pytest.raises(BoardLinkError, match="cannot reopen"):
        link.reopen()


def test_reconnecting_link_turns_a_loss_into_link_restored():
    factory = FlakyFactory(failures=2)
    first = ScriptedTransport(replies=adapter(C_1=b"c,STATUS,INACTIVE\r\n"))
    link = ReconnectingBoardLink(first, reopen_transport=factory, reply_timeout_s=0.05,
                                 wait=lambda d, s: None)
    link.enable_reader()
    assert drain(link) == [ReaderDisabled("inactive")]
    first.lost = True
    assert link.poll(0.01) == LinkRestored(None, None, None)
    factory.opened[-1].feed(b"c,STATUS,ENABLED\r\n")
    assert link.poll(0) == ReaderEnabled()


def test_serial_transport_names_the_port_it_cannot_open(tmp_path):
    with pytest.raises(BoardLinkError, match="nope: cannot open"):
        SerialTransport(str(tmp_path / "nope"))


def test_board_config_has_the_price_format():
    assert BoardConfig().price_format == "decimal"
    with pytest.raises(ValueError):
        BoardLink(ScriptedTransport(), price_format="euros")


def test_a_refused_approval_is_not_an_open_approval():
    link, transport = make_link(b"c,STATUS,VEND,1.50,12\r\n")
    link.poll(0)
    link.approve_vend(150)
    transport.feed(b'c,ERR,"VEND -3"\r\nc,STATUS,IDLE\r\nc,STATUS,ENABLED\r\n')
    assert drain(link) == [CommandRefused("VEND", -3), SessionComplete(interrupted="vend_requested")]
    assert link.approved_cents is None


class FloodTransport(ScriptedTransport):
    """An adapter that never stops talking: noise without line ends, or endless chatter lines."""

    def __init__(self, chunk: bytes):
        super().__init__()
        self.chunk = chunk

    def _read_bytes(self, timeout: float) -> bytes:
        time.sleep(0.001)
        return self.chunk


@pytest.mark.parametrize("chunk", [b"~" * 64, b"r,ACK\r\n"])
def test_a_flood_does_not_hold_poll_past_its_timeout(chunk):
    link = BoardLink(FloodTransport(chunk))
    started = time.monotonic()
    assert link.poll(0.05) is None
    assert time.monotonic() - started < 0.5


def test_megabytes_of_serial_noise_log_a_handful_of_warnings(caplog):
    """2 MB of noise without a line end once logged ~500 warnings; now a few, then how many were dropped."""
    import logging
    import random

    from vendor_node.devices.board_transport import LineTransport

    class Noise(LineTransport):
        def __init__(self, data):
            super().__init__()
            self.data = data

        def _read_bytes(self, timeout):
            chunk, self.data = self.data[:65536], self.data[65536:]
            return chunk

    rng = random.Random(3)
    transport = Noise(bytes(rng.randrange(32, 127) for _ in range(2_000_000)) + b"\nc,STATUS,ENABLED\n")
    with caplog.at_level(logging.WARNING, logger="vendor_node.board"):
        for _ in range(40):
            transport._feed(transport._read_bytes(0))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) <= 6
    assert transport._lines and transport._lines[-1] == "c,STATUS,ENABLED"
