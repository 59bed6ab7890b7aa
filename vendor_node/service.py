"""The purchase loop: an explicit state machine from the IR sensor to the charge.

States: IDLE -> HAND_SEEN -> IDENTIFY -> AUTHORIZE -> SESSION -> OUTCOME -> IDLE.
Every wait has a timeout; one ``threading.Event`` stops the unit. Both MDB
orders are served: hand first (start a session with the funds the employee may
spend, then approve the selected price) and selection first (the machine asks,
the unit waits ``board.hand_wait_s`` for a hand). The approval is journaled
durably before the board hears it; only ``VendSucceeded`` charges.

Errors are handled by class (errors.py): a lost board link is reopened with
backoff, a camera fault or an unwritable journal puts the unit out of service
(reader disabled, so the machine shows it) until a retry clears it, a refused
hand gets a hint. Anything else propagates so the process exits non-zero and
systemd restarts it. ``WATCHDOG=1`` is sent only when a loop iteration completes,
(or a bounded wait inside one returns), so a camera or serial call that hangs
leads to a restart.
"""
from __future__ import annotations

import enum
import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .board import (AdapterReset, CommandRefused, LinkRestored, ReaderDisabled, SessionCancelled,
                    SessionComplete, VendFailed, VendRequest, VendSucceeded)
from .errors import (BoardLinkError, CameraError, HandRejected, JournalError, ProtocolError,
                     RecognitionError, SensorError)

log = logging.getLogger("vendor_node.unit")

IDLE_SLICE_S = 0.01  # how long the idle loop waits on the sensor before a non-blocking board poll
STATUS_CHECK_S = 1.0  # bundle age, faults, gallery refresh
FAULT_RETRY_S = 5.0  # camera / journal retry while out of service
RECONNECT_WINDOW_S = 5.0  # one reopen attempt series of the board's port per loop iteration
FEEDBACK_HOLD_S = 2.0  # an outcome's LED colour stays this long before "ready"
SESSION_END_WAIT_S = 0.5  # after the outcome, let the machine close the session
DEBUG_IMAGES_MAX = 50
PURGE_EVERY_S = 24 * 3600.0

HAND_HINTS = {  # <= 32 characters: the machine's display
    "no_hand": "Hold your hand flat over reader",
    "two_hands": "One hand only, please",
    "fingers_closed": "Spread your fingers a little",
    "cut_off": "Move your hand to the centre",
    "blurred": "Hold your hand still",
    "too_far": "Bring your hand a bit closer",
    "too_close": "Move your hand a bit away",
    "bad_image": "Hold your hand flat over reader",
}


class State(enum.Enum):
    IDLE = "idle"
    HAND_SEEN = "hand_seen"
    IDENTIFY = "identify"
    AUTHORIZE = "authorize"
    SESSION = "session"
    OUTCOME = "outcome"


def money(cents: int | None) -> str:
    return "-" if cents is None else f"{cents // 100}.{cents % 100:02d}"


@dataclass
class Purchase:
    """One customer's attempt; becomes one log line (no image, no template, no score)."""

    order: str  # "hand_first" | "selection_first"
    trigger_at: float | None = None
    employee_id: str | None = None
    display_name: str = ""
    session_id: str | None = None
    item: str | None = None
    price_cents: int | None = None
    approved: bool = False
    outcome: str = "abandoned"  # vended, failed, cancelled, timeout, refused, unknown, rejected, no_hand,
    reason: str = ""  #            busy, cooldown, outcome_unknown, out_of_service, interrupted
    attempts: int = 0
    trigger_to_board_ms: float | None = None  # IR trigger -> the approval written to the board
    request_to_approval_ms: float | None = None  # vend request -> approve_vend
    trigger_to_approve_vend_ms: float | None = None  # hand first: includes the customer choosing a snack
    started: float = field(default_factory=time.monotonic)
    charged: bool = False
    stages: dict = field(default_factory=dict)  # ms per step so far
    board_stages: dict = field(default_factory=dict)  # ... of the path trigger->board (for the Pi's budget)

    def timed(self, stage: str, since: float) -> float:
        """Add the time since ``since`` to ``stage``; returns now (monotonic) for the next stage."""
        now = time.monotonic()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - since) * 1000
        return now

    def line(self) -> str:
        shown_reason = self.reason if self.reason and self.reason != self.outcome else ""
        parts = [f"purchase {self.outcome}" + (f" ({shown_reason})" if shown_reason else ""),
                 self.order.replace("_", "-")]
        if self.employee_id:
            parts.append(f"employee {self.employee_id}")
        if self.item is not None:
            parts.append(f"item {self.item} {money(self.price_cents)}")
        if self.trigger_to_board_ms is not None:
            steps = " ".join(f"{name} {ms:.0f}" for name, ms in self.board_stages.items())
            parts.append(f"trigger->board {self.trigger_to_board_ms:.0f} ms" + (f" [{steps}]" if steps else ""))
        if self.request_to_approval_ms is not None:
            parts.append(f"request->approval {self.request_to_approval_ms:.0f} ms")
        if self.attempts > 1:
            parts.append(f"{self.attempts} presentations")
        parts.append(f"total {time.monotonic() - self.started:.1f} s")
        if self.session_id:
            parts.append(f"session {self.session_id[:8]}")
        return ", ".join(parts)


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a datagram socket), without a dependency; silent outside systemd."""

    def __init__(self, address: str | None = None, watchdog_usec: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 1e6 / 3 if usec.isdigit() and int(usec) > 0 else 1.0
        self._last_ping = float("-inf")

    def notify(self, message: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8"), self._address)
            return True
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Ping at most every third of WatchdogSec; called only when a loop iteration completed."""
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class PurchaseLoop:
    """The unit's purchase state machine over injected devices and stores.

    ``camera`` may be None when ``open_camera`` (a factory) is given: the unit then
    starts out of service and keeps trying. ``on_purchase(purchase)`` is called
    after each purchase (the simulator counts them).
    """

    def __init__(self, cfg, *, camera, panel, board, recognizer, accounts, journal, abuse,
                 stop_event: threading.Event, notifier: Notifier | None = None, on_purchase=None,
                 open_camera=None, gallery_factory=None, clock=time.monotonic, fault_retry_s: float = FAULT_RETRY_S,
                 debug_images_max: int = DEBUG_IMAGES_MAX):
        self.cfg = cfg
        self.camera, self.panel, self.board = camera, panel, board
        self.recognizer, self.accounts, self.journal, self.abuse = recognizer, accounts, journal, abuse
        self.stop_event = stop_event
        self.notifier = notifier or Notifier(address="")
        self.on_purchase = on_purchase
        self._open_camera = open_camera
        self._gallery_factory = gallery_factory or default_gallery
        self.clock = clock
        self.fault_retry_s = fault_retry_s
        self.debug_images_max = debug_images_max
        self.state = State.IDLE
        self.faults: dict[str, str] = {}  # cause ("camera", "journal", "accounts", "board") -> message
        if camera is None:
            self.faults["camera"] = "camera not opened yet"
        self._reader_on: bool | None = None
        self._unsettled: Purchase | None = None  # approved, link lost before the outcome
        self._recovery_pending = False
        self._next_status_check = 0.0
        self._next_fault_retry = 0.0
        self._next_purge = 0.0
        self._ready_at: float | None = None
        self._gallery = None
        self._gallery_key = None
        self.counts: Counter = Counter()
        self.purchases = 0

    # --- lifecycle --------------------------------------------------------------------
    def run(self) -> int:
        """Serve until the stop event is set; unexpected errors propagate (exit non-zero)."""
        try:
            self.start()
            while not self.stop_event.is_set():
                self.run_once()
        except Exception:
            log.exception("unexpected error: exiting non-zero so systemd restarts the unit")
            raise
        finally:
            self.shutdown()
        return 0

    def start(self) -> None:
        try:
            self.recover()
        except BoardLinkError as exc:  # no board to hear from yet: recover once the link is back
            log.error("board link: %s (recovery waits for it)", exc)
            self.faults["board"] = str(exc)
            self._recovery_pending = True
        self._check_service(force=True)
        self.notifier.ready(self._status_text())
        log.info("unit %s started: %s", self.cfg.unit.unit_id, self._status_text())

    def shutdown(self) -> None:
        self.notifier.stopping()
        try:
            self.board.disable_reader()  # the machine must not offer a payment nobody serves
        except Exception as exc:  # shutting down: report, never mask the original error
            log.warning("could not disable the reader on shutdown: %s", exc)
        log.info("unit stopped after %d purchases", self.purchases)

    def run_once(self) -> None:
        """One loop iteration, its errors handled by class; pings the watchdog when it completes."""
        try:
            self.step()
        except BoardLinkError as exc:
            self._on_board_lost(exc)
        except CameraError as exc:
            self._fault("camera", str(exc))
        except JournalError as exc:
            self._fault("journal", str(exc))
        except HandRejected as exc:  # handled inside IDENTIFY; here only if a flow let one through
            self._feedback("refused", HAND_HINTS.get(exc.reason, "Hold your hand flat over reader"))
        except (SensorError, ProtocolError) as exc:
            log.warning("%s: %s", type(exc).__name__, exc)
        self.state = State.IDLE
        self.notifier.watchdog()

    # --- the idle state -------------------------------------------------------------------
    def step(self) -> None:
        now = self.clock()
        if now >= self._next_status_check:
            self._check_service()
        if self._ready_at is not None and now >= self._ready_at and not self.faults:
            self._ready_at = None
            self.panel.show("ready")
        if self.faults:
            self.panel.discard_hand()
            if "board" in self.faults:
                self._reopen_board()
                return
            event = self.board.poll(IDLE_SLICE_S * 10)
            if event is not None:
                self._idle_event(event)
            return
        trigger = self.panel.wait_for_hand(IDLE_SLICE_S)
        if trigger is not None:
            self._serve(Purchase("hand_first", trigger_at=trigger), self._hand_first)
            return
        event = self.board.poll(0)
        if event is not None:
            self._idle_event(event)

    def _idle_event(self, event) -> None:
        if isinstance(event, VendRequest):
            if self.faults:
                self.board.deny_vend()
                log.info("vend request for %s refused: out of service", event.item)
                return
            self._serve(Purchase("selection_first", item=event.item, price_cents=event.price_cents),
                        lambda p: self._selection_first(p, event))
        elif isinstance(event, VendSucceeded):
            log.warning("the board reported a vend success with no approval open: nothing charged")
        elif isinstance(event, ReaderDisabled) and self._reader_on:
            log.debug("the machine disabled the reader (%s); it enables it again when ready", event.state)
        else:
            log.debug("board event while idle: %s", event)

    # --- hand first -----------------------------------------------------------------------
    def _hand_first(self, p: Purchase) -> None:
        if not self._cooled_down(p):
            return
        self.state = State.HAND_SEEN
        self.panel.show("working")
        match = self._identify(p)
        if match is None:
            return
        self.state = State.AUTHORIZE
        t = time.monotonic()
        auth = self.accounts.spendable_cents(match.employee_id)
        t = p.timed("accounts", t)
        p.display_name = auth.display_name
        if not auth.approved:
            self._refuse(p, auth)
            return
        self._drain_board()  # reader status lines from before this customer must not end their session
        started = self.board.start_session(auth.funds_left_cents)
        p.timed("board", t)
        if not started:
            p.outcome, p.reason = "busy", "machine refused a session"
            self._feedback("refused", "Machine busy, try again")
            return
        p.trigger_to_board_ms = (self.clock() - p.trigger_at) * 1000
        p.board_stages = dict(p.stages)
        p.session_id = self.journal.begin_session()
        self.accounts.note_template_used(p.employee_id)
        self._feedback("approved", f"Hi {first_name(p.display_name)} {money(auth.funds_left_cents)} avail.")
        self.state = State.SESSION
        event = self._wait_for((VendRequest, SessionCancelled, SessionComplete, AdapterReset, LinkRestored),
                               self.cfg.board.selection_timeout_s)
        if isinstance(event, VendRequest):
            self._vend(p, event)
            return
        if event is None:
            self.board.end_session()
            p.outcome, p.reason = "timeout", "no selection"
            self.journal.void(p.session_id, "timeout")
        else:
            p.outcome = "cancelled"
            self.journal.void(p.session_id, "cancelled")
        self._feedback("refused", "Session ended - not charged")

    # --- selection first ----------------------------------------------------------------------
    def _selection_first(self, p: Purchase, request: VendRequest) -> None:
        if self.abuse.cooldown_left() > 0:
            self.board.deny_vend()
            self._cooled_down(p)
            return
        self.board.display(f"{money(request.price_cents)}: hold hand over reader")
        self.panel.show("retry")
        trigger, event = self._wait_for_hand(self.cfg.board.hand_wait_s)
        if trigger is None:
            if event is None:
                self.board.deny_vend()
            p.outcome = "no_hand" if event is None else "cancelled"
            self._feedback("refused", "No hand seen - not charged" if event is None else "Cancelled")
            return
        p.trigger_at = trigger
        self.state = State.HAND_SEEN
        self.panel.show("working")
        match = self._identify(p)
        if match is None:
            self.board.deny_vend()
            return
        p.session_id = self.journal.begin_session()
        self._vend(p, request)

    # --- shared steps ---------------------------------------------------------------------------
    def _identify(self, p: Purchase):
        """IDENTIFY, with a second presentation when unsure; the Match, or None with p's outcome set."""
        attempts = max(1, self.cfg.recognition.max_attempts)
        for attempt in range(1, attempts + 1):
            p.attempts = attempt
            if attempt > 1:
                trigger, event = self._wait_for_hand(self.cfg.board.hand_wait_s)
                if trigger is None:
                    break
                p.trigger_at = trigger
            self.state = State.IDENTIFY
            t = time.monotonic()
            frame = self.camera.capture(self.cfg.camera.frame_timeout_s)
            t = p.timed("capture", t)
            self._keep_debug_image(frame)
            try:
                features = self.recognizer.features(frame)
                t = p.timed("features", t)
            except HandRejected as exc:
                p.outcome, p.reason = "rejected", exc.reason
                log.info("hand refused (%s): %s", exc.reason, exc)
                if attempt < attempts:
                    self._feedback("retry", HAND_HINTS.get(exc.reason, "Hold your hand flat over reader"))
                continue
            match = self.recognizer.identify(features, self._gallery)
            p.timed("match", t)
            if match.reason == "match" and match.employee_id:
                p.employee_id = match.employee_id
                return match
            p.outcome, p.reason = "unknown", match.reason
            if match.reason != "ambiguous":
                break  # sure it is nobody we know: no second presentation
            if attempt < attempts:
                self._feedback("retry", "Please hold your hand again")
        self.abuse.record_failure()
        if p.outcome == "unknown":
            self._feedback("unknown", "Hand not recognised")
        else:
            self._feedback("refused", HAND_HINTS.get(p.reason, "Hand not recognised"))
        return None

    def _vend(self, p: Purchase, request: VendRequest) -> None:
        """AUTHORIZE the selected price, journal the approval durably, tell the board, await the outcome."""
        self.state = State.AUTHORIZE
        received = self.clock()
        p.item, p.price_cents = request.item, request.price_cents
        t = time.monotonic()
        auth = self.accounts.authorize(p.employee_id, request.price_cents)
        t = p.timed("accounts", t)
        p.display_name = auth.display_name or p.display_name
        if not auth.approved:
            self.board.deny_vend()
            self.journal.void(p.session_id, "refused")
            self._refuse(p, auth)
            return
        self.journal.approve(p.session_id, p.employee_id, request.item, request.price_cents)  # durable first
        t = p.timed("journal", t)
        p.approved = True
        self.board.approve_vend(request.price_cents)
        p.timed("board", t)
        now = self.clock()
        p.request_to_approval_ms = (now - received) * 1000
        p.trigger_to_approve_vend_ms = (now - p.trigger_at) * 1000
        if p.order == "selection_first":
            p.trigger_to_board_ms = (now - p.trigger_at) * 1000
            p.board_stages = dict(p.stages)
            self.accounts.note_template_used(p.employee_id)
            self.board.display(f"Hi {first_name(p.display_name)}, vending...")
        self.state = State.OUTCOME
        event = self._wait_for((VendSucceeded, VendFailed, SessionCancelled, SessionComplete, AdapterReset,
                                LinkRestored, CommandRefused), self.cfg.board.vend_outcome_timeout_s,
                               finish_even_if_stopping=True, accept=lambda e: not isinstance(e, CommandRefused)
                               or e.command == "VEND")
        self._record_outcome(p, event)
        self._wait_for((SessionComplete,), SESSION_END_WAIT_S)

    def _record_outcome(self, p: Purchase, event) -> None:
        if isinstance(event, VendSucceeded):
            self.journal.succeed(p.session_id)
            p.outcome, p.charged = "vended", True
            self.abuse.record_success()
            self._feedback("vended", f"Enjoy! Charged {money(p.price_cents)}")
        elif isinstance(event, VendFailed):
            self.journal.void(p.session_id, "failed")
            p.outcome, p.reason = "failed", event.code
            self._feedback("refused", "Vend failed - not charged")
        elif isinstance(event, SessionCancelled):
            self.journal.void(p.session_id, "cancelled")
            p.outcome = "cancelled"
            self._feedback("refused", "Cancelled - not charged")
        elif isinstance(event, CommandRefused):  # the machine refused the approval itself: nothing can drop
            self.journal.void(p.session_id, "cancelled")
            p.outcome, p.reason = "cancelled", f"machine refused the approval ({event.code})"
            self._feedback("refused", "Cancelled - not charged")
        elif isinstance(event, LinkRestored) or event is None or getattr(event, "interrupted", None):
            # No word whether the snack dropped: never guess a charge; held for a technician's review.
            self.journal.mark_outcome_unknown(p.session_id)
            p.outcome = "outcome_unknown"
            p.reason = "no vend outcome in time" if event is None else type(event).__name__
            self._feedback("refused", "Vend outcome unknown")
        else:  # the session closed with no vend after the approval (e.g. the machine reset before vending)
            self.journal.void(p.session_id, "cancelled")
            p.outcome, p.reason = "cancelled", type(event).__name__
            self._feedback("refused", "Cancelled - not charged")

    def _refuse(self, p: Purchase, auth) -> None:
        p.outcome, p.reason = "refused", auth.reason_code
        p.display_name = auth.display_name or p.display_name
        self.abuse.record_failure()
        self._feedback("refused", auth.message)

    def _cooled_down(self, p: Purchase) -> bool:
        left = self.abuse.cooldown_left()
        if left <= 0:
            return True
        p.outcome, p.reason = "cooldown", f"{math.ceil(left)} s left"
        self._feedback("cooldown", f"Please wait {math.ceil(left)} s")
        return False

    def _serve(self, p: Purchase, flow) -> None:
        """Run one purchase flow; whatever happens, the purchase is closed consistently and logged."""
        try:
            flow(p)
        except BaseException as exc:
            self._abandon(p, exc)
            raise
        finally:
            self._finish(p)

    def _abandon(self, p: Purchase, exc: BaseException) -> None:
        """An error cut the purchase short: close its journal session without ever guessing a charge."""
        p.outcome, p.reason = "interrupted", type(exc).__name__
        if not p.approved and getattr(self.board, "state", None) in ("session", "vend_requested"):
            try:  # let the machine end its session now rather than at its own timeout
                if self.board.state == "vend_requested":
                    self.board.deny_vend()
                else:
                    self.board.end_session()
            except BoardLinkError:
                pass
        if p.session_id is None:
            return
        try:
            if not p.approved:
                self.journal.void(p.session_id, "interrupted")
            elif isinstance(exc, BoardLinkError):
                p.outcome = "outcome_pending"
                self._unsettled = p  # the board may still report the outcome once the link is back
            else:
                self.journal.mark_outcome_unknown(p.session_id)
                p.outcome = "outcome_unknown"
        except JournalError as journal_exc:  # recovery at the next start settles it
            log.error("could not close session %s: %s", p.session_id[:8], journal_exc)

    def _finish(self, p: Purchase) -> None:
        self.panel.discard_hand()  # a hand lingering or moving during the purchase is not the next customer
        self.purchases += 1
        self.counts[p.outcome] += 1
        log.info(p.line())
        self._ready_at = self.clock() + FEEDBACK_HOLD_S
        self.state = State.IDLE
        self.notifier.status(self._status_text())
        if self.on_purchase is not None:
            self.on_purchase(p)

    def _feedback(self, outcome: str, text: str) -> None:
        """LED and buzzer, and the same words on the machine's display."""
        self.panel.show(outcome)
        try:
            self.board.display(text)
        except BoardLinkError as exc:
            log.warning("could not show %r on the machine: %s", text, exc)

    def _wait_for(self, kinds: tuple, timeout: float, finish_even_if_stopping: bool = False, accept=None):
        """The first board event of ``kinds`` (and ``accept(event)``) within ``timeout``; others are dropped."""
        deadline = self.clock() + timeout
        while True:
            if self.stop_event.is_set() and not finish_even_if_stopping:
                return None
            left = deadline - self.clock()
            if left <= 0:
                return None
            event = self.board.poll(min(left, 0.5))
            self.notifier.watchdog()  # a bounded wait that returned: alive (a hung call never gets here)
            if event is None:
                continue
            if isinstance(event, kinds) and (accept is None or accept(event)):
                return event
            log.debug("board event ignored in %s: %s", self.state.value, event)

    def _drain_board(self) -> None:
        while (event := self.board.poll(0)) is not None:
            if isinstance(event, VendRequest):  # someone pressed a selection meanwhile: not this customer's
                self.board.deny_vend()
            log.debug("board event before the session: %s", event)

    def _wait_for_hand(self, timeout: float):
        """(trigger, None) when a hand comes, (None, event) when the machine ends the request, (None, None)."""
        deadline = self.clock() + timeout
        while not self.stop_event.is_set() and self.clock() < deadline:
            trigger = self.panel.wait_for_hand(min(IDLE_SLICE_S * 5, max(0.0, deadline - self.clock())))
            if trigger is not None:
                return trigger, None
            event = self.board.poll(0)
            self.notifier.watchdog()
            if isinstance(event, (SessionCancelled, SessionComplete, AdapterReset, LinkRestored)):
                return None, event
        return None, None

    # --- out of service, recovery -------------------------------------------------------------
    def _fault(self, cause: str, message: str) -> None:
        if self.faults.get(cause) != message:
            log.error("out of service (%s): %s", cause, message)
        self.faults[cause] = message
        self._next_fault_retry = self.clock() + self.fault_retry_s
        self._apply_service_state()

    def _clear(self, cause: str) -> None:
        if self.faults.pop(cause, None) is not None:
            log.info("%s fault cleared", cause)
            self._apply_service_state()

    def _check_service(self, force: bool = False) -> None:
        now = self.clock()
        self._next_status_check = now + STATUS_CHECK_S
        reason = self.accounts.out_of_service_reason()
        if reason:
            self._fault("accounts", reason)
        else:
            self._clear("accounts")
        if force or now >= self._next_fault_retry:
            if "camera" in self.faults:
                self._retry_camera()
            if "journal" in self.faults:
                self._retry_journal()
            self._next_fault_retry = now + self.fault_retry_s
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY_S
            self.accounts.purge_expired_templates()
        self._refresh_gallery()
        self._apply_service_state(force=force)

    def _retry_camera(self) -> None:
        if self.camera is None and self._open_camera is None:
            return  # nothing to retry with: stays out of service (a wiring error, logged at start)
        try:
            if self._open_camera is not None:
                if self.camera is not None:
                    self.camera.close()
                self.camera = None
                self.camera = self._open_camera()
            self.camera.check()
        except CameraError as exc:
            self.faults["camera"] = str(exc)
            log.warning("camera still out: %s", exc)
            return
        self._clear("camera")

    def _retry_journal(self) -> None:
        try:
            self.journal.conn.execute("BEGIN IMMEDIATE")
            self.journal.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("journal still unwritable: %s", exc)
            return
        self._clear("journal")

    def _refresh_gallery(self) -> None:
        bundle = self.accounts.current_bundle()
        key = (bundle.version, bundle.applied_at) if bundle else None
        try:  # enrollments at the unit (another process) change the templates without a new bundle
            key = (key, tuple(self.accounts.conn.execute("SELECT COUNT(*), MAX(stored_at) FROM templates").fetchone()))
        except sqlite3.Error:
            pass
        if key == self._gallery_key and self._gallery is not None:
            return
        templates = self.accounts.templates()
        try:
            self._gallery = self._gallery_factory(templates)
        except RecognitionError as exc:  # one unreadable template must not keep everyone else out
            bad = [eid for eid, template in templates.items() if not self._template_loads(eid, template)]
            log.error("gallery: %s; %d unusable template(s) left out: %s", exc, len(bad), ", ".join(bad))
            templates = {eid: t for eid, t in templates.items() if eid not in bad}
            self._gallery = self._gallery_factory(templates)
        self._gallery_key = key
        log.info("gallery loaded: %d templates", len(templates))

    def _template_loads(self, employee_id: str, template: bytes) -> bool:
        try:
            self._gallery_factory({employee_id: template})
            return True
        except RecognitionError:
            return False

    def _apply_service_state(self, force: bool = False) -> None:
        want_on = not self.faults
        if want_on == self._reader_on and not force:
            return
        if "board" not in self.faults:
            try:
                if want_on:
                    self.board.enable_reader()
                else:
                    self.board.disable_reader()
            except BoardLinkError as exc:
                self.faults["board"] = str(exc)
                want_on = False
        self._reader_on = want_on
        self.panel.show("ready" if want_on else "out_of_service")
        self.notifier.status(self._status_text())
        log.info("%s", self._status_text())

    def _status_text(self) -> str:
        if self.faults:
            return "out of service: " + "; ".join(f"{k}: {v}" for k, v in sorted(self.faults.items()))
        return f"in service, {self.purchases} purchases"

    def _on_board_lost(self, exc: BoardLinkError) -> None:
        log.warning("board link lost: %s", exc)
        self.faults["board"] = str(exc)
        self._reader_on = False
        self.panel.show("out_of_service")
        self.notifier.status(self._status_text())
        self._reopen_board()

    def _reopen_board(self) -> None:
        """Reopen the port (capped backoff, bounded so the loop keeps completing iterations)."""
        try:
            restored = self.board.reopen(stop_event=self.stop_event, deadline_s=RECONNECT_WINDOW_S)
        except BoardLinkError as exc:
            self.faults["board"] = str(exc)
            log.warning("board link still down: %s", exc)
            return
        self.faults.pop("board", None)
        log.info("board link restored (interrupted: %s)", restored.interrupted)
        if self._recovery_pending:
            self._recovery_pending = False
            self.recover()
        self._apply_service_state(force=True)
        if self._unsettled is not None:
            self._settle_unsettled(restored)

    def _settle_unsettled(self, restored) -> None:
        """An approval whose outcome the lost link swallowed: the board's next report, or outcome unknown."""
        p, self._unsettled = self._unsettled, None
        event = None
        if restored.interrupted == "vend_approved":  # the approval reached the board: listen a little
            event = self._wait_for((VendSucceeded, VendFailed, SessionCancelled), self._recovery_listen_s(),
                                   finish_even_if_stopping=True)
        self._record_outcome(p, event)
        self.counts[p.outcome] += 1
        log.info("settled after the link came back: %s", p.line())
        if self.on_purchase is not None:
            self.on_purchase(p)

    def _recovery_listen_s(self) -> float:
        return min(self.cfg.board.vend_outcome_timeout_s, 2 * self.cfg.board.reply_timeout_s)

    def recover(self) -> None:
        """At start: sessions cut before approval are voided; open approvals settled from the board or unknown."""
        voided = self.journal.void_interrupted_sessions()
        if voided:
            log.info("recovery: %d sessions cut before approval voided", voided)
        open_approvals = self.journal.open_approvals()
        if not open_approvals:
            return
        *older, latest = open_approvals
        for approval in older:
            self.journal.mark_outcome_unknown(approval.session_id)
        event = self._wait_for((VendSucceeded, VendFailed, SessionCancelled, SessionComplete, AdapterReset,
                                ReaderDisabled), self._recovery_listen_s(), finish_even_if_stopping=True)
        p = Purchase("recovered", employee_id=latest.employee_id, session_id=latest.session_id, item=latest.item,
                     price_cents=latest.amount_cents, approved=True)
        self._record_outcome(p, event if isinstance(event, (VendSucceeded, VendFailed, SessionCancelled)) else None)
        log.warning("recovery: %d open approvals after a restart; the last one %s, %d marked outcome unknown",
                    len(open_approvals), p.outcome, len(older))

    def _keep_debug_image(self, frame) -> None:
        """Only when a technician turned it on: frames under <state_dir>/debug, capped in count."""
        if not self.cfg.recognition.keep_debug_images:
            return
        import cv2

        folder = Path(self.cfg.state_dir) / "debug"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        cv2.imwrite(str(folder / f"frame-{time.time():.3f}.png"), frame)
        kept = sorted(folder.glob("frame-*.png"))
        for old in kept[:-self.debug_images_max]:
            old.unlink(missing_ok=True)


def default_gallery(templates: dict[str, bytes]):
    from .recognition import Gallery

    return Gallery.from_templates(templates)


def first_name(display_name: str) -> str:
    return (display_name or "").split(" ")[0][:12] or "there"


# --- assembling the unit ---------------------------------------------------------------------
def open_board(cfg, *, port: str | None = None, stop_event: threading.Event | None = None):
    """The board link from [board]; a port that cannot be opened yet is retried by the loop (out of service)."""
    from .board import BoardLink, SerialTransport

    path = str(port or cfg.board.port)

    def open_transport():
        return SerialTransport(path, cfg.board.baudrate, write_timeout_s=cfg.board.reply_timeout_s)

    try:
        transport = open_transport()
    except BoardLinkError as exc:
        log.error("board link: %s (retrying with backoff)", exc)
        transport = None
    return BoardLink(transport, price_format=cfg.board.price_format, reply_timeout_s=cfg.board.reply_timeout_s,
                     reopen_transport=open_transport, max_backoff_s=cfg.board.reconnect_max_backoff_s)


def run_unit(cfg, stop_event: threading.Event, *, board_port: str | None = None,
             notifier: Notifier | None = None) -> int:
    """The unit on the hardware named by cfg.unit.hardware, until ``stop_event`` is set."""
    from .accounts import AbuseGuard, AccountStore
    from .camera import open_camera
    from .journal import Journal
    from .proximity import open_panel
    from .recognition import Recognizer
    from .storage import open_db

    recognizer = Recognizer.from_config(cfg)  # ModelError: exit non-zero, `vendor-node selftest` says why
    notifier = notifier or Notifier()
    conn = open_db(cfg.state_dir)
    camera = None
    try:
        journal = Journal(conn)
        accounts = AccountStore(cfg, conn, journal)

        def camera_factory():
            return open_camera(cfg)

        try:
            camera = camera_factory()
        except CameraError as exc:
            log.error("camera: %s (out of service until it answers)", exc)
        with open_panel(cfg) as panel, open_board(cfg, port=board_port, stop_event=stop_event) as board:
            loop = PurchaseLoop(cfg, camera=camera, panel=panel, board=board, recognizer=recognizer,
                                accounts=accounts, journal=journal, abuse=AbuseGuard(cfg), stop_event=stop_event,
                                notifier=notifier, open_camera=camera_factory)
            try:
                return loop.run()
            finally:
                camera = loop.camera
    finally:
        if camera is not None:
            camera.close()
        conn.close()
        notifier.close()
