"""`simulate --office URL`: the simulated unit syncs with a running back office instead of playing one.

The unit is set up as a technician would: `vendor-node provision` with the office's fleet public
key and template key, `vendor-node office register-unit` with the fingerprint (scripts/dev.sh does
both). Then the first sync brings the office's employees and funds, the simulated employees enroll
here (their sealed templates go up on the next sync), customers buy, and a final sync pushes the
journal; the report's ``office`` section is what the office's ledger holds for this unit, read back
from a fleet-signed summary, next to the unit's own ``charged_cents``.
"""
from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

from ..errors import SyncError, UsageError

log = logging.getLogger("vendor_node.simulate")
CONSENT_VERSION = "sim-consent-1"


def office_config(cfg, server_url: str):
    """The simulated unit's config pointed at the office, with the provisioned unit id."""
    from ..unit.keysource import unit_keystore

    store = unit_keystore(cfg)
    unit_id = store.read_unit_id()
    if unit_id is None or not store.fleet_public_key_path.is_file():
        raise UsageError(f"{cfg.state_dir}: not provisioned for an office; run `vendor-node provision --state-dir "
                         f"{cfg.state_dir} --unit-id ID --fleet-public-key FLEET.pem --fleet-template-key KEY` "
                         "and register the fingerprint it prints at the office (scripts/dev.sh shows how)")
    return cfg.replace(unit={"unit_id": unit_id}, sync={"server_url": server_url})


def sync_once(cfg, what: str):
    from ..money.sync import run_sync, transport_from

    from ..unit.keysource import unit_keystore

    keystore = unit_keystore(cfg)
    report = run_sync(cfg, transport_from(cfg, keystore=keystore), keystore)
    if report.errors:
        raise SyncError(f"{what}: {'; '.join(report.errors)}")
    return report


def office_people(cfg, args, rng, recognizer):
    """People for the run, their employees enrolled at this unit and known to the office."""
    from ..money.accounts import AccountStore
    from ..unit.keysource import unit_keystore
    from .provision import HANDDATA_DEFAULT, PEOPLE_FILE, SimPerson, choose_people

    path = Path(cfg.state_dir) / PEOPLE_FILE
    if path.is_file():
        people = [SimPerson(**p) for p in json.loads(path.read_text(encoding="utf-8"))]
    else:
        dataset = getattr(args, "dataset", None) or (HANDDATA_DEFAULT if HANDDATA_DEFAULT.is_dir() else None)
        people = choose_people(rng, None if getattr(args, "synthetic", False) else dataset,
                               employees=getattr(args, "employees", 12), strangers=4)
        path.write_text(json.dumps([p.__dict__ for p in people], indent=1), encoding="utf-8")
    sync_once(cfg, "first sync with the office")  # its employees and their funds
    enrolled = 0
    with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as store:
        have = set(store.templates())
        for person in people:
            emp = store.employee(person.employee_id) if person.employee_id else None
            if emp is not None and emp.status != "deleted" and person.employee_id not in have:
                store.enroll(person.employee_id, recognizer.enroll(person.images("enroll")).template, CONSENT_VERSION)
                enrolled += 1
        known = {e.id for e in store.employees() if e.status != "deleted"}
    missing = [p.employee_id for p in people if p.employee_id and p.employee_id not in known]
    if missing:
        log.warning("the office does not know %s: they stay strangers here", ", ".join(missing))
        people = [p if p.employee_id not in missing else SimPerson(**{**p.__dict__, "employee_id": None})
                  for p in people]
    if enrolled:
        sync_once(cfg, "sending the new enrollments to the office")
    return people


def office_summary(cfg) -> dict:
    """The office's ledger for this unit (fleet-signed), after a final sync pushed the journal."""
    from ..money.sync import verify_receipt
    from ..unit.keysource import unit_keystore
    from ..money.sync_transport import signed_headers

    sync_once(cfg, "final sync with the office")
    store = unit_keystore(cfg)
    path = f"/api/v1/units/{cfg.unit.unit_id}/summary"
    headers = signed_headers(store.load_signing_key(), cfg.unit.unit_id, "GET", path, b"")
    request = urllib.request.Request(cfg.sync.server_url.rstrip("/") + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=cfg.sync.timeout_s) as answer:
            document = json.loads(answer.read(1024 * 1024))
    except (OSError, ValueError) as exc:
        raise SyncError(f"office summary: {exc}") from None
    receipt = verify_receipt(document, store.load_fleet_public_key(), "summary", cfg.unit.unit_id, "office summary")
    return {"url": cfg.sync.server_url, "unit_id": cfg.unit.unit_id, "charged_cents": receipt["charged_cents"],
            "entries": receipt["entries"], "last_seq": receipt["last_seq"],
            "unit_charged_cents_all_runs": unit_charged_all_runs(cfg)}


def unit_charged_all_runs(cfg) -> int:
    """Every charge in this unit's journal (all runs of a kept state dir): what the office must hold."""
    from ..money.journal import Journal
    from ..money.journal_schema import REVIEW_SETTLED, VEND_SUCCEEDED

    with Journal.open(cfg.state_dir) as journal:
        return sum(e.amount_cents or 0 for e in journal.entries(0)
                   if e.kind == VEND_SUCCEEDED or (e.kind == REVIEW_SETTLED and (e.amount_cents or 0) > 0))
