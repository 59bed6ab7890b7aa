"""The simulated people and back office for `vendor-node simulate`: who comes to the machine, their
enrollment, and the signed account bundle a real back office would send.

Employees are enrolled from real photos in ../shared/handdata when present (one or two images each,
the others are presented), otherwise from hands the project draws (sim/drawn_hands.py). Strangers present
hands of people not enrolled. The people are kept in ``<state_dir>/sim_people.json`` so a second run
meets the same employees; a stale bundle is renewed as the nightly sync would.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


log = logging.getLogger("vendor_node.simulate")

HANDDATA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "handdata" / "coep_dev"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CAMERA_SIZE = (640, 480)
PEOPLE_FILE = "sim_people.json"
FLEET_DIR = "sim_fleet"  # the simulated back office's keys (a real unit never holds the signing key)


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
