"""The purchase loop: an explicit state machine from the IR sensor to the charge.

States: IDLE -> HAND_SEEN -> IDENTIFY -> AUTHORIZE -> SESSION -> OUTCOME -> IDLE.
Every wait has a timeout; one ``threading.Event`` stops the unit. Both MDB
orders are served: hand first (start a session with the funds the employee may
spend, then approve the selected price) and selection first (the machine asks,
the unit waits ``board.hand_wait_s`` for a hand). The approval is journaled
durably before the board hears it; only ``VendSucceeded`` charges.

Errors are handled by class (errors.py): a lost board link is reopened with
backoff, a camera fault or an unwritable journal puts the unit out of service
(reader disabled, so the machine shows it) until a retry clears it (the faults,
retries and start-up recovery are health.py's), a refused hand gets a hint.
Anything else propagates so the process exits non-zero and systemd restarts it.
``WATCHDOG=1`` is sent only when a loop iteration completes (or a bounded wait
inside one returns), so a hung camera or serial call is restarted (watchdog.py).
The unit is assembled around this loop in assemble.py.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
from pathlib import Path

from ..devices.board import (AdapterReset, CashSale, LinkRestored, ReaderDisabled, RevalueRefused,
                             SessionCancelled, SessionComplete, UnreadableVendRequest, VendRequest, VendSucceeded)
from ..errors import (AccountsError, BoardLinkError, CameraError, HandRejected, JournalError, ProtocolError,
                     SensorError)
from .purchase import Purchase, State, first_name, hand_hint, money
from ..money.journal_guard import check_integrity
from .health import UnitHealth
from .template_refresh import refresh_old_template

log = logging.getLogger("vendor_node.unit")

IDLE_SLICE_S = 0.01  # how long the idle loop waits on the sensor before a non-blocking board poll
FEEDBACK_HOLD_S = 2.0  # an outcome's LED colour stays this long before "ready"


class PurchaseLoop(UnitHealth):
    """The unit's purchase state machine over injected devices and stores (see UnitHealth for them)."""

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
            log.info("%s", check_integrity(self.journal))  # a broken or shortened journal never serves
            self._journal_unverified = False
            self.recover()
        except BoardLinkError as exc:  # no board to hear from yet: recover once the link is back
            log.error("board link: %s (recovery waits for it)", exc)
            self.faults["board"] = str(exc)
            self._recovery_pending = True
        except JournalError as exc:  # disk full, or the chain broken: out of service, retried (journal_guard.py)
            self.faults["journal"] = str(exc)
            log.error("out of service (journal): %s (recovery waits for it)", exc)
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
            with self.notifier.bounded("a loop iteration", self.iteration_limit_s):
                self.step()
        except BoardLinkError as exc:
            self._on_board_lost(exc)
        except CameraError as exc:
            self._fault("camera", str(exc))
        except JournalError as exc:
            self._fault("journal", str(exc))
        except AccountsError as exc:  # the store failed (key file, database): cleared by the next good check
            self._fault("store", str(exc))
        except HandRejected as exc:  # handled inside IDENTIFY; here only if a flow let one through
            self._feedback("refused", hand_hint(exc.reason))
        except (SensorError, ProtocolError) as exc:
            log.warning("%s: %s", type(exc).__name__, exc)
        self.state = State.IDLE
        self._check_journal_mark()
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
            if not self._settle_late_success():
                log.warning("the board reported a vend success with no approval open: nothing charged")
        elif isinstance(event, (UnreadableVendRequest, RevalueRefused, CashSale)):
            log.info("board: %s (handled by the link)", event)
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
        greeting = f"Hi {first_name(p.display_name)} {money(auth.funds_left_cents)} avail."
        self._show_on_machine(greeting)  # now, while the reader is Enabled: the only state that shows it
        started = self.board.start_session(auth.funds_left_cents)
        p.timed("board", t)
        if not started:
            p.outcome, p.reason = "busy", "machine refused a session"
            self._feedback("refused", "Machine busy, try again")
            return
        p.trigger_to_board_ms = (self.clock() - p.trigger_at) * 1000
        p.board_stages = dict(p.stages)
        p.session_id = self.journal.begin_session()
        self._note_template_used(p.employee_id)
        self.panel.show("approved")
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
        self.panel.show("retry")  # LED and buzzer: the display takes text only while Enabled
        trigger, event = self._wait_for_hand(self.cfg.board.hand_wait_s)
        if trigger is None:
            if event is None:
                self.board.deny_vend()
            if isinstance(event, VendRequest):  # another request replaced this one: serve neither blindly
                self.board.deny_vend()
                p.outcome, p.reason = "refused", "request_changed"
                self._feedback("refused", "Selection changed - try again")
                return
            p.outcome = "no_hand" if event is None else "cancelled"
            self._feedback("refused", "No hand seen - not charged" if event is None else "Cancelled")
            return
        p.trigger_at = trigger
        self.state = State.HAND_SEEN
        self.panel.show("working")
        match = self._identify(p)
        if match is None:
            if self.board.state == "vend_requested":
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
                if isinstance(event, VendRequest):  # a new or changed request: not the one being served
                    self.board.deny_vend()
                    p.reason = "request_changed"
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
                    self._feedback("retry", hand_hint(exc.reason))
                continue
            match = self.recognizer.identify(features, self._gallery)
            p.timed("match", t)
            if match.reason == "match" and match.employee_id:
                p.employee_id = match.employee_id
                self._refresh_due = (features, match)  # an older model's template: refreshed after the purchase
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
            self._feedback("refused", hand_hint(p.reason, "Hand not recognised"))
        return None

    def _vend(self, p: Purchase, request: VendRequest) -> None:
        """AUTHORIZE the selected price, journal the approval durably, tell the board, await the outcome."""
        self.state = State.AUTHORIZE
        received = self.clock()
        p.item, p.price_cents = request.item, request.price_cents
        if request.price_cents <= 0:  # an unpriced item (a machine set-up slip): never vend it on an account
            self.board.deny_vend()
            self.journal.void(p.session_id, "refused")
            p.outcome, p.reason = "refused", "unpriced_item"
            self._feedback("refused", "Item not priced - not charged")
            return
        t = time.monotonic()
        auth = self.accounts.authorize(p.employee_id, request.price_cents)
        t = p.timed("accounts", t)
        p.display_name = auth.display_name or p.display_name
        if not auth.approved:
            self.board.deny_vend()
            self.journal.void(p.session_id, "refused")
            self._refuse(p, auth)
            return
        if not self.board.request_pending(request):  # bound to the request it answers: item and price
            self._request_changed(p)
            return
        self.journal.approve(p.session_id, p.employee_id, request.item, request.price_cents)  # durable first
        t = p.timed("journal", t)
        p.approved = True
        if not self.board.approve_vend(request.price_cents, request=request):  # changed meanwhile: not sent
            self._request_changed(p)
            return
        p.timed("board", t)
        now = self.clock()
        p.request_to_approval_ms = (now - received) * 1000
        p.trigger_to_approve_vend_ms = (now - p.trigger_at) * 1000
        if p.order == "selection_first":
            p.trigger_to_board_ms = (now - p.trigger_at) * 1000
            p.board_stages = dict(p.stages)
        self.state = State.OUTCOME
        self._settle_approved(p)
        self._note_template_used(p.employee_id)

    def _note_template_used(self, employee_id: str) -> None:
        """Retention bookkeeping only: a failure here is logged, never allowed to disturb a purchase."""
        try:
            self.accounts.note_template_used(employee_id)
        except (AccountsError, sqlite3.Error) as exc:
            log.warning("could not note when %s's template was last used: %s", employee_id, exc)

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
        self._refresh_due = None
        try:
            flow(p)
        except BaseException as exc:
            self._abandon(p, exc)
            raise
        finally:
            self._finish(p)
        due, self._refresh_due = self._refresh_due, None  # the frame's palm region is not kept past this
        if due is not None:  # matched under an older model's template: refreshed now that the board is served
            refresh_old_template(self, *due)

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

    def _drain_board(self) -> None:
        while (event := self.board.poll(0)) is not None:
            if isinstance(event, VendRequest):  # someone pressed a selection meanwhile: not this customer's
                self.board.deny_vend()
            elif isinstance(event, VendSucceeded):  # never this customer's: at most an earlier unknown outcome
                self._settle_late_success()
            log.debug("board event before the session: %s", event)

    def _wait_for_hand(self, timeout: float):
        """(trigger, None) when a hand comes, (None, event) when the machine ends or changes the request
        (a new VendRequest), (None, None) when no hand came in time."""
        deadline = self.clock() + timeout
        while not self.stop_event.is_set() and self.clock() < deadline:
            trigger = self.panel.wait_for_hand(min(IDLE_SLICE_S * 5, max(0.0, deadline - self.clock())))
            if trigger is not None:
                return trigger, None
            event = self.board.poll(0)
            self.notifier.watchdog()
            if isinstance(event, (SessionCancelled, SessionComplete, AdapterReset, LinkRestored, VendRequest)):
                return None, event
            if isinstance(event, VendSucceeded) and not self._settle_late_success():
                log.warning("the board reported a vend success with no approval open: nothing charged")
        return None, None

    def _keep_debug_image(self, frame) -> None:
        """Only when a technician turned it on: frames under <state_dir>/debug, capped in count, with the
        key points and palm square preprocessing found drawn on them (or why the frame was refused)."""
        if not self.cfg.recognition.keep_debug_images:
            return
        import cv2

        from ..hand.debug_view import draw_trace, traced_extract

        folder = Path(self.cfg.state_dir) / "debug"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _, trace, _ = traced_extract(frame)
        cv2.imwrite(str(folder / f"frame-{time.time():.3f}.png"), draw_trace(frame, trace))
        kept = sorted(folder.glob("frame-*.png"))
        for old in kept[:-self.debug_images_max]:
            old.unlink(missing_ok=True)
