"""The simulator is as strict as the adapter, and the unit's link passes it: set-up, busy starts, power cycles.

Real clients' start-up lines (docs/mdb-protocol.md: [P1] pyMDBTerminal, [P2] solomdb, [P3] vobox-pi-player,
[S1] the Qibixx sample) are written raw to the simulator's pty, with their own line ends.
"""
from __future__ import annotations

import time

import pytest

from vendor_node.config import BoardConfig
from vendor_node.devices.board import (
    BoardLink, ReaderEnabled, RevalueRefused, SerialTransport, SessionComplete, VendRequest, VendSucceeded,
    board_link_options, open_board_link,
)
from vendor_node.sim.vmc_sim import VendingMachineSimulator

BOARD = BoardConfig(reply_timeout_s=1.0, reconnect_max_backoff_s=0.4, start_retry_s=0.05)


def wait_event(link, kinds, timeout=3.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = link.poll(0.05)
        if isinstance(event, kinds):
            return event, seen
        if event is not None:
            seen.append(event)
    raise AssertionError(f"no {kinds} within {timeout} s; saw {seen}")


class RawClient:
    """A client that writes exactly what a real one writes (its own line ends) and reads every line."""

    def __init__(self, path: str):
        self.transport = SerialTransport(path)
        self.lines: list[str] = []

    def send(self, line: str, end: bytes = b"\r\n") -> None:
        self.transport._write_bytes(line.encode("ascii") + end)

    def read_until(self, predicate, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.transport.readline(0.05)
            if line is not None:
                self.lines.append(line)
                if predicate(line):
                    return True
        return False

    def close(self) -> None:
        self.transport.close()


START_UPS = {
    "solomdb": (["C,0", "C,SETCONF,mdb-currency-code=0x1978", "C,SETCONF,mdb-always-idle=1", "C,1"], b"\r\n"),
    "vobox creditor": (["X,0", "C,0", "V", "C,1"], b"\r\n"),
    "vobox tester (CR only)": (["V", "X,1", "X,0", "C,0", "C,1"], b"\r"),
    "pyMDBTerminal": (["C,0", "C,SETCONF,mdb-always-idle=1", "C,SETCONF,mdb-decimal-places=2",
                       "C,SETCONF,mdb-timeout-vend=30", "C,1"], b"\n"),
    "Qibixx sample": (["C,0", "C,1"], b"\n"),
}


@pytest.mark.parametrize("client", sorted(START_UPS))
def test_real_clients_start_ups_raise_no_protocol_errors(client):
    lines, end = START_UPS[client]
    with VendingMachineSimulator() as sim:
        raw = RawClient(sim.port_path)
        try:
            for line in lines:
                raw.send(line, end)
            assert raw.read_until(lambda line: line == "c,STATUS,ENABLED")
            customer = sim.next_customer((120, "7"))  # then a purchase the way vobox arms credit
            raw.send("C,START,2.00", end)
            assert raw.read_until(lambda line: line.startswith("c,STATUS,VEND,"))
            assert raw.lines[-1] == "c,STATUS,VEND,1.20,7"  # the adapter's configured format
            raw.send("C,VEND,1.20", end)
            assert raw.read_until(lambda line: line == "c,STATUS,ENABLED")
            assert customer.wait(1) == "vended" and "c,VEND,SUCCESS" in raw.lines
        finally:
            raw.close()
        assert sim.protocol_errors == [] and sim.refused_settings == []


def test_without_always_idle_set_a_selection_never_reaches_the_bus():
    """vobox's start-up sets nothing: the adapter stays at its power-up default, always-idle off."""
    with VendingMachineSimulator(patience_s=0.5) as sim:
        raw = RawClient(sim.port_path)
        try:
            for line in START_UPS["vobox creditor"][0]:
                raw.send(line)
            assert raw.read_until(lambda line: line == "c,STATUS,ENABLED")
            customer = sim.next_customer((150, "12"), order="selection_first")
            assert customer.wait(3) == "no_session"  # the machine only prompted for payment
            assert not any(line.startswith("c,STATUS,VEND") for line in raw.lines)
        finally:
            raw.close()


def test_the_units_start_up_sets_always_idle_and_selection_first_works():
    with VendingMachineSimulator() as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        assert link.start_commands == ["C,0"] + [f"C,SETCONF,{k}={v}" for k, v in link.adapter_settings] + ["V", "C,1"]
        assert sim.set_since_power_up == {k for k, _ in link.adapter_settings}
        assert link.adapter_version == "v,3.8.0.0,VMCSIM000001"
        customer = sim.next_customer((220, "B3"), order="selection_first")
        request, _ = wait_event(link, VendRequest)
        assert link.approve_vend(220, request=request)
        wait_event(link, VendSucceeded)
        assert customer.wait(1) == "vended" and sim.protocol_errors == []


def test_settings_are_refused_while_the_cashless_is_on_and_bad_values_always():
    with VendingMachineSimulator() as sim:
        raw = RawClient(sim.port_path)
        try:
            raw.send("C,1")
            assert raw.read_until(lambda line: line == "c,STATUS,ENABLED")
            raw.send("C,SETCONF,mdb-always-idle=1")
            assert raw.read_until(lambda line: line.startswith("c,ERR"))
            assert raw.lines[-1] == 'c,ERR,"cashless is on"'
            raw.send("C,0")
            raw.send("C,SETCONF,mdb-decimal-places=7")
            assert raw.read_until(lambda line: line.startswith("c,ERR"))
            raw.send("C,SETCONF,mdb-decimal-places=3")
            assert raw.read_until(lambda line: line == "c,SET,OK")
        finally:
            raw.close()
        assert sim.refused_settings == ["mdb-always-idle=1", "mdb-decimal-places=7"]
        assert sim.settings["mdb-decimal-places"] == "3"


def test_a_refused_setting_keeps_the_unit_out_with_a_message_naming_it(monkeypatch):
    with VendingMachineSimulator() as sim:
        options = board_link_options(BOARD)
        options["adapter_settings"] = options["adapter_settings"] + [("mdb-decimal-places", "9")]
        with BoardLink(SerialTransport(sim.port_path), **options) as link:
            from vendor_node.errors import BoardLinkError

            with pytest.raises(BoardLinkError, match="refused setting mdb-decimal-places=9"):
                link.enable_reader()


def test_settings_are_volatile_a_power_cycle_is_noticed_and_set_up_again():
    with VendingMachineSimulator() as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        sim.power_cycle()
        assert sim.wait_until(lambda: sim.settings["mdb-always-idle"] == "0" and sim.reader_state == "off", 2)
        assert link.start_session(500) is False  # c,ERR,"cashless is off": not busy, not a fault
        wait_event(link, ReaderEnabled)  # the next poll set the adapter up again and re-enabled it
        assert sim.settings["mdb-always-idle"] == "1"
        customer = sim.next_customer((150, "12"))
        assert link.start_session(500)
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(150, request=request)
        wait_event(link, VendSucceeded)
        assert customer.wait(1) == "vended" and sim.protocol_errors == []


def test_busy_start_answers_are_retried_not_faults():
    with VendingMachineSimulator(start_busy=3) as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        customer = sim.next_customer((150, "12"))
        assert link.start_session(500) is True
        assert sim.start_busy_answers == 3 and sim.commands.count("C,START,5.00") == 4
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(150, request=request)
        wait_event(link, SessionComplete)
        assert customer.wait(1) == "vended"


def test_a_machine_busy_beyond_the_schedule_is_a_refusal_not_a_link_error():
    board = BoardConfig(reply_timeout_s=0.5, start_attempts=3, start_retry_s=0.01)
    with VendingMachineSimulator(start_busy=5) as sim, open_board_link(board, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        assert link.start_session(500) is False
        assert sim.commands.count("C,START,5.00") == 3


def test_prices_in_the_adapter_format_the_unit_set():
    board = BoardConfig(reply_timeout_s=1.0, price_format="cents")
    with VendingMachineSimulator() as sim, open_board_link(board, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        assert sim.settings["mdb-decimal-places"] == "0"
        sim.next_customer((150, "12"))
        assert link.start_session(500)
        request, _ = wait_event(link, VendRequest)
        assert request == VendRequest(150, "12") and "C,START,500" in sim.commands
        link.approve_vend(150, request=request)
        wait_event(link, VendSucceeded)
        assert "C,VEND,150" in sim.commands and sim.protocol_errors == []


def test_display_outside_enabled_waits_for_enabled():
    with VendingMachineSimulator() as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        sim.next_customer((150, "12"))
        assert link.start_session(500)
        assert link.display("Enjoy!") is False  # in a session: held, LED and buzzer carry it meanwhile
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(150, request=request)
        wait_event(link, SessionComplete)
        link.poll(0.05)
        assert sim.wait_until(lambda: sim.display_lines == ["Enjoy!"], 2)
        assert list(sim.display_refused) == []


def test_a_revalue_request_is_refused_on_purpose():
    with VendingMachineSimulator() as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        sim.send_raw(b"c,STATUS,REVALUE,5.00\r\n")
        event, _ = wait_event(link, RevalueRefused)
        assert "REVALUE" in event.line
        assert sim.wait_until(lambda: sim.revalue_answers == ["0"], 2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_simulate_reports_the_adapter_start_commands(tmp_path):
    import json

    from vendor_node.cli import main

    code = main(["simulate", "--customers", "4", "--state-dir", str(tmp_path / "state"), "--report",
                 str(tmp_path / "report.json"), "--seed", "5", "--synthetic", "--employees", "3"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0 and report["charges_equal_vends"]
    commands = report["adapter"]["start_commands"]
    assert commands[0] == "C,0" and commands[-2:] == ["V", "C,1"]
    assert "C,SETCONF,mdb-always-idle=1" in commands and "C,SETCONF,mdb-decimal-places=2" in commands
    assert report["adapter"]["protocol_errors"] == [] and report["adapter"]["version"].startswith("v,")


def test_a_start_answered_after_the_reply_timeout_is_still_the_session():
    board = BoardConfig(reply_timeout_s=0.3, start_retry_s=3.0)  # the answer (0.4 s) comes inside the pause
    with VendingMachineSimulator(reply_delay_s=0.4) as sim, open_board_link(board, port=sim.port_path) as link:
        link.reply_timeout_s = 1.0  # set-up with a patient link, then sessions with the short timeout
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        link.reply_timeout_s = 0.3
        sim.next_customer((150, "12"))
        assert link.start_session(500) is True  # the answer came during the pause before a second try
        assert sim.commands.count("C,START,5.00") == 1
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(150, request=request)
        wait_event(link, VendSucceeded)
        assert sim.protocol_errors == []
