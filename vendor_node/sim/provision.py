"""The simulated people and back office for `vendor-node simulate`: who comes to the machine, their
enrollment, and the signed account bundle a real back office would send.

Employees are enrolled from real photos in ../shared/handdata when present (one or two images each,
the others are presented), otherwise from hands the project draws (sim/drawn_hands.py); from
``CACHE_FROM`` drawn employees on, their templates come from the template cache (template_cache.py: the same
enrollment, made once per model). Strangers present hands of people not enrolled. Presentations are drawn
(or read) when a customer shows them, never held for a whole office. The people are kept in ``<state_dir>/sim_people.json`` so a second run
meets the same employees; a stale bundle is renewed as the nightly sync would.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .template_cache import CAMERA_SIZE, ENROLL_SAMPLES, PRESENT_SAMPLES, drawn_templates

log = logging.getLogger("vendor_node.simulate")

HANDDATA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "handdata" / "coep_dev"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PEOPLE_FILE = "sim_people.json"
FLEET_DIR = "sim_fleet"  # the simulated back office's keys (a real unit never holds the signing key)
CACHE_FROM = 50  # drawn employees from which their templates come from the template cache
FIRST_STRANGER_SEED = 5_000_000  # drawn strangers: far from every cached employee's seed


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

    def presentations(self) -> "Presentations":
        return Presentations(self.key, self.present)


class Presentations(Sequence):
    """A person's presentations, each drawn or read when shown (10,000 people's frames would be gigabytes)."""

    def __init__(self, key: str, refs: list):
        self.key, self.refs = key, list(refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Presentations(self.key, self.refs[index])
        return load_sim_image(self.key, self.refs[index])


def load_sim_image(key: str, ref) -> np.ndarray:
    """One presentation, as the unit's camera would deliver it (greyscale, at most 640x480)."""
    if key.startswith("synthetic:"):
        from .drawn_hands import draw_hand

        return draw_hand(int(key.split(":", 1)[1]), int(ref), size=(CAMERA_SIZE[1], CAMERA_SIZE[0]))
    import cv2

    from ..images import read_grey

    image = read_grey(ref)
    scale = min(CAMERA_SIZE[0] / image.shape[1], CAMERA_SIZE[1] / image.shape[0], 1.0)
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


FIRST_NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kai", "Lena",
               "Mo", "Nina", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wen", "Xena"]


def initials(n: int) -> str:
    """A, B, ... Z, AA, AB, ...: a surname initial for each of any number of people sharing a first name."""
    letters = chr(65 + n % 26)
    while n >= 26:
        n = n // 26 - 1
        letters = chr(65 + n % 26) + letters
    return letters


def choose_people(rng: random.Random, dataset: Path | None, employees: int, strangers: int,
                  funds_cents: int = 100_000, drawn_seeds: list[int] | None = None) -> list[SimPerson]:
    """Employees and strangers from photo folders (<subject>/<image>) or, without any, synthetic hands
    (employees drawn from ``drawn_seeds`` in order when given, e.g. the template cache's, else 1000 on)."""
    people: list[SimPerson] = []
    subjects = []
    if dataset is not None and dataset.is_dir():
        for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) >= 3:
                subjects.append((folder, files))
    rng.shuffle(subjects)
    drawn = iter(drawn_seeds) if drawn_seeds is not None else iter(range(1000, 1000 + employees))
    for i in range(employees + strangers):
        is_employee = i < employees
        if subjects:
            folder, files = subjects.pop()
            key = f"photo:{folder}"
            enroll_count = 2 if len(files) >= 4 else 1
            enroll, present = [str(f) for f in files[:enroll_count]], [str(f) for f in files[enroll_count:]]
        else:
            seed = next(drawn) if is_employee else FIRST_STRANGER_SEED + i
            key = f"synthetic:{seed}"
            enroll, present = list(ENROLL_SAMPLES), list(PRESENT_SAMPLES)
        name = f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {initials(i // len(FIRST_NAMES))}."
        employee_id = f"E{i + 1:04d}" if is_employee else None
        funds = 500 if i % 7 == 3 else funds_cents  # a few run short: refusals for insufficient funds
        status = "suspended" if is_employee and i % 11 == 5 else "active"
        people.append(SimPerson(key, employee_id, name, funds, enroll if is_employee else [], present,
                                status=status))
    return people


def provision(cfg, people: list[SimPerson], recognizer, rng: random.Random, progress: bool = False) -> None:
    """First run (or a stale bundle): enroll the employees here and load them with a signed bundle."""
    employees = [(p.employee_id, p.name, p.funds_cents, p.status) for p in people if p.employee_id]
    provision_bundle(cfg, employees, enrolled_templates(cfg, people, recognizer, progress))


def enrolled_templates(cfg, people: list[SimPerson], recognizer, progress: bool = False) -> dict[str, bytes]:
    """Each employee's template as the unit stores it: drawn ones from the template cache when there are many
    (made there through the same enrollment), photo ones enrolled now; guarded when the recognizer guards."""
    employees = [p for p in people if p.employee_id]
    drawn = [int(p.key.split(":", 1)[1]) for p in employees if p.key.startswith("synthetic:")]
    cached = dict(drawn_templates(cfg, recognizer, len(drawn), progress=progress)) \
        if len(drawn) >= CACHE_FROM else {}
    guard = getattr(recognizer, "guard", None)
    templates = {}
    for p in employees:
        seed = int(p.key.split(":", 1)[1]) if p.key.startswith("synthetic:") else None
        if seed in cached:
            templates[p.employee_id] = guard.protect(cached[seed]) if guard else cached[seed]
        else:
            templates[p.employee_id] = recognizer.enroll(p.images("enroll")).template
    return templates


def provision_bundle(cfg, employees: list[tuple], templates: dict[str, bytes], policy: dict | None = None) -> None:
    """Play the back office: fleet keys (kept under <state_dir>/sim_fleet), the unit's keys, and a signed
    snapshot bundle of ``employees`` = [(id, name, funds_cents, status)] with their templates, imported."""
    from ..money.accounts import AccountStore
    from ..money.bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, TemplateRecord, encode_bundle, \
        write_bundle_file
    from ..money.keys import TemplateCipher, generate_fleet_keys, load_signing_key_file, load_symmetric_key_file
    from ..unit.keysource import unit_keystore

    state_dir = Path(cfg.state_dir)
    fleet_dir = state_dir / FLEET_DIR
    if not (fleet_dir / "fleet_signing.key").exists():
        generate_fleet_keys(fleet_dir)
    store = unit_keystore(cfg)  # [keys] mode = "otp" with keys.otp_file: the simulated board's OTP key
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
    # funds are what each person was given (no other unit charges them): position 0, so the unit
    # subtracts every charge in its own journal, as a real office's ledger would
    bundle = Bundle(kind="snapshot", version=int(now * 1000), created=now, expires=now + 7 * 86400,
                    unit_id=cfg.unit.unit_id, policy=policy, employees=records, templates=sealed)
    path = state_dir / "sim_bundle.vnb"
    write_bundle_file(path, encode_bundle(bundle, load_signing_key_file(fleet_dir / "fleet_signing.key")))
    with AccountStore.open(cfg, keystore=store) as accounts:
        accounts.import_bundle(path)


def load_or_create_people(cfg, args, rng: random.Random, recognizer) -> list[SimPerson]:
    state_dir = Path(cfg.state_dir)
    path = state_dir / PEOPLE_FILE
    if path.is_file():
        raw = json.loads(path.read_text(encoding="utf-8"))
        people = [SimPerson(**p) for p in raw]
        from ..money.accounts import AccountStore
        from ..unit.keysource import unit_keystore

        with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as accounts:
            stale = accounts.out_of_service_reason()
        if stale:  # the simulated back office sends a fresh bundle, as the nightly sync would
            log.info("bundle needs renewing (%s): provisioning a new one", stale)
            provision(cfg, people, recognizer, rng, progress=True)
        return people
    dataset = getattr(args, "dataset", None) or (HANDDATA_DEFAULT if HANDDATA_DEFAULT.is_dir() else None)
    if getattr(args, "synthetic", False):
        dataset = None
    employees = getattr(args, "employees", 12)
    progress = True  # on stderr: --quiet silences the purchases, not the minutes of preparing
    drawn_seeds = None
    if employees >= CACHE_FROM:  # the cache's people: those whose drawn hands enroll
        drawn_seeds = [seed for seed, _ in drawn_templates(cfg, recognizer, employees, progress=progress)]
    people = choose_people(rng, dataset, employees=employees, strangers=4, drawn_seeds=drawn_seeds)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    provision(cfg, people, recognizer, rng, progress=progress)
    path.write_text(json.dumps([p.__dict__ for p in people], indent=1), encoding="utf-8")
    return people
