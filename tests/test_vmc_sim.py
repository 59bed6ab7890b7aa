"""The vending-machine simulator and BoardLink end to end over a real pty.

Every fault ends with the link back in service: a normal purchase completes after it.
"""
import os
import time

import pytest

from vendor_node.devices.board import (
    BoardLink, LinkRestored, ReaderEnabled, SerialTransport, SessionCancelled, SessionComplete, VendFailed,
    VendRequest, VendSucceeded, open_board_link,
)
from vendor_node.config import BoardConfig
from vendor_node.errors import BoardLinkError
from vendor_node.sim.vmc_sim import VendingMachineSimulator

BOARD = BoardConfig(reply_timeout_s=1.0, reconnect_max_backoff_s=0.4)


def wait_event(link, kinds, timeout=3.0):
    """Poll until an event of ``kinds``; returns (it, the events seen before it)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = link.poll(0.05)
        if isinstance(event, kinds):
            return event, seen
        if event is not None:
            seen.append(event)
    raise AssertionError(f"no {kinds} within {timeout} s; saw {seen}")


@pytest.fixture
def sim():
    with VendingMachineSimulator(reader_timeout_s=2.0) as machine:
        yield machine
        assert machine.protocol_errors == []


@pytest.fixture
def link(sim):
    with open_board_link(BOARD, port=sim.port_path) as board_link:
        board_link.enable_reader()
        wait_event(board_link, ReaderEnabled)
        yield board_link


def buy_hand_first(sim, link, price=150, item="12", funds=500, behaviour="normal"):
    """One hand-first purchase; returns (customer, outcome event)."""
    customer = sim.next_customer(selection=(price, item), behaviour=behaviour)
    assert link.start_session(funds)
    request, _ = wait_event(link, VendRequest)
    assert request == VendRequest(price, item)
    link.approve_vend(request.price_cents)
    outcome, _ = wait_event(link, (VendSucceeded, VendFailed))
    wait_event(link, SessionComplete)
    return customer, outcome


def test_normal_hand_first_purchase(sim, link):
    customer, outcome = buy_hand_first(sim, link)
    assert outcome == VendSucceeded()
    assert customer.wait(1) == "vended"
    assert [(v.item, v.price_cents, v.approved_cents, v.reported) for v in sim.vended] == [("12", 150, 150, True)]
    assert "C,START,5.00" in sim.commands and "C,VEND,1.50" in sim.commands


def test_selection_first_always_idle(sim, link):
    customer = sim.next_customer(selection=(220, "B3"), order="selection_first")
    request, seen = wait_event(link, VendRequest)  # no session was started by the unit
    assert request == VendRequest(220, "B3") and seen == []
    assert not any(c.startswith("C,START") for c in sim.commands)
    link.approve_vend(220)
    wait_event(link, VendSucceeded)
    wait_event(link, SessionComplete)
    assert customer.wait(1) == "vended" and len(sim.vended) == 1


def test_selection_first_without_always_idle_prompts_and_waits_for_a_session():
    with VendingMachineSimulator(always_idle=False, patience_s=2.0) as sim, \
            open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        customer = sim.next_customer(selection=(90, "7"), order="selection_first")
        assert sim.wait_until(lambda: sim.machine_messages, 1)
        assert link.poll(0.1) is None  # nothing on the bus for a selection
        assert link.start_session(500)  # the hand came within the machine's patience
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(request.price_cents)
        wait_event(link, VendSucceeded)
        assert customer.wait(1) == "vended"
        assert sim.protocol_errors == []


def test_jammed_item_fails_then_service_resumes(sim, link):
    customer, outcome = buy_hand_first(sim, link, behaviour="jam")
    assert outcome == VendFailed("VEND 3")
    assert customer.wait(1) == "failed" and sim.vended == []
    _, outcome = buy_hand_first(sim, link, price=80, item="4")
    assert outcome == VendSucceeded() and len(sim.vended) == 1


def test_customer_cancels_instead_of_selecting(sim, link):
    customer = sim.next_customer(selection=(150, "12"), behaviour="cancel")
    assert link.start_session(500)
    complete, seen = wait_event(link, SessionComplete)
    assert complete == SessionComplete(interrupted=None) and seen == []  # no vend request: void it
    assert customer.wait(1) == "cancelled"
    _, outcome = buy_hand_first(sim, link)
    assert outcome == VendSucceeded()


def test_customer_cancels_a_pending_selection(sim, link):
    customer = sim.next_customer(selection=(150, "12"), behaviour="cancel", order="selection_first")
    wait_event(link, VendRequest)  # the unit is still waiting for a hand
    wait_event(link, SessionCancelled)
    wait_event(link, SessionComplete)
    assert customer.wait(1) == "cancelled" and sim.vended == []
    _, outcome = buy_hand_first(sim, link)
    assert outcome == VendSucceeded()


def test_denied_vend_drops_nothing(sim, link):
    customer = sim.next_customer(selection=(150, "12"))
    assert link.start_session(500)
    wait_event(link, VendRequest)
    link.deny_vend()
    wait_event(link, SessionComplete)
    assert customer.wait(1) == "denied" and sim.vended == []
    assert "C,VEND,-1" in sim.commands


def test_unanswered_request_times_out_on_the_machine(sim, link):
    sim.reader_timeout_s = 0.2
    customer = sim.next_customer(selection=(150, "12"), order="selection_first")
    wait_event(link, VendRequest)
    wait_event(link, SessionCancelled)
    assert customer.wait(1) == "timeout"


def test_insufficient_funds_ends_the_session_without_a_request(sim, link):
    customer = sim.next_customer(selection=(350, "12"))
    assert link.start_session(300)
    _, seen = wait_event(link, SessionComplete)
    assert not any(isinstance(e, VendRequest) for e in seen)
    assert customer.wait(1) == "insufficient_funds"


def test_slow_machine_within_the_timeouts():
    with VendingMachineSimulator(reply_delay_s=0.3, slow_s=0.3) as sim, \
            open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        customer = sim.next_customer(selection=(150, "12"), behaviour="slow")
        started = time.monotonic()
        assert link.start_session(500)  # answered after 0.3 s, inside the 1.0 s reply timeout
        assert time.monotonic() - started >= 0.25
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(request.price_cents)
        approved_at = time.monotonic()
        wait_event(link, VendSucceeded)
        assert time.monotonic() - approved_at >= 0.5  # the slow vend took its time
        assert customer.wait(1) == "vended" and sim.protocol_errors == []


def test_garbage_bytes_are_ignored(sim, link):
    sim.send_garbage()
    customer = sim.next_customer(selection=(150, "12"))
    assert link.start_session(500)
    request, _ = wait_event(link, VendRequest)
    sim.send_garbage(b"\xff\xfe\x00garbage\r\nc,STATUS,VEND,x,y\r\n\n\r")
    link.approve_vend(request.price_cents)
    wait_event(link, VendSucceeded)
    sim.send_garbage()
    wait_event(link, SessionComplete)
    assert customer.wait(1) == "vended"
    _, outcome = buy_hand_first(sim, link)
    assert outcome == VendSucceeded()


def test_display_lines_reach_the_machine(sim, link):
    link.display("Hello Zoë - 12.50 left for today")
    assert sim.wait_until(lambda: sim.display_lines, 1)
    assert sim.display_lines == ["Hello Zoe - 12.50 left for today"[:32]]


def test_disconnect_raises_then_reopen_resyncs_with_backoff(sim):
    with BoardLink(SerialTransport(sim.port_path), reopen_transport=lambda: SerialTransport(sim.port_path),
                   reply_timeout_s=1.0, initial_backoff_s=0.05, max_backoff_s=0.2) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        sim.disconnect(down_s=0.4)
        with pytest.raises(BoardLinkError, match="lost"):
            for _ in range(40):
                link.poll(0.05)
        started = time.monotonic()
        restored = link.reopen()
        assert time.monotonic() - started >= 0.3  # it waited for the port to come back
        assert restored == LinkRestored(interrupted=None, vend=None, approved_cents=None)
        assert sim.connections == 2
        wait_event(link, ReaderEnabled)
        set_up = ["C,0"] + [f"C,SETCONF,{k}={v}" for k, v in link.adapter_settings] + ["V", "C,1"]
        assert sim.commands[-len(set_up):] == set_up  # the adapter restarted: set up again before C,1
        assert sim.settings["mdb-always-idle"] == "1"
        _, outcome = buy_hand_first(sim, link)
        assert outcome == VendSucceeded()


def test_disconnect_during_an_approved_vend_is_reported_for_settling():
    with VendingMachineSimulator(slow_s=0.5) as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        customer = sim.next_customer(selection=(150, "12"), behaviour="slow")
        assert link.start_session(500)
        request, _ = wait_event(link, VendRequest)
        link.approve_vend(request.price_cents)
        sim.disconnect(down_s=0.2)  # the vend is still running: its success line is lost
        restored, seen = wait_event(link, LinkRestored)
        assert not any(isinstance(e, VendSucceeded) for e in seen)
        assert restored == LinkRestored(interrupted="vend_approved", vend=VendRequest(150, "12"), approved_cents=150)
        assert customer.wait(1) == "vended_unreported"
        assert [v.reported for v in sim.vended] == [False]  # it dropped: the loop must not void it blindly
        assert (sim.vended_count, sim.vended_reported_count) == (1, 0)
        wait_event(link, ReaderEnabled)
        _, outcome = buy_hand_first(sim, link, item="13")
        assert outcome == VendSucceeded() and len(sim.vended) == 2
        assert sim.protocol_errors == []


def test_disconnect_during_a_session_interrupts_it(sim, link):
    customer = sim.next_customer(selection=(150, "12"), behaviour="slow")
    assert link.start_session(500)
    sim.disconnect(down_s=0.1)
    restored, _ = wait_event(link, LinkRestored)
    assert restored.interrupted == "session"
    assert customer.wait(1) == "interrupted" and sim.vended == []
    wait_event(link, ReaderEnabled)
    _, outcome = buy_hand_first(sim, link)
    assert outcome == VendSucceeded()


def test_disabled_reader_refuses_sessions_until_enabled(sim, link):
    link.disable_reader()
    assert sim.wait_until(lambda: sim.reader_state == "off", 1)
    assert link.start_session(500) is False
    link.enable_reader()
    wait_event(link, ReaderEnabled)
    _, outcome = buy_hand_first(sim, link)
    assert outcome == VendSucceeded()


def test_scripting_api_rejects_bad_customers(sim):
    with pytest.raises(ValueError, match="behaviour"):
        sim.next_customer(selection=(150, "12"), behaviour="angry")
    with pytest.raises(ValueError, match="order"):
        sim.next_customer(selection=(150, "12"), order="whenever")
    with pytest.raises(ValueError, match="selection"):
        sim.next_customer(selection=(0, "12"))
    with pytest.raises(ValueError, match="selection"):
        sim.next_customer(selection=(150, "1,2"))


def test_simulator_stops_cleanly_and_removes_its_port():
    sim = VendingMachineSimulator().start()
    path = sim.port_path
    with BoardLink(SerialTransport(path)) as link:
        sim.stop()
        assert not sim.running
        with pytest.raises(BoardLinkError, match="lost"):
            for _ in range(20):
                link.poll(0.05)
    assert not os.path.exists(path)


def test_long_runs_keep_bounded_history_and_exact_totals():
    with VendingMachineSimulator(keep_history=2) as sim, open_board_link(BOARD, port=sim.port_path) as link:
        link.enable_reader()
        wait_event(link, ReaderEnabled)
        for item in ("1", "2", "3"):
            buy_hand_first(sim, link, price=100, item=item)
        buy_hand_first(sim, link, price=100, item="4", behaviour="jam")
        assert sim.wait_idle(1)
        assert [v.item for v in sim.vended] == ["2", "3"]
        assert (sim.vended_count, sim.vended_cents) == (3, 300)
        assert (sim.vended_reported_count, sim.vended_reported_cents) == (3, 300)
        assert sim.outcome_counts == {"vended": 3, "failed": 1}
        assert len(sim.commands) == 2 and sim.protocol_errors == []
        assert sim.pending_timers <= 2  # finished customers' patience/timeout timers were dropped, not kept 10-30 s
