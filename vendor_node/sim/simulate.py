"""`vendor-node simulate`: a whole unit on simulated hardware against the vending-machine simulator.

Everything real except the devices: the purchase loop, the recognizer, the
account store, the journal and the MDB protocol over a pty; the camera plays
hand images, the IR sensor is a gpiozero mock pin, the machine is
``VendingMachineSimulator``. The people and the back office's bundle come
from provision.py (real photos when ../shared/handdata is there, else
drawn hands); this module runs the customers through the unit and reports.

``--state-dir`` keeps the unit between runs: a run killed midway and started
again recovers (open approvals settled or marked outcome unknown) and goes on.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time

import numpy as np

from ..errors import UsageError
from .provision import load_or_create_people

log = logging.getLogger("vendor_node.simulate")

MENU = [(120, "A1"), (150, "A2"), (90, "B1"), (200, "B2"), (250, "C1"), (175, "C2"), (300, "D1")]
BEHAVIOUR_WEIGHTS = {"normal": 0.80, "jam": 0.08, "cancel": 0.07, "slow": 0.05}
STRANGER_SHARE = 0.15
SELECTION_FIRST_SHARE = 0.3
CUSTOMER_TIMEOUT_S = 20.0
SERVICE_WAIT_S = 60.0  # a 100,000-employee gallery on a busy machine takes seconds, not minutes


def sim_config(cfg):
    """The unit's config with timeouts suited to a simulated machine (seconds, not minutes)."""
    return cfg.replace(
        unit={"hardware": "sim"},
        board={"selection_timeout_s": 3.0, "vend_outcome_timeout_s": 3.0, "hand_wait_s": 2.0,
               "reply_timeout_s": 1.0, "reconnect_max_backoff_s": 2.0},
        # customers come back to back (ten a second, not one a minute): the cool-down window spans a few
        # customers, as a minute does at a real machine, so only a burst of failures (an attack) trips it
        abuse={"max_failures": cfg.abuse.max_failures, "window_s": 0.3, "cooldown_s": 1.0},
    )


# --- the unit on simulated hardware -------------------------------------------------------
class SimUnit:
    """A whole unit (PurchaseLoop in a thread) wired to SimCamera, MockFactory pins and the VMC simulator."""

    def __init__(self, cfg, recognizer, *, vmc_options: dict | None = None, on_purchase=None,
                 gallery_factory=None, loop_options: dict | None = None, camera=None):
        self.cfg = cfg
        self.recognizer = recognizer
        self.vmc_options = vmc_options or {}
        self.purchases: queue.Queue = queue.Queue()
        self._on_purchase = on_purchase
        self._gallery_factory = gallery_factory
        self.loop_options = loop_options or {}
        self._camera = camera
        self.stop_event = threading.Event()
        self._thread = None
        self.error: BaseException | None = None

    def __enter__(self):
        from ..money.accounts import AccountStore
        from ..unit.keysource import unit_keystore
        from ..money.authorize import AbuseGuard
        from ..devices.camera import SimCamera
        from ..money.journal import Journal
        from ..devices.panel import open_panel
        from ..unit.service import PurchaseLoop
        from ..money.storage import open_db
        from ..unit.assemble import open_board
        from .vmc_sim import VendingMachineSimulator
        from ..heap import keep_large_blocks_unheaped

        keep_large_blocks_unheaped()  # as `vendor-node run` does (heap.py)
        self.vmc = VendingMachineSimulator(**self.vmc_options).start()
        self.conn = open_db(self.cfg.state_dir)
        self.journal = Journal(self.conn)
        self.accounts = AccountStore(self.cfg, self.conn, self.journal, unit_keystore(self.cfg))
        self.camera = self._camera or SimCamera()
        self.panel = open_panel(self.cfg)
        self.board = open_board(self.cfg, port=self.vmc.port_path, stop_event=self.stop_event)
        self.loop = PurchaseLoop(self.cfg, camera=self.camera, panel=self.panel, board=self.board,
                                 recognizer=self.recognizer, accounts=self.accounts, journal=self.journal,
                                 abuse=AbuseGuard(self.cfg), stop_event=self.stop_event,
                                 on_purchase=self._purchase_done, gallery_factory=self._gallery_factory,
                                 **self.loop_options)
        self._thread = threading.Thread(target=self._run, name="unit-loop", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        try:
            self.loop.run()
        except BaseException as exc:  # reported to the caller; the test or command fails on it
            self.error = exc
            log.exception("the purchase loop stopped on an unexpected error")
            self.stop_event.set()

    def _purchase_done(self, purchase):
        self.purchases.put(purchase)
        if self._on_purchase is not None:
            self._on_purchase(purchase)

    def wait_in_service(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.loop.faults and self.vmc.reader_state == "enabled":
                return True
            time.sleep(0.01)
        return False

    def next_purchase(self, timeout: float = CUSTOMER_TIMEOUT_S):
        try:
            return self.purchases.get(timeout=timeout)
        except queue.Empty:
            return None

    def __exit__(self, *exc):
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        for closer in (self.board.close, self.panel.close, self.camera.close, self.vmc.stop, self.journal.close,
                       self.conn.close):
            try:
                closer()
            except Exception as close_exc:
                log.warning("closing the simulated unit: %s", close_exc)


class Customer:
    """Drives one person through one purchase: hand first or selection first, re-presenting when asked."""

    def __init__(self, unit: SimUnit, images: list[np.ndarray], selection, behaviour: str, order: str):
        self.unit, self.images, self.selection = unit, images, selection
        self.behaviour, self.order = behaviour, order
        self.shown = 0
        self.vmc_customer = None
        # The hand is in front of the camera before the sensor fires: a drawn (or read) presentation is made
        # now, on the caller's thread, not when the unit asks for it on its own thread (the camera's work is
        # not the Pi's). A second presentation, rare, is drawn when the unit asks for it again: between two
        # attempts, outside every timed stage.
        self._first = images[0] if len(images) else None

    def present(self) -> None:
        image = self._first if self.shown == 0 and self._first is not None else \
            self.images[self.shown % len(self.images)]
        self._first = None  # the frame is the camera's now: the customer holds no copy
        self.shown += 1
        self.unit.camera.clear()
        self.unit.camera.present(image)
        self.unit.panel.present_hand()
        self.unit.panel.remove_hand()

    def on_panel(self, outcome: str) -> None:
        """Runs on the unit's thread when it shows feedback: the person reacts to it."""
        if outcome == "retry":  # "hold your hand over the reader (again)"
            if self.behaviour == "cancel" and self.order == "selection_first" and self.shown == 0:
                return  # changes their mind: presses cancel on the machine instead of holding out a hand
            self.present()
        elif outcome == "approved" and self.order == "hand_first" and self.vmc_customer is None:
            self.vmc_customer = self.unit.vmc.next_customer(self.selection, self.behaviour, "hand_first")

    def run(self, timeout: float = CUSTOMER_TIMEOUT_S):
        """The unit's purchase record and the machine's view of this customer (or None)."""
        self.unit.panel.listeners.append(self.on_panel)
        try:
            if self.order == "hand_first":
                self.present()
            else:
                self.vmc_customer = self.unit.vmc.next_customer(self.selection, self.behaviour, "selection_first")
            purchase = self.unit.next_purchase(timeout)
            if self.vmc_customer is not None:
                self.vmc_customer.wait(timeout)
            self.unit.vmc.wait_idle(timeout)
            return purchase
        finally:
            self.unit.panel.listeners.remove(self.on_panel)
            self.unit.panel.forget_sim_history()


# --- the command ----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def journal_summary(journal, after_seq: int) -> dict:
    """What the journal recorded in this run: approvals, charges (count, cents), voids by reason, unknown."""
    from ..money.journal import OUTCOME_UNKNOWN, REVIEW_SETTLED, VEND_APPROVED, VEND_SUCCEEDED, VEND_VOIDED

    summary = {"approved": 0, "charged": 0, "charged_cents": 0, "voided": {}, "outcome_unknown": 0,
               "settled_after_review": 0}
    for entry in journal.entries(after_seq=after_seq):
        if entry.kind == VEND_APPROVED:
            summary["approved"] += 1
        elif entry.kind == VEND_SUCCEEDED:
            summary["charged"] += 1
            summary["charged_cents"] += entry.amount_cents or 0
        elif entry.kind == VEND_VOIDED:
            summary["voided"][entry.detail] = summary["voided"].get(entry.detail, 0) + 1
        elif entry.kind == OUTCOME_UNKNOWN:
            summary["outcome_unknown"] += 1
        elif entry.kind == REVIEW_SETTLED:  # an unknown outcome settled later (a late report or a technician)
            summary["outcome_unknown"] -= 1
            summary["settled_after_review"] += 1
            if entry.amount_cents:
                summary["charged"] += 1
                summary["charged_cents"] += entry.amount_cents
    return summary


def run_simulation(args) -> int:
    from ..config import load_config

    if args.customers < 1:
        raise UsageError("--customers must be at least 1")
    cfg = sim_config(load_config(getattr(args, "config", None), hardware="sim", state_dir=args.state_dir))
    rng = random.Random(args.seed)
    unit_log = logging.getLogger("vendor_node.unit")
    level = unit_log.level
    if not unit_log.isEnabledFor(logging.DEBUG):  # -v shows the unit's own lines
        unit_log.setLevel(logging.WARNING)  # each purchase is printed on stdout (or, with --quiet, not at all)
    try:
        return _simulate_command(args, cfg, rng)
    finally:
        unit_log.setLevel(level)


def _simulate_command(args, cfg, rng: random.Random) -> int:
    from ..hand.recognition import Recognizer

    started = time.monotonic()
    recognizer = Recognizer.from_config(cfg)
    office = getattr(args, "office", None)
    if office:  # a running back office is this unit's: its employees, funds and ledger
        from .office_link import office_config, office_people

        cfg = office_config(cfg, office)
    from ..unit.keysource import unit_keystore, unit_template_guard

    recognizer.guard = unit_template_guard(unit_keystore(cfg))  # templates stored guarded, as on a unit
    if office:
        people = office_people(cfg, args, rng, recognizer)
    else:
        people = load_or_create_people(cfg, args, rng, recognizer)
    employees = [p for p in people if p.employee_id]
    strangers = [p for p in people if not p.employee_id]
    images = {p.key: p.presentations() for p in people}  # drawn or read when shown
    source = "real photos" if people[0].key.startswith("photo:") else "synthetic hands"
    prepared_s = time.monotonic() - started
    print(f"simulated unit in {cfg.state_dir}: {len(employees)} employees, {len(strangers)} strangers "
          f"({source}, prepared in {prepared_s:.1f} s); {args.customers} customers", flush=True)
    report = simulate_customers(cfg, recognizer, people, images, args.customers, rng,
                                echo=not getattr(args, "quiet", False))
    report.update({"state_dir": str(cfg.state_dir), "hand_images": source, "seed": args.seed,
                   "prepared_s": round(prepared_s, 1), "total_s": round(time.monotonic() - started, 1)})
    if office:
        from .office_link import office_summary

        report["office"] = office_summary(cfg)
        held = report["office"]
        print(f"office {office}: its ledger holds {held['charged_cents']} cents charged at unit {cfg.unit.unit_id}; "
              f"the unit's journal {held['unit_charged_cents_all_runs']} over all runs ({report['charged_cents']} "
              "this run)", flush=True)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lat = report["trigger_to_board_ms"]
    print(f"{report['customers']} customers: {report['journal']['approved']} approved, "
          f"{report['vended']} vended, {report['journal']['charged']} charged, refused {report['refused']}; "
          f"trigger->board p50 {fmt(lat['p50'])} p95 {fmt(lat['p95'])} max {fmt(lat['max'])} ms; "
          f"charges == vends: {report['charges_equal_vends']}", flush=True)
    ident = report["identification"]
    print(f"identification: {ident['employee_recognised']} employees recognised, "
          f"{ident['employee_not_recognised']} not recognised, {ident['stranger_refused']} strangers refused, "
          f"wrong payer {ident['wrong_payer']}", flush=True)
    return 0 if report["charges_equal_vends"] and report["journal_chain_ok"] else 1


def fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def identification_summary(truth: list[tuple[str | None, str | None]]) -> dict:
    """What the recognizer did against who really came: a wrong payer is the failure that matters most."""
    counts = {"employee_recognised": 0, "employee_not_recognised": 0, "employee_taken_for_another": 0,
              "stranger_refused": 0, "stranger_taken_for_employee": 0}
    for real, identified in truth:
        if real is None:
            counts["stranger_refused" if identified is None else "stranger_taken_for_employee"] += 1
        elif identified is None:
            counts["employee_not_recognised"] += 1
        else:
            counts["employee_recognised" if identified == real else "employee_taken_for_another"] += 1
    counts["wrong_payer"] = counts["employee_taken_for_another"] + counts["stranger_taken_for_employee"]
    return counts


def simulate_customers(cfg, recognizer, people, images, count: int, rng: random.Random, echo: bool = True,
                       vmc_options: dict | None = None, on_progress=None) -> dict:
    """Run ``count`` customers through a SimUnit; the report dict (counts, latencies, charges vs vends)."""
    from .template_cache import is_region_person

    # employees past 10,000 are drawn palm regions only (template_cache.py): no hand of theirs can be shown
    employees = [p for p in people if p.employee_id and not is_region_person(p.key)] or people
    strangers = [p for p in people if not p.employee_id] or employees
    behaviours, weights = zip(*BEHAVIOUR_WEIGHTS.items())
    records = []
    truth: list[tuple[str | None, str | None]] = []  # (who really came, whom the unit identified)
    printer = (lambda p: print(p.line(), flush=True)) if echo else None
    options = {"patience_s": 2.0, "reader_timeout_s": 5.0, "session_timeout_s": 10.0, "keep_history": 1000,
               "status_delay_s": 0.05, "start_busy_rate": 0.02,  # a real adapter's pace; now and then busy
               "seed": rng.randrange(1 << 30)}
    options.update(vmc_options or {})
    started = time.monotonic()
    from ..unit.keysource import guarded_gallery

    gallery = guarded_gallery(recognizer.guard) if getattr(recognizer, "guard", None) else None
    with SimUnit(cfg, recognizer, vmc_options=options, on_purchase=printer, gallery_factory=gallery) as unit:
        if not unit.wait_in_service(SERVICE_WAIT_S):
            raise UsageError(f"the simulated unit did not come into service in {SERVICE_WAIT_S:.0f} s: "
                             f"{unit.loop.faults}")
        ready_s = time.monotonic() - started
        after_seq = unit.journal.head()[0]
        for i in range(count):
            person = rng.choice(strangers) if rng.random() < STRANGER_SHARE else rng.choice(employees)
            order = "selection_first" if rng.random() < SELECTION_FIRST_SHARE else "hand_first"
            behaviour = rng.choices(behaviours, weights)[0]
            customer = Customer(unit, images[person.key], rng.choice(MENU), behaviour, order)
            purchase = customer.run()
            if unit.error is not None:
                raise unit.error
            if purchase is not None:
                records.append(purchase)
                truth.append((person.employee_id, purchase.employee_id))
                if purchase.outcome == "cooldown":  # the display says "please wait": the queue waits
                    unit.stop_event.wait(unit.loop.abuse.cooldown_left())
            if on_progress is not None:
                on_progress(i + 1)
        unit.vmc.wait_idle(5.0)
        elapsed = time.monotonic() - started
        summary = journal_summary(unit.journal, after_seq)
        chain = unit.journal.verify()
        vmc = unit.vmc
        adapter = {"start_commands": list(unit.board.start_commands), "version": unit.board.adapter_version,
                   "start_busy_answers": vmc.start_busy_answers, "display_refused": len(vmc.display_refused),
                   "protocol_errors": list(vmc.protocol_errors)}
    latencies = [r.trigger_to_board_ms for r in records if r.trigger_to_board_ms is not None]
    approve_vend = [r.trigger_to_approve_vend_ms for r in records if r.trigger_to_approve_vend_ms is not None]
    stage_values: dict[str, list[float]] = {}
    for r in records:
        for name, ms in r.board_stages.items():
            stage_values.setdefault(name, []).append(ms)
    by_order = {}
    for order in ("hand_first", "selection_first"):
        values = [r.trigger_to_board_ms for r in records if r.order == order and r.trigger_to_board_ms is not None]
        by_order[order] = {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}
    refused: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        if r.outcome in ("refused", "unknown", "rejected", "cooldown", "no_hand", "busy"):
            key = r.reason if r.outcome == "refused" else r.outcome
            refused[key] = refused.get(key, 0) + 1
    # Every item that dropped must be charged exactly once, at the approved amount, and nothing else.
    charges_equal = summary["charged"] == vmc.vended_count and summary["charged_cents"] == vmc.vended_cents
    return {
        "customers": count,
        "purchases_recorded": len(records),
        "outcomes": outcomes,
        "approved": summary["approved"],
        "refused": refused,
        "vended": vmc.vended_count,
        "vended_cents": vmc.vended_cents,
        "vended_unreported": vmc.vended_count - vmc.vended_reported_count,
        "journal": summary,
        "charged": summary["charged"],
        "charged_cents": summary["charged_cents"],
        "voided": summary["voided"],
        "trigger_to_board_ms": {"n": len(latencies), "p50": percentile(latencies, 50),
                                "p95": percentile(latencies, 95), "max": max(latencies) if latencies else None,
                                "by_order": by_order,
                                "stages_p95": {name: percentile(v, 95) for name, v in stage_values.items()}},
        "request_to_approval_ms_p95": percentile([r.request_to_approval_ms for r in records
                                                  if r.request_to_approval_ms is not None], 95),
        "trigger_to_approve_vend_ms": {
            "p50": percentile(approve_vend, 50), "p95": percentile(approve_vend, 95),
            "max": max(approve_vend) if approve_vend else None,
            "note": "IR trigger to C,VEND written; in hand-first purchases this includes the customer's "
                    "selection (simulated think time)"},
        "identification": identification_summary(truth),
        "charges_equal_vends": bool(charges_equal),
        "adapter": adapter,  # what the unit sent the adapter at start (C,0 ... C,1) and how the machine answered
        "journal_chain_ok": bool(chain.ok),
        "elapsed_s": round(elapsed, 1),
        "unit_ready_s": round(ready_s, 2),  # the SimUnit started to in service (stores, gallery, board set-up)
        "latency_note": "hand first: IR trigger to the session with the employee's funds written to the board "
                        "(C,START answered); selection first: IR trigger to approve_vend (C,VEND written)",
    }
