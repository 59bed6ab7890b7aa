"""The unit's health: whether it may serve, and everything that puts it back into service.

Faults by cause ("camera", "journal", "accounts", "board") keep the reader
disabled, so the machine shows the unit out of service, until a retry clears them:
the camera and journal are retried every ``fault_retry_s``, the bundle's age and
the gallery are checked every ``STATUS_CHECK_S``, a lost board link is reopened
with capped backoff. Recovery settles approvals a restart or a lost link left
open: from the board's report, else outcome unknown, never a guessed charge
(``_record_outcome`` is the one place a charge is recorded, also for the purchase
flows in service.py, which build on this class).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter

from ..devices.board import (AdapterReset, CommandRefused, LinkRestored, ReaderDisabled, SessionCancelled,
                    SessionComplete, VendFailed, VendRequest, VendSucceeded)
from ..errors import AccountsError, BoardLinkError, CameraError, JournalError, RecognitionError
from ..devices.notify import Notifier
from ..heap import release_free_heap
from ..money.journal_guard import check_integrity, probe_durable_write
from .purchase import Purchase, State, money
from .watchdog import RECONNECT_WINDOW_S, attach_watchdog

log = logging.getLogger("vendor_node.unit")

STATUS_CHECK_S = 1.0  # bundle age, faults, gallery refresh
LATE_OUTCOME_GRACE_S = 120.0  # a vend success this late after an unknown outcome still settles it
FAULT_RETRY_S = 5.0  # camera / journal retry while out of service
SESSION_END_WAIT_S = 0.5  # after an outcome, let the machine close the session (a contradiction shows here)
DEBUG_IMAGES_MAX = 50
PURGE_EVERY_S = 24 * 3600.0


def default_gallery(templates: dict[str, bytes]):
    from ..hand.recognition import Gallery

    return Gallery.from_templates(templates)


class UnitHealth:
    """The unit's devices and stores, its faults and service state; PurchaseLoop adds the purchases.

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
        self.iteration_limit_s = attach_watchdog(cfg, board, self.notifier)
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
        self._journal_unverified = True  # the chain and the high-water mark are checked before serving
        self._late_outcome: tuple[str, float] | None = None  # (session, until): an unknown outcome still expected
        self._next_status_check = 0.0
        self._next_fault_retry = 0.0
        self._next_purge = 0.0
        self._ready_at: float | None = None
        self._gallery = None
        self._gallery_key = None
        self.counts: Counter = Counter()
        self.purchases = 0

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
        self._check_journal_mark()
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
        try:
            if now >= self._next_purge:
                self._next_purge = now + PURGE_EVERY_S
                self.accounts.purge_expired_templates()
            self._refresh_gallery()
        except AccountsError as exc:  # e.g. the data key file went missing: no one can be recognised
            self._fault("store", str(exc))
        else:
            self._clear("store")
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

    def _check_journal_mark(self) -> None:
        """A high-water note the disk refused: the journal's next write will fail too, so stop approving now."""
        mark = getattr(self.journal, "mark", None)
        if mark is not None and mark.failed and "journal" not in self.faults:
            self._fault("journal", mark.failed)

    def _retry_journal(self) -> None:
        """Cleared only by a real durable write (a probe row committed, the disk taking a synced file), the chain
        checked again when it was the fault, and the start-up recovery finished: never by a BEGIN alone."""
        self.counts["journal_retries"] += 1
        try:
            if self._journal_unverified:
                log.info("%s", check_integrity(self.journal))
                self._journal_unverified = False
            probe_durable_write(self.journal.conn)
            if getattr(self.journal, "mark", None) is not None:
                self.journal.mark.failed = None  # the disk takes writes again; the next note says if not
            if self._recovery_pending and "board" not in self.faults:  # recovery failed at start: finish it first
                self.recover()
                self._recovery_pending = False
        except JournalError as exc:
            self.faults["journal"] = str(exc)
            log.warning("journal still out of service: %s", exc)
            return
        self._clear("journal")

    def _refresh_gallery(self) -> None:
        try:  # enrollments at the unit (another process) change the templates without a new bundle
            key = self.accounts.templates_revision()
        except sqlite3.Error:
            key = None
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
        del templates
        release_free_heap()  # the build's parsed leftovers go back to the system, not kept by malloc

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

    # --- board and panel, for recovery and the purchase flows alike ---------------------------
    def _feedback(self, outcome: str, text: str) -> None:
        """LED and buzzer, and the same words on the machine's display."""
        self.panel.show(outcome)
        self._show_on_machine(text)

    def _show_on_machine(self, text: str) -> None:
        """The machine's display (the link shows it only while the reader is Enabled, else when it is)."""
        try:
            self.board.display(text)
        except BoardLinkError as exc:
            log.warning("could not show %r on the machine: %s", text, exc)

    def _settle_approved(self, p: Purchase) -> None:
        """Settle an approval from its own session's report: bound to the request and the session that asked.

        A new request while the approval is open (the machine changed its selection) is denied and makes a
        success ambiguous: held for review, never charged at a price nobody approved. A success charges only
        when its session closes without a contradicting outcome (a late line of an earlier session must not
        charge this customer); a request after the outcome (multi-vend) is denied, never left waiting.
        """
        changed, deadline = False, self.clock() + self.cfg.board.vend_outcome_timeout_s
        kinds = (VendSucceeded, VendFailed, SessionCancelled, SessionComplete, AdapterReset, LinkRestored,
                 CommandRefused, VendRequest)
        while True:
            event = self._wait_for(kinds, max(0.0, deadline - self.clock()), finish_even_if_stopping=True,
                                   accept=lambda e: not isinstance(e, CommandRefused) or (e.command == "VEND"
                                                                                        and not changed))
            if not isinstance(event, VendRequest):
                break
            log.warning("the machine asked for %s at %s while %s was approved: denied; its outcome goes to review",
                        event.item, money(event.price_cents), p.item)
            self.board.deny_vend()
            changed = True
        if isinstance(event, VendSucceeded):
            contradiction = self._close_session()
            if changed or contradiction is not None:
                self._hold_for_review(p, "request changed after the approval" if changed
                                      else f"contradicting outcomes ({type(contradiction).__name__})")
            else:
                self._record_outcome(p, event)
            return
        if changed and not isinstance(event, (VendFailed, SessionCancelled)):  # no word: never settled late
            self._hold_for_review(p, "request changed after the approval, no outcome")
            self._close_session()
            return
        self._record_outcome(p, event)
        if isinstance(self._close_session(), VendSucceeded) and self._settle_late_success():
            p.outcome, p.charged, p.reason = "vended", True, "reported late"  # charged after all
            self._feedback("vended", f"Enjoy! Charged {money(p.price_cents)}")

    def _close_session(self):
        """Wait for the session to close; the first outcome line seen meanwhile (else None). Requests denied."""
        deadline = self.clock() + SESSION_END_WAIT_S
        while True:
            event = self._wait_for((SessionComplete, AdapterReset, LinkRestored, VendSucceeded, VendFailed,
                                    SessionCancelled, VendRequest), max(0.0, deadline - self.clock()))
            if isinstance(event, VendRequest):
                log.info("multi-vend request for %s denied: each purchase is one presented hand", event.item)
                self.board.deny_vend()
                continue
            return event if isinstance(event, (VendSucceeded, VendFailed, SessionCancelled)) else None

    def _request_changed(self, p: Purchase) -> None:
        """The machine's request is no longer the one authorized: refuse it, never approve another price."""
        if self.board.state == "vend_requested":
            self.board.deny_vend()
        self.journal.void(p.session_id, "refused")
        p.approved = False
        p.outcome, p.reason = "refused", "request_changed"
        self._feedback("refused", "Selection changed - try again")

    def _hold_for_review(self, p: Purchase, reason: str) -> None:
        self.journal.mark_outcome_unknown(p.session_id)
        p.outcome, p.reason = "outcome_unknown", reason
        log.warning("session %s held for review: %s", p.session_id[:8], reason)
        self._feedback("refused", "Vend outcome unknown")

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
            if isinstance(event, VendRequest):  # nobody serves it now: answer it, never let the machine wait
                log.info("vend request for %s while %s: denied", event.item, self.state.value)
                self.board.deny_vend()
            elif isinstance(event, VendSucceeded) and not isinstance(event, kinds):
                if not self._settle_late_success():
                    log.warning("the board reported a vend success no session of ours awaits: nothing charged")
            else:
                log.debug("board event ignored in %s: %s", self.state.value, event)

    def _settle_late_success(self) -> bool:
        """A vend success after we gave up waiting: the snack dropped, so charge the session left for review."""
        late, self._late_outcome = self._late_outcome, None
        if late is None or self.clock() > late[1]:
            return False
        entry = self.journal.settle_review(late[0], charged=True, note="late vend success reported by the board")
        log.warning("late vend success for session %s: charged %s after all", late[0], money(entry.amount_cents))
        return True

    def _record_outcome(self, p: Purchase, event) -> None:
        """Settle an approved purchase from the board's report: only VendSucceeded charges, no word -> unknown."""
        if isinstance(event, VendSucceeded):
            self.journal.succeed(p.session_id)
            p.outcome, p.charged = "vended", True
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
            # the board may still report it late (also after a session closed without it): remember which
            self._late_outcome = (p.session_id, self.clock() + LATE_OUTCOME_GRACE_S)
            p.outcome = "outcome_unknown"
            p.reason = "no vend outcome in time" if event is None else type(event).__name__
            self._feedback("refused", "Vend outcome unknown")
        else:  # the session closed with no vend after the approval (e.g. the machine reset before vending)
            self.journal.void(p.session_id, "cancelled")
            p.outcome, p.reason = "cancelled", type(event).__name__
            self._feedback("refused", "Cancelled - not charged")
