"""A hung loop is caught within WatchdogSec (10 s); a loop that is only waiting, or reconnecting its board, is not.

The pings are recorded with the thread that sent them and when, so "systemd would kill it" is a
computation on the shipped WatchdogSec, not a wait: the loop thread blocked in a hung call is the
only thread that ever pings, so its last ping before the hang bounds when systemd restarts it.
Every wait here is on an event or a condition, never a fixed sleep.
"""
from __future__ import annotations

import configparser
import logging
import threading
import time
from pathlib import Path

import pytest

from test_service import EMPLOYEES, MarkerRecognizer, make_cfg, marker_gallery
from vendor_node.devices.notify import Notifier
from vendor_node.errors import BoardLinkError
from vendor_node.sim.provision import provision_bundle
from vendor_node.unit import health
from vendor_node.unit.watchdog import iteration_limit_s, unsafe_waits

SERVICE = Path(__file__).resolve().parents[1] / "systemd" / "vendor-node.service"


def shipped_watchdog_s() -> float:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(SERVICE.read_text(encoding="utf-8"))
    return float(parser["Service"]["WatchdogSec"])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class RecordingNotifier(Notifier):
    """A Notifier that records what it would send: (monotonic time, sending thread's name, message)."""

    def __init__(self, watchdog_usec: str, clock=time.monotonic):
        super().__init__(address="", watchdog_usec=watchdog_usec, clock=clock)
        self.sent: list[tuple[float, int, str]] = []
        self.changed = threading.Condition()

    def notify(self, message: str) -> bool:
        with self.changed:
            self.sent.append((self._clock(), threading.current_thread().name, message))
            self.changed.notify_all()
        return True

    def pings(self):
        with self.changed:
            return [(t, thread) for t, thread, message in self.sent if message == "WATCHDOG=1"]

    def wait_until(self, predicate, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


# --- the notifier: progress only, and only within a step's limit -----------------------------------
def test_the_service_catches_a_hang_within_10_s():
    assert shipped_watchdog_s() == 10


def test_pings_start_at_ready_and_come_at_most_every_tenth_of_watchdogsec():
    clock = Clock()
    notifier = RecordingNotifier("10000000", clock)
    notifier.watchdog()
    assert notifier.pings() == []  # start-up is TimeoutStartSec's; the watchdog is armed by READY=1
    notifier.ready("in service")
    for now in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0):
        clock.now = now
        notifier.watchdog()
    assert [t for t, _ in notifier.pings()] == [0.0, 1.0, 2.0]


def test_a_step_that_keeps_returning_but_overruns_its_limit_stops_the_pings(caplog):
    clock = Clock()
    notifier = RecordingNotifier("10000000", clock)
    notifier.ready("in service")
    with caplog.at_level(logging.ERROR, logger="vendor_node.unit"):
        with notifier.bounded("a loop iteration", 30.0):
            for second in range(0, 60):  # a wait loop that lost its way: its inner pings go on and on
                clock.now = float(second)
                notifier.watchdog()
        assert max(t for t, _ in notifier.pings()) == 30.0  # systemd restarts it 10 s later
        assert caplog.text.count("a loop iteration is still running after 30 s") == 1
        clock.now = 61.0
        notifier.watchdog()  # the step ended: a completed iteration is progress again
    assert notifier.pings()[-1][0] == 61.0


def test_the_configured_waits_fit_under_the_shipped_watchdog_and_a_long_one_is_named(caplog):
    from vendor_node.config import Config
    from vendor_node.unit.watchdog import warn_unsafe_waits

    watchdog_s = shipped_watchdog_s()
    assert unsafe_waits(Config(), watchdog_s) == []
    slow = Config().replace(camera={"frame_timeout_s": 9.0}, board={"reply_timeout_s": 7.5})
    named = unsafe_waits(slow, watchdog_s)
    assert [line.split(" = ")[0] for line in named] == ["camera.frame_timeout_s", "board.reply_timeout_s"]
    assert "keep it under 7 s with WatchdogSec=10" in named[0]
    with caplog.at_level(logging.ERROR, logger="vendor_node.unit"):
        warn_unsafe_waits(slow, watchdog_s)  # what `vendor-node run` logs at start under systemd
    assert "camera.frame_timeout_s = 9 s" in caplog.text and "restarted as if it hung" in caplog.text
    assert warn_unsafe_waits(slow, None) == []  # outside systemd there is no watchdog to trip
    cfg = Config()  # a whole purchase with every wait at its maximum fits in an iteration's limit
    board = cfg.board
    purchase = (2 * (board.hand_wait_s + cfg.camera.frame_timeout_s) + board.start_attempts
                * (board.reply_timeout_s + board.start_retry_s) + board.selection_timeout_s
                + board.vend_outcome_timeout_s)
    assert iteration_limit_s(cfg) > 2 * purchase


# --- the loop: reconnecting is alive, a hung call is not ------------------------------------------------
@pytest.fixture
def cfg(tmp_path):
    cfg = make_cfg(tmp_path)
    provision_bundle(cfg, EMPLOYEES, {"E1": bytes([1, 1]), "E2": bytes([1, 2]), "E3": bytes([1, 3])})
    return cfg


class Loop:
    """A PurchaseLoop on a board link whose port opens through ``reopen_transport``, run on its own thread."""

    def __init__(self, cfg, reopen_transport, notifier):
        from vendor_node.devices.board import BoardLink, board_link_options
        from vendor_node.devices.camera import SimCamera
        from vendor_node.devices.panel import open_panel
        from vendor_node.money.accounts import AccountStore
        from vendor_node.money.authorize import AbuseGuard
        from vendor_node.money.journal import Journal
        from vendor_node.money.storage import open_db
        from vendor_node.unit.service import PurchaseLoop

        self.stop = threading.Event()
        self.conn = open_db(cfg.state_dir)
        journal = Journal(self.conn)
        self.panel = open_panel(cfg)
        self.board = BoardLink(None, reopen_transport=reopen_transport, **board_link_options(cfg.board))
        self.loop = PurchaseLoop(cfg, camera=SimCamera(), panel=self.panel, board=self.board,
                                 recognizer=MarkerRecognizer(), accounts=AccountStore(cfg, self.conn, journal),
                                 journal=journal, abuse=AbuseGuard(cfg), stop_event=self.stop, notifier=notifier,
                                 gallery_factory=marker_gallery, fault_retry_s=0.3)
        self.thread = threading.Thread(target=self.loop.run, name="unit-loop", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)
        self.panel.close()
        self.conn.close()
        assert not self.thread.is_alive()


def missing_port():
    raise BoardLinkError("/dev/vendor-mdb: no such file (the adapter is unplugged)")


def test_a_board_that_keeps_reconnecting_stays_out_of_service_and_is_never_killed(cfg, monkeypatch):
    """Reopen windows longer than WatchdogSec (scaled: 3 s windows, WatchdogSec = 2 s): the attempts and
    backoff waits inside a window are progress, so the pings never stop while the adapter is away."""
    monkeypatch.setattr(health, "RECONNECT_WINDOW_S", 3.0)
    notifier = RecordingNotifier("2000000")
    windows = threading.Semaphore(0)
    with Loop(cfg, missing_port, notifier) as unit:
        reopen = unit.board.reopen

        def counted_reopen(**kwargs):
            try:
                return reopen(**kwargs)
            finally:
                windows.release()

        unit.board.reopen = counted_reopen
        for _ in range(3):  # three whole reconnect windows, each longer than WatchdogSec
            assert windows.acquire(timeout=30)
        pings = [t for t, _ in notifier.pings()]
        assert "board" in unit.loop.faults and unit.panel.last_outcome == "out_of_service"
        assert unit.loop._reader_on is False
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 3 and max(gaps) < notifier.watchdog_s, max(gaps)  # systemd never fires


def test_a_hung_reconnect_is_not_pinged_so_systemd_restarts_it_within_10_s(cfg):
    """The adapter's port open wedges (a USB-serial driver that never returns) on the 4th reopen attempt."""
    notifier = RecordingNotifier("10000000")
    attempts, entered, release = [], threading.Event(), threading.Event()
    hung_at = []

    def wedging_port():
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            missing_port()
        hung_at.append(time.monotonic())
        entered.set()
        release.wait()
        missing_port()

    with Loop(cfg, wedging_port, notifier):
        assert entered.wait(30)
        pings = notifier.pings()
        assert pings, "the unit was not alive before the hang"
        assert {thread for _, thread in pings} == {"unit-loop"}  # nothing else keeps it alive
        last_ping = pings[-1][0]
        assert last_ping <= hung_at[0]
        assert last_ping + shipped_watchdog_s() <= hung_at[0] + 10.0  # systemd's restart, at the latest
        assert not release.is_set() and len(notifier.pings()) == len(pings)  # still hung: still silent
        release.set()  # the call returns after all: the loop goes on, and so do the pings
        assert notifier.wait_until(lambda: notifier.pings()[-1][0] > hung_at[0], 30)


class HangingCamera:
    """A camera whose capture never returns (a wedged CSI driver) until the test lets it go."""

    def __init__(self):
        self.entered, self.release, self.hung_at = threading.Event(), threading.Event(), None

    def capture(self, timeout=None):
        self.hung_at = time.monotonic()
        self.entered.set()
        self.release.wait()
        from vendor_node.errors import CameraError

        raise CameraError("released")

    def present(self, image):
        pass

    def clear(self):
        pass

    def check(self):
        pass

    def close(self):
        self.release.set()


def test_a_hung_camera_is_not_pinged_so_systemd_restarts_it_within_10_s(cfg):
    from test_service import FAST_RETRY, VMC_FAST
    from vendor_node.sim.simulate import SimUnit

    camera, notifier = HangingCamera(), RecordingNotifier("10000000")
    with SimUnit(cfg, MarkerRecognizer(), vmc_options=VMC_FAST, gallery_factory=marker_gallery, camera=camera,
                 loop_options={"notifier": notifier, **FAST_RETRY}) as unit:
        assert unit.wait_in_service()
        assert notifier.wait_until(lambda: len(notifier.pings()) >= 2, 30)  # idle: iterations complete, pings
        unit.panel.present_hand()  # the loop now blocks inside capture() until released
        assert camera.entered.wait(30)
        pings = notifier.pings()
        assert {thread for _, thread in pings} == {"unit-loop"}  # SimUnit's loop thread, and only it
        assert pings[-1][0] <= camera.hung_at and pings[-1][0] + shipped_watchdog_s() <= camera.hung_at + 10.0
        assert not camera.release.is_set() and len(notifier.pings()) == len(pings)  # still hung: still silent
        camera.release.set()  # released: the error is handled and the loop goes on pinging
        assert notifier.wait_until(lambda: notifier.pings()[-1][0] > camera.hung_at, 30)
