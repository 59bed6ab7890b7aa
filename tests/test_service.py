"""The purchase loop on simulated hardware: SimCamera, MockFactory pins, the real VMC simulator over a pty,
the real journal and account store. Only the recognizer is a small fake (images carry a marker pixel),
so these tests are fast and deterministic; every simulator fault ends with the unit back in service and
the journal's charges equal to what dropped."""
from __future__ import annotations

import socket
import sqlite3
import time
from dataclasses import dataclass

import numpy as np
import pytest

from vendor_node.config import Config
from vendor_node.errors import HandRejected, JournalError
from vendor_node.devices.notify import Notifier
from vendor_node.unit.purchase import State
from vendor_node.sim.provision import provision_bundle
from vendor_node.sim.simulate import Customer, SimUnit, journal_summary

UNKNOWN, AMBIGUOUS, NO_HAND = 200, 254, 255


@dataclass
class FakeMatch:
    employee_id: str | None
    score: float
    runner_up: float
    reason: str


@dataclass
class FakeEnrollment:
    template: bytes


class MarkerRecognizer:
    """Reads who is in the image from its top-left pixel: 1..199 a person, 254 ambiguous, 255 no hand."""

    def features(self, image):
        marker = int(image[0, 0])
        if marker == NO_HAND:
            raise HandRejected("no_hand", "No hand seen: hold your open palm over the unit.")
        return marker

    def identify(self, features, gallery):
        if features == AMBIGUOUS:
            return FakeMatch(None, 0.8, 0.79, "ambiguous")
        employee = gallery.get(features)
        return FakeMatch(employee, 0.9, 0.2, "match") if employee else FakeMatch(None, 0.1, 0.05, "unknown")

    def enroll(self, images):
        return FakeEnrollment(bytes([1, int(images[0][0, 0])]))


def marker_gallery(templates: dict[str, bytes]) -> dict[int, str]:
    return {template[1]: employee_id for employee_id, template in templates.items()}


def hand(marker: int) -> np.ndarray:
    image = np.full((48, 64), 30, np.uint8)
    image[0, 0] = marker
    return image


EMPLOYEES = [("E1", "Ada Lovelace", 100_000, "active"), ("E2", "Ben Short", 100, "active"),
             ("E3", "Cy Suspended", 100_000, "suspended")]


def make_cfg(tmp_path, **sections):
    cfg = Config().replace(
        unit={"state_dir": tmp_path / "state", "hardware": "sim", "unit_id": "unit-test"},
        board={"selection_timeout_s": 1.0, "vend_outcome_timeout_s": 1.0, "hand_wait_s": 0.5,
               "reply_timeout_s": 0.5, "reconnect_max_backoff_s": 0.5},
        abuse={"max_failures": 50},
    )
    return cfg.replace(**sections) if sections else cfg


@pytest.fixture
def cfg(tmp_path):
    cfg = make_cfg(tmp_path)
    provision_bundle(cfg, EMPLOYEES, {"E1": bytes([1, 1]), "E2": bytes([1, 2]), "E3": bytes([1, 3])})
    return cfg


FAST_RETRY = {"fault_retry_s": 0.3}
VMC_FAST = {"patience_s": 1.0, "reader_timeout_s": 2.0, "session_timeout_s": 5.0, "slow_s": 0.2,
            "cancel_after_s": 0.2}


@pytest.fixture
def unit(cfg):
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        assert unit.wait_in_service(5.0), unit.loop.faults
        yield unit
    assert unit.error is None


def buy(unit, marker, selection=(150, "A2"), behaviour="normal", order="hand_first", images=None):
    customer = Customer(unit, images or [hand(marker)], selection, behaviour, order)
    purchase = customer.run(timeout=5.0)
    assert purchase is not None, "the unit recorded no purchase"
    return purchase, customer


def charges_match_vends(unit) -> bool:
    summary = journal_summary(unit.journal, 0)
    vended = unit.vmc.vended
    return summary["charged"] == len(vended) and summary["charged_cents"] == sum(v.approved_cents for v in vended)


def displayed(unit, predicate) -> bool:
    """The machine's display showed a matching line (the simulator reads the pty on its own thread)."""
    return unit.vmc.wait_until(lambda: any(predicate(line) for line in list(unit.vmc.display_lines)), 2.0)


def back_in_service(unit, timeout=5.0) -> bool:
    return unit.wait_in_service(timeout) and unit.loop.state == State.IDLE


# --- the happy paths ----------------------------------------------------------------------
def test_hand_first_purchase_is_charged_once_after_the_vend(unit):
    purchase, customer = buy(unit, 1)
    assert purchase.outcome == "vended" and purchase.charged
    assert purchase.employee_id == "E1" and purchase.item == "A2" and purchase.price_cents == 150
    assert customer.vmc_customer.outcome == "vended"
    assert purchase.trigger_to_board_ms is not None and purchase.trigger_to_board_ms < 1000
    assert displayed(unit, lambda line: line.startswith("Hi Ada"))
    assert charges_match_vends(unit)
    assert journal_summary(unit.journal, 0)["charged_cents"] == 150
    assert unit.journal.open_approvals() == []


def test_selection_first_purchase(unit):
    purchase, customer = buy(unit, 1, selection=(90, "B1"), order="selection_first")
    assert purchase.order == "selection_first" and purchase.outcome == "vended"
    assert customer.vmc_customer.outcome == "vended"
    assert purchase.trigger_to_board_ms is not None
    assert charges_match_vends(unit)


def test_ambiguous_match_asks_for_a_second_presentation(unit):
    purchase, _ = buy(unit, None, images=[hand(AMBIGUOUS), hand(1)])
    assert purchase.attempts == 2 and purchase.outcome == "vended"
    assert charges_match_vends(unit)


def test_refused_hand_gets_a_hint_then_succeeds(unit):
    purchase, _ = buy(unit, None, images=[hand(NO_HAND), hand(1)])
    assert purchase.outcome == "vended" and purchase.attempts == 2
    assert displayed(unit, lambda line: line == "Hold your hand flat over reader")


# --- refusals -----------------------------------------------------------------------------------
def test_unknown_hand_is_refused_without_a_session(unit):
    purchase, customer = buy(unit, UNKNOWN)
    assert purchase.outcome == "unknown" and customer.vmc_customer is None
    assert displayed(unit, lambda line: line == "Hand not recognised")
    assert journal_summary(unit.journal, 0)["approved"] == 0
    assert back_in_service(unit)


def test_unknown_hand_at_a_selection_is_denied(unit):
    purchase, customer = buy(unit, UNKNOWN, order="selection_first")
    assert purchase.outcome == "unknown" and customer.vmc_customer.outcome == "denied"
    assert unit.vmc.vended == []


def test_insufficient_funds_is_refused_with_the_reason_on_the_display(unit):
    purchase, customer = buy(unit, 2, selection=(150, "A2"), order="selection_first")
    assert purchase.outcome == "refused" and purchase.reason == "insufficient_funds"
    assert customer.vmc_customer.outcome == "denied"
    assert displayed(unit, lambda line: "funds" in line.lower())
    assert charges_match_vends(unit)


def test_suspended_employee_is_not_served(unit):
    purchase, customer = buy(unit, 3)  # recognised as themself, then refused with the reason shown
    assert purchase.outcome == "refused" and purchase.reason == "suspended"
    assert customer.vmc_customer is None
    assert displayed(unit, lambda line: "suspended" in line.lower())
    assert unit.vmc.vended == []


def test_cooldown_after_repeated_failures(tmp_path):
    cfg = make_cfg(tmp_path, abuse={"max_failures": 2, "window_s": 60.0, "cooldown_s": 30.0})
    provision_bundle(cfg, EMPLOYEES, {"E1": bytes([1, 1])})
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        assert unit.wait_in_service()
        assert buy(unit, UNKNOWN)[0].outcome == "unknown"
        assert buy(unit, UNKNOWN)[0].outcome == "unknown"
        purchase, _ = buy(unit, 1)
        assert purchase.outcome == "cooldown"
        assert unit.panel.last_outcome in ("cooldown", "ready")
        assert unit.vmc.vended == []
    assert unit.error is None


# --- every fault of the simulator -------------------------------------------------------------------
def test_jam_voids_and_charges_nothing(unit):
    purchase, customer = buy(unit, 1, behaviour="jam")
    assert purchase.outcome == "failed" and customer.vmc_customer.outcome == "failed"
    assert journal_summary(unit.journal, 0)["voided"] == {"failed": 1}
    assert charges_match_vends(unit) and back_in_service(unit)
    assert buy(unit, 1)[0].outcome == "vended"
    assert charges_match_vends(unit)


@pytest.mark.parametrize("order", ["hand_first", "selection_first"])
def test_cancel_voids_and_charges_nothing(unit, order):
    purchase, customer = buy(unit, 1, behaviour="cancel", order=order)
    assert purchase.outcome == "cancelled" and customer.vmc_customer.outcome == "cancelled"
    assert unit.vmc.vended == [] and charges_match_vends(unit)
    assert back_in_service(unit)


def test_slow_machine_still_vends_and_charges(unit):
    purchase, customer = buy(unit, 1, behaviour="slow")
    assert purchase.outcome == "vended" and customer.vmc_customer.outcome == "vended"
    assert charges_match_vends(unit)


def test_garbage_on_the_line_is_ignored(unit):
    unit.vmc.send_garbage()
    time.sleep(0.1)
    assert buy(unit, 1)[0].outcome == "vended"
    unit.vmc.send_garbage()
    assert buy(unit, 1, order="selection_first")[0].outcome == "vended"
    assert charges_match_vends(unit) and back_in_service(unit)


def test_disconnect_while_idle_reconnects(unit):
    unit.vmc.disconnect(down_s=0.3)
    assert unit.vmc.wait_until(lambda: unit.vmc.connections == 2, 8.0), "the unit never reconnected"
    assert back_in_service(unit, timeout=8.0), unit.loop.faults
    assert buy(unit, 1)[0].outcome == "vended"
    assert charges_match_vends(unit)


def test_disconnect_during_the_vend_is_never_charged_on_a_guess(unit):
    unit.vmc.slow_s = 0.4  # the vend takes 0.8 s: time to cut the line after the approval

    def cut_after_approval(outcome):
        if outcome == "approved":
            unit.vmc.wait_until(lambda: unit.vmc.reader_state == "vending", 3.0)
            unit.vmc.disconnect(down_s=0.2)

    customer = Customer(unit, [hand(1)], (150, "A2"), "slow", "hand_first")
    original = customer.on_panel

    def on_panel(outcome):
        original(outcome)
        if outcome == "approved":
            import threading

            threading.Thread(target=cut_after_approval, args=(outcome,), daemon=True).start()

    customer.on_panel = on_panel
    purchase = customer.run(timeout=8.0)
    assert purchase is not None
    assert purchase.outcome in ("outcome_unknown", "outcome_pending")
    assert back_in_service(unit, timeout=8.0), unit.loop.faults
    if purchase.outcome == "outcome_pending":  # settled once the link was back: the board said nothing more
        settled = unit.next_purchase(timeout=5.0)
        assert settled is not None and settled.outcome == "outcome_unknown"
    assert unit.journal.open_approvals() == []
    summary = journal_summary(unit.journal, 0)
    assert summary["charged"] == 0  # dropped (success line lost) but not charged on a guess: held for review
    assert summary["outcome_unknown"] == 1 and len(unit.journal.unknown_outcomes()) == 1
    assert [v.reported for v in unit.vmc.vended] == [False]
    assert buy(unit, 1)[0].outcome == "vended"


# --- out of service -----------------------------------------------------------------------------------
def test_camera_fault_takes_the_unit_out_of_service_and_back(unit):
    unit.camera.fail("camera unplugged")
    unit.camera.present(hand(1))
    unit.panel.present_hand()
    deadline = time.monotonic() + 3
    while "camera" not in unit.loop.faults and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "camera" in unit.loop.faults
    assert unit.next_purchase(3.0).outcome == "interrupted"
    assert unit.vmc.wait_until(lambda: unit.vmc.reader_state == "off", 3.0)  # the machine shows it
    assert unit.panel.last_outcome == "out_of_service"
    unit.camera.repair()
    assert back_in_service(unit, timeout=8.0)
    unit.camera.clear()
    assert buy(unit, 1)[0].outcome == "vended"


def test_stale_bundle_takes_the_unit_out_of_service(tmp_path):
    cfg = make_cfg(tmp_path, accounts={"max_offline_age_h": 1.0 / 3600})  # one second
    provision_bundle(cfg, EMPLOYEES, {"E1": bytes([1, 1])}, policy={})
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        assert unit.vmc.wait_until(lambda: "accounts" in unit.loop.faults, 5.0)
        assert unit.vmc.wait_until(lambda: unit.vmc.reader_state == "off", 3.0)
        provision_bundle(cfg, EMPLOYEES, {"E1": bytes([1, 1])}, policy={"max_offline_age_h": 1.0})
        assert back_in_service(unit, timeout=5.0)
    assert unit.error is None


class UnwritableJournal:
    """The real journal, except that approvals fail as on a full or read-only disk."""

    def __init__(self, journal):
        self._journal = journal

    def __getattr__(self, name):
        return getattr(self._journal, name)

    def approve(self, *args, **kwargs):
        raise JournalError("disk full")


def test_unwritable_journal_denies_the_vend_and_goes_out_of_service(unit):
    unit.loop.journal = UnwritableJournal(unit.journal)
    purchase, customer = buy(unit, 1, order="selection_first")
    assert purchase.outcome == "interrupted" and not purchase.charged
    assert customer.vmc_customer.outcome == "denied"
    assert unit.vmc.wait_until(lambda: "journal" in unit.loop.faults or unit.vmc.reader_state == "off", 3.0)
    assert journal_summary(unit.journal, 0)["voided"] == {"interrupted": 1}
    unit.loop.journal = unit.journal  # the disk has room again: the probe clears the fault
    assert back_in_service(unit, timeout=10.0)


# --- recovery and systemd ---------------------------------------------------------------------------------
def test_open_approval_from_a_power_cut_is_marked_outcome_unknown(cfg):
    from vendor_node.money.journal import Journal

    with Journal.open(cfg.state_dir) as journal:
        session = journal.begin_session()
        journal.approve(session, "E1", "A1", 120)
        cut_before_approval = journal.begin_session()
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        assert unit.wait_in_service(8.0)
        assert unit.journal.open_approvals() == []
        assert [a.session_id for a in unit.journal.unknown_outcomes()] == [session]
        assert unit.journal.open_unapproved_sessions() == []
        assert cut_before_approval not in [a.session_id for a in unit.journal.unknown_outcomes()]
        assert journal_summary(unit.journal, 0)["charged"] == 0
    assert unit.error is None


def test_sd_notify_messages_over_a_datagram_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(1.0)
    notifier = Notifier(address=path, watchdog_usec="3000000")
    notifier.ready("in service")
    notifier.watchdog()
    notifier.watchdog()  # rate-limited: one ping per third of WatchdogSec
    notifier.stopping()
    got = [server.recv(1024).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=in service", "WATCHDOG=1", "STOPPING=1"]
    server.close()
    notifier.close()
    assert Notifier(address="").notify("READY=1") is False  # outside systemd: silent


def test_no_camera_image_is_kept_unless_turned_on(unit, cfg):
    buy(unit, 1)
    assert not (cfg.state_dir / "debug").exists()


def test_vendor_node_run_sim_talks_to_systemd_and_stops_on_sigterm(tmp_path):
    import os
    import random
    import signal
    import subprocess
    import sys

    from vendor_node.hand.recognition import Recognizer
    from vendor_node.sim.provision import choose_people, provision

    cfg = make_cfg(tmp_path)  # the real recognizer, employees enrolled from drawn hands
    provision(cfg, choose_people(random.Random(1), None, employees=2, strangers=0), Recognizer.from_config(cfg),
              random.Random(1))
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="3000000")
    env.pop("VENDOR_NODE_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "vendor_node.cli", "run", "--sim", "--state-dir",
                             str(cfg.state_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages = [server.recv(1024).decode()]
        while not messages[-1].startswith("READY=1"):
            assert messages[-1].startswith("STATUS="), messages
            messages.append(server.recv(1024).decode())
        assert messages[-1].startswith("READY=1\nSTATUS=in service")
        got = set()
        while "WATCHDOG=1" not in got:
            got.add(server.recv(1024).decode())
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got.add(server.recv(1024).decode())
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "unit stopped" in err
    assert "gallery loaded: 2 templates" in err
    server.close()


def test_an_unreadable_template_leaves_only_that_employee_out(cfg):
    from vendor_node.errors import RecognitionError

    def strict_gallery(templates):
        if any(t[1] == 2 for t in templates.values()):
            raise RecognitionError("template of E2 is truncated")
        return marker_gallery(templates)

    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=strict_gallery) as unit:
        assert unit.wait_in_service()
        assert buy(unit, 1)[0].outcome == "vended"
        assert buy(unit, 2)[0].outcome == "unknown"
    assert unit.error is None


def test_debug_images_only_when_turned_on_and_capped(tmp_path):
    cfg = make_cfg(tmp_path, recognition={"keep_debug_images": True})
    provision_bundle(cfg, EMPLOYEES, {"E1": bytes([1, 1])})
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                 loop_options={"debug_images_max": 2}) as unit:
        assert unit.wait_in_service()
        for _ in range(3):
            assert buy(unit, 1)[0].outcome == "vended"
    kept = sorted((cfg.state_dir / "debug").iterdir())
    assert len(kept) == 2 and all(p.suffix == ".png" for p in kept)


def test_adapter_missing_at_boot_keeps_the_unit_out_of_service_until_it_appears(cfg, tmp_path):
    import threading

    from vendor_node.money.accounts import AccountStore
    from vendor_node.money.authorize import AbuseGuard
    from vendor_node.devices.camera import SimCamera
    from vendor_node.money.journal import Journal
    from vendor_node.devices.panel import open_panel
    from vendor_node.unit.service import PurchaseLoop
    from vendor_node.money.storage import open_db
    from vendor_node.unit.assemble import open_board
    from vendor_node.sim.vmc_sim import VendingMachineSimulator

    machine = VendingMachineSimulator(link_dir=tmp_path / "dev", **VMC_FAST)
    (tmp_path / "dev").mkdir()
    stop = threading.Event()
    conn = open_db(cfg.state_dir)
    journal = Journal(conn)
    with open_panel(cfg) as panel, open_board(cfg, port=machine.port_path, stop_event=stop) as board:
        loop = PurchaseLoop(cfg, camera=SimCamera(), panel=panel, board=board, recognizer=MarkerRecognizer(),
                            accounts=AccountStore(cfg, conn, journal), journal=journal, abuse=AbuseGuard(cfg),
                            stop_event=stop, gallery_factory=marker_gallery, fault_retry_s=0.3)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        try:
            assert machine.wait_until(lambda: "board" in loop.faults, 3.0)
            assert panel.last_outcome == "out_of_service"
            machine.start()  # the adapter is plugged in
            assert machine.wait_until(lambda: not loop.faults and machine.reader_state == "enabled", 15.0), loop.faults
        finally:
            stop.set()
            thread.join(timeout=10)
            machine.stop()
    conn.close()
    assert not thread.is_alive()


def test_slow_adapter_answers_within_the_reply_timeout(cfg):
    options = dict(VMC_FAST, reply_delay_s=0.2)  # every answer of the adapter comes 200 ms late
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=options, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        assert unit.wait_in_service(5.0)
        purchase, customer = buy(unit, 1)
        assert purchase.outcome == "vended" and customer.vmc_customer.outcome == "vended"
        assert purchase.trigger_to_board_ms >= 200  # the session's answer was late, and it is measured
        assert buy(unit, 1, order="selection_first")[0].outcome == "vended"
        assert charges_match_vends(unit) and back_in_service(unit)
    assert unit.error is None


def test_a_hand_refused_every_time_gives_one_purchase_and_no_phantom(unit):
    purchase, _ = buy(unit, None, images=[hand(NO_HAND)])  # the customer keeps showing an unusable hand
    assert purchase.outcome == "rejected" and purchase.attempts == 2
    assert displayed(unit, lambda line: line == "Hold your hand flat over reader")
    assert unit.next_purchase(timeout=0.5) is None  # nothing left behind starts a purchase of its own
    assert buy(unit, 1)[0].outcome == "vended"


# --- faults found in review: each must leave the unit serving and the money right ------------------
def test_an_unpriced_item_is_refused_not_a_crash(unit):
    unit.vmc.send_raw(b"c,STATUS,VEND,0.00,Z9\n")  # a selection with no price set on the machine
    time.sleep(0.3)
    unit.camera.clear()
    unit.camera.present(hand(1))
    unit.panel.present_hand()
    unit.panel.remove_hand()
    purchase = unit.next_purchase(5.0)
    assert purchase is not None and purchase.outcome == "refused" and purchase.reason == "unpriced_item"
    assert unit.error is None and unit.vmc.vended == []
    assert displayed(unit, lambda line: "not priced" in line.lower())
    purchase, _ = buy(unit, 1)  # still in service
    assert purchase.outcome == "vended" and charges_match_vends(unit)


def test_a_failing_last_used_update_never_disturbs_a_purchase(unit, monkeypatch):
    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(unit.accounts, "note_template_used", locked)
    for order in ("selection_first", "hand_first"):
        purchase, _ = buy(unit, 1, order=order)
        assert purchase.outcome == "vended"
    assert unit.error is None and charges_match_vends(unit)


def test_a_vend_success_after_the_outcome_timeout_still_charges(unit):
    unit.vmc.slow_s = 0.7  # the machine reports after 1.4 s; the unit waits 1.0 s, then marks it unknown
    purchase, _ = buy(unit, 1, behaviour="slow")
    assert purchase.outcome == "vended" and purchase.reason == "reported late"
    assert charges_match_vends(unit) and len(unit.vmc.vended) == 1  # the late success settled the review
    assert unit.journal.unknown_outcomes() == []
    assert journal_summary(unit.journal, 0)["settled_after_review"] == 1


def test_a_journal_error_during_start_up_recovery_is_out_of_service_not_a_crash(cfg, monkeypatch):
    from vendor_node.money.journal import Journal

    real = Journal.void_interrupted_sessions
    failing = {"on": True}

    def void_interrupted(self):
        if failing["on"]:
            raise JournalError("disk I/O error")
        return real(self)

    monkeypatch.setattr(Journal, "void_interrupted_sessions", void_interrupted)
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery,
                 loop_options=FAST_RETRY) as unit:
        deadline = time.monotonic() + 3.0
        while "journal" not in unit.loop.faults and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "journal" in unit.loop.faults and unit.error is None
        failing["on"] = False  # the disk has room again: recovery runs, the unit comes back
        assert unit.wait_in_service(5.0)
        purchase, _ = buy(unit, 1)
        assert purchase.outcome == "vended" and charges_match_vends(unit)
