"""`vendor-node bench memory`: the two memory figures of issues 12 and 15, each in a fresh process.

1. Bundle import of 50,000 employees, peak resident memory (VmHWM) of the importing process, target 150 MB:
   the bundle carries 1 KiB sealed blobs, the largest template a bundle may hold, so the file (83 MB) is the
   worst case for that count; it is made in one process and imported (streamed) in another.
2. The unit at ``--employees`` (default 10,000): resident memory at READY and after a few customers, target
   150 MB (250 MB at 100,000), from bench/loop.py's provisioning and measurement.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ..heap import peak_rss_mb, rss_mb
from .figures import record

IMPORT_EMPLOYEES = 50_000
IMPORT_TARGET_MB = 150.0
UNIT_CUSTOMERS = 50


def run(args, cfg) -> int:
    from .loop import RSS_TARGET_100K_MB, _in_fresh_process, _measure, _prepare

    employees = getattr(args, "employees", None) or 10_000
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        made = _in_fresh_process(_make_bundle, Path(tmp), IMPORT_EMPLOYEES)
        imported = _in_fresh_process(_import_bundle, Path(tmp))
        print(f"bundle of {IMPORT_EMPLOYEES} employees with 1 KiB templates: {made['bytes'] / 1e6:.1f} MB; "
              f"imported in {imported['seconds']:.1f} s", flush=True)
        _prepare_result = _in_fresh_process(_prepare, cfg, Path(tmp) / "unit", employees)
        unit = _in_fresh_process(_measure, cfg, Path(tmp) / "unit", UNIT_CUSTOMERS, False)
    unit_target = 150.0 if employees <= 10_000 else RSS_TARGET_100K_MB
    rows = [
        (f"bundle import of {IMPORT_EMPLOYEES}: peak RSS", imported["peak_mb"], IMPORT_TARGET_MB),
        (f"bundle import of {IMPORT_EMPLOYEES}: RSS before", imported["before_mb"], None),
        (f"unit at {employees} employees: RSS at READY", unit["rss_ready_mb"], unit_target),
        (f"unit at {employees} employees: RSS after {UNIT_CUSTOMERS} customers", unit["rss_steady_mb"] +
         unit["rss_growth_mb"], unit_target),
        (f"unit at {employees} employees: RSS after imports", unit["rss_imports_mb"], None),
        (f"unit at {employees} employees: RSS with the model loaded", unit["rss_model_mb"], None),
        (f"unit at {employees}: provisioning process peak (the office's side)", _prepare_result["import_peak_mb"],
         None),
    ]
    print(f"{'figure':<66} {'MB':>8} {'target':>7}")
    met = True
    for name, value, target in rows:
        ok = target is None or value <= target
        met = met and ok
        record(name, value, "MB", target)
        print(f"{name:<66} {value:>8.1f} " + (f"{target:>7g}" if target else f"{'-':>7}") + ("" if ok else "  MISSED"))
    print("all targets met" if met else "TARGET MISSED")
    return 0 if met else 1


def _make_bundle(tmp: Path, employees: int) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..config import Config
    from ..money.bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, TemplateRecord, encode_bundle
    from ..money.keys import TemplateCipher, public_key_to_pem

    signer, template_key = Ed25519PrivateKey.generate(), os.urandom(32)
    transport = TemplateCipher(template_key, TEMPLATE_TRANSPORT_PURPOSE)
    now = time.time()
    staff = [EmployeeRecord(f"E{i:06d}", f"Employee {i}", funds_cents=10_000) for i in range(employees)]
    templates = [TemplateRecord(e.id, transport.seal(e.id, os.urandom(1024)), "consent-1", now) for e in staff]
    data = encode_bundle(Bundle(kind="snapshot", version=1, created=now, expires=now + 86400,
                                unit_id=Config().unit.unit_id, employees=staff, templates=templates), signer)
    (tmp / "bundle.vnb").write_bytes(data)
    (tmp / "template.key").write_bytes(template_key)
    (tmp / "fleet.pem").write_bytes(public_key_to_pem(signer.public_key()))
    return {"bytes": len(data)}


def _import_bundle(tmp: Path) -> dict:
    from ..config import Config
    from ..money.accounts import AccountStore
    from ..money.keys import KeyStore

    cfg = Config().replace(unit={"state_dir": tmp / "importing"})
    keys = KeyStore.from_config(cfg)
    keys.pin_fleet_public_key((tmp / "fleet.pem").read_bytes())
    keys.install_fleet_template_key((tmp / "template.key").read_bytes())
    with AccountStore.open(cfg) as store:
        before = rss_mb()
        started = time.perf_counter()
        info = store.import_bundle(tmp / "bundle.vnb")
        seconds = time.perf_counter() - started
    return {"before_mb": before, "peak_mb": peak_rss_mb(), "seconds": seconds, "templates": info.templates}
