"""`vendor-node simulate`: a whole unit on simulated hardware against the vending-machine simulator.

Everything real except the devices: the purchase loop, the recognizer, the
account store, the journal and the MDB protocol over a pty; the camera plays
hand images, the IR sensor is a gpiozero mock pin, the machine is
``VendingMachineSimulator``. Employees are enrolled from real photos in
../shared/handdata when present (one or two images each, the others are
presented), otherwise from hands the project draws (synthetic.py). Strangers
present hands of people not enrolled.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

log = logging.getLogger("vendor_node.simulate")

HANDDATA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "handdata" / "coep_dev"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CAMERA_SIZE = (640, 480)
PEOPLE_FILE = "sim_people.json"
FLEET_DIR = "sim_fleet"  # the simulated back office's keys (a real unit never holds the signing key)
MENU = [(120, "A1"), (150, "A2"), (90, "B1"), (200, "B2"), (250, "C1"), (175, "C2"), (300, "D1")]
BEHAVIOUR_WEIGHTS = {"normal": 0.80, "jam": 0.08, "cancel": 0.07, "slow": 0.05}
STRANGER_SHARE = 0.15
SELECTION_FIRST_SHARE = 0.3
CUSTOMER_TIMEOUT_S = 20.0


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


# --- people ---------------------------------------------------------------------------
@dataclass
class SimPerson:
    """A person at the machine: employees have an id and funds; ``present`` are what they show the camera."""

    key: str  # "photo:<subject folder>" or "synthetic:<seed>"
    employee_id: str | None
    name: str
    funds_cents: int
    enroll: list  # image paths or sample seeds
    present: list
    status: str = "active"

    def images(self, which: str) -> list[np.ndarray]:
        return [load_sim_image(self.key, ref) for ref in getattr(self, which)]


def load_sim_image(key: str, ref) -> np.ndarray:
    """One presentation, as the unit's camera would deliver it (greyscale, at most 640x480)."""
    if key.startswith("synthetic:"):
        from .synthetic import draw_hand

        return draw_hand(int(key.split(":", 1)[1]), int(ref), size=(CAMERA_SIZE[1], CAMERA_SIZE[0]))
    import cv2

    image = cv2.imread(str(ref), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UsageError(f"{ref}: not a readable image")
    scale = min(CAMERA_SIZE[0] / image.shape[1], CAMERA_SIZE[1] / image.shape[0], 1.0)
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


FIRST_NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kai", "Lena",
               "Mo", "Nina", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wen", "Xena"]


def choose_people(rng: random.Random, dataset: Path | None, employees: int, strangers: int,
                  funds_cents: int = 100_000) -> list[SimPerson]:
    """Employees and strangers from photo folders (<subject>/<image>) or, without any, synthetic hands."""
    people: list[SimPerson] = []
    subjects = []
    if dataset is not None and dataset.is_dir():
        for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) >= 3:
                subjects.append((folder, files))
    rng.shuffle(subjects)
    for i in range(employees + strangers):
        is_employee = i < employees
        if subjects:
            folder, files = subjects.pop()
            key = f"photo:{folder}"
            enroll_count = 2 if len(files) >= 4 else 1
            enroll, present = [str(f) for f in files[:enroll_count]], [str(f) for f in files[enroll_count:]]
        else:
            key = f"synthetic:{1000 + i}"
            enroll, present = [0, 1], list(range(2, 8))
        name = f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {chr(65 + i // len(FIRST_NAMES))}."
        employee_id = f"E{i + 1:04d}" if is_employee else None
        funds = 500 if i % 7 == 3 else funds_cents  # a few run short: refusals for insufficient funds
        status = "suspended" if is_employee and i % 11 == 5 else "active"
        people.append(SimPerson(key, employee_id, name, funds, enroll if is_employee else [], present,
                                status=status))
    return people


def provision(cfg, people: list[SimPerson], recognizer, rng: random.Random) -> None:
    """First run (or a stale bundle): enroll the employees here and load them with a signed bundle."""
    employees = [(p.employee_id, p.name, p.funds_cents, p.status) for p in people if p.employee_id]
    templates = {p.employee_id: recognizer.enroll(p.images("enroll")).template for p in people if p.employee_id}
    provision_bundle(cfg, employees, templates)


def provision_bundle(cfg, employees: list[tuple], templates: dict[str, bytes], policy: dict | None = None) -> None:
    """Play the back office: fleet keys (kept under <state_dir>/sim_fleet), the unit's keys, and a signed
    snapshot bundle of ``employees`` = [(id, name, funds_cents, status)] with their templates, imported."""
    from .accounts import AccountStore
    from .bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, TemplateRecord, encode_bundle, \
        write_bundle_file
    from .keys import KeyStore, TemplateCipher, generate_fleet_keys, load_signing_key_file, \
        load_symmetric_key_file

    state_dir = Path(cfg.state_dir)
    fleet_dir = state_dir / FLEET_DIR
    if not (fleet_dir / "fleet_signing.key").exists():
        generate_fleet_keys(fleet_dir)
    store = KeyStore.from_config(cfg)
    store.pin_fleet_public_key((fleet_dir / "fleet_public_key.pem").read_bytes())
    template_key = load_symmetric_key_file(fleet_dir / "fleet_template.key", "fleet template key")
    store.install_fleet_template_key(template_key)
    store.write_unit_id(cfg.unit.unit_id)
    store.ensure_data_key()
    store.ensure_signing_key()
    cipher = TemplateCipher(template_key, TEMPLATE_TRANSPORT_PURPOSE)
    now = time.time()
    records = [EmployeeRecord(eid, name, status=status, funds_cents=funds) for eid, name, funds, status in employees]
    sealed = [TemplateRecord(eid, cipher.seal(eid, template), "sim-consent-1", now)
              for eid, template in templates.items()]
    policy = {"per_day_cap_cents": 10_000_000, "unsynced_total_cap_cents": 1_000_000_000} if policy is None \
        else policy
    bundle = Bundle(kind="snapshot", version=int(now * 1000), created=now, expires=now + 7 * 86400,
                    policy=policy, employees=records, templates=sealed)
    path = state_dir / "sim_bundle.vnb"
    write_bundle_file(path, encode_bundle(bundle, load_signing_key_file(fleet_dir / "fleet_signing.key")))
    with AccountStore.open(cfg) as accounts:
        accounts.import_bundle(path)


def load_or_create_people(cfg, args, rng: random.Random, recognizer) -> list[SimPerson]:
    state_dir = Path(cfg.state_dir)
    path = state_dir / PEOPLE_FILE
    if path.is_file():
        raw = json.loads(path.read_text(encoding="utf-8"))
        people = [SimPerson(**p) for p in raw]
        from .accounts import AccountStore

        with AccountStore.open(cfg) as accounts:
            stale = accounts.out_of_service_reason()
        if stale:  # the simulated back office sends a fresh bundle, as the nightly sync would
            log.info("bundle needs renewing (%s): provisioning a new one", stale)
            provision(cfg, people, recognizer, rng)
        return people
    dataset = getattr(args, "dataset", None) or (HANDDATA_DEFAULT if HANDDATA_DEFAULT.is_dir() else None)
    if getattr(args, "synthetic", False):
        dataset = None
    people = choose_people(rng, dataset, employees=getattr(args, "employees", 12), strangers=4)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    provision(cfg, people, recognizer, rng)
    path.write_text(json.dumps([p.__dict__ for p in people], indent=1), encoding="utf-8")
    return people


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
        from .accounts import AbuseGuard, AccountStore
        from .camera import SimCamera
        from .journal import Journal
        from .proximity import open_panel
        from .service import PurchaseLoop
        from .storage import open_db
        from .unit import open_board
        from .vmc_sim import VendingMachineSimulator

        self.vmc = VendingMachineSimulator(**self.vmc_options).start()
        self.conn = open_db(self.cfg.state_dir)
        self.journal = Journal(self.conn)
        self.accounts = AccountStore(self.cfg, self.conn, self.journal)
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
        for closer in (self.board.close, self.panel.close, self.camera.close, self.vmc.stop, self.conn.close):
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

    def present(self) -> None:
        image = self.images[self.shown % len(self.images)]
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
    from .journal import OUTCOME_UNKNOWN, VEND_APPROVED, VEND_SUCCEEDED, VEND_VOIDED

    summary = {"approved": 0, "charged": 0, "charged_cents": 0, "voided": {}, "outcome_unknown": 0}
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
    return summary


def run_simulation(args) -> int:
    from .config import load_config

    if args.customers < 1:
        raise UsageError("--customers must be at least 1")
    cfg = sim_config(load_config(getattr(args, "config", None), hardware="sim", state_dir=args.state_dir))
    rng = random.Random(args.seed)
    unit_log = logging.getLogger("vendor_node.unit")
    level = unit_log.level
    if not getattr(args, "quiet", False) and not unit_log.isEnabledFor(logging.DEBUG):
        unit_log.setLevel(logging.WARNING)  # each purchase is printed on stdout; do not log it twice
    try:
        return _simulate_command(args, cfg, rng)
    finally:
        unit_log.setLevel(level)


def _simulate_command(args, cfg, rng: random.Random) -> int:
    from .recognition import Recognizer

    recognizer = Recognizer.from_config(cfg)
    people = load_or_create_people(cfg, args, rng, recognizer)
    employees = [p for p in people if p.employee_id]
    strangers = [p for p in people if not p.employee_id]
    images = {p.key: p.images("present") for p in people}
    source = "real photos" if people[0].key.startswith("photo:") else "synthetic hands"
    print(f"simulated unit in {cfg.state_dir}: {len(employees)} employees, {len(strangers)} strangers "
          f"({source}); {args.customers} customers", flush=True)
    report = simulate_customers(cfg, recognizer, people, images, args.customers, rng,
                                echo=not getattr(args, "quiet", False))
    report.update({"state_dir": str(cfg.state_dir), "hand_images": source, "seed": args.seed})
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
    employees = [p for p in people if p.employee_id] or people
    strangers = [p for p in people if not p.employee_id] or employees
    behaviours, weights = zip(*BEHAVIOUR_WEIGHTS.items())
    records = []
    truth: list[tuple[str | None, str | None]] = []  # (who really came, whom the unit identified)
    printer = (lambda p: print(p.line(), flush=True)) if echo else None
    options = {"patience_s": 2.0, "reader_timeout_s": 5.0, "session_timeout_s": 10.0, "keep_history": 1000}
    options.update(vmc_options or {})
    started = time.monotonic()
    with SimUnit(cfg, recognizer, vmc_options=options, on_purchase=printer) as unit:
        if not unit.wait_in_service(10.0):
            raise UsageError(f"the simulated unit did not come into service: {unit.loop.faults}")
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
        "journal_chain_ok": bool(chain.ok),
        "elapsed_s": round(elapsed, 1),
        "latency_note": "hand first: IR trigger to the session with the employee's funds written to the board "
                        "(C,START answered); selection first: IR trigger to approve_vend (C,VEND written)",
    }
