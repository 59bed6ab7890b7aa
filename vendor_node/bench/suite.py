"""`vendor-node bench ...`: speed and memory figures printed as tables with ratios to their targets.

Benchmarks live here, not in unit tests, so a slow CI machine never flakes a test.
"""
from __future__ import annotations

from .figures import record


def run(what: str, args, cfg) -> int:
    """Dispatch to one benchmark; each prints a table and returns an exit code.

    ``cfg`` is the unit's config as the command line chose it (the recognition bench loads its model from it).
    """
    if what == "recognition":
        return bench_recognition(args, cfg)
    if what == "accounts":
        return bench_accounts(args)
    if what == "loop":
        return bench_loop(args, cfg)
    if what == "memory":  # bundle import of 50,000 and the unit at --employees (bench/memory.py)
        from . import memory

        return memory.run(args, cfg)
    if what == "template-guard":  # renewing the fleet's template guard secret (bench/template_guard.py)
        from . import template_guard

        return template_guard.run(args, cfg)
    raise ValueError(what)


def bench_recognition(args, cfg) -> int:  # owned by the recognition engineer
    """Preprocess, model and 1:N match latency vs 100 / 1,000 / 10,000 templates, and memory (bench/recognition.py)."""
    from . import recognition

    return recognition.run(args, cfg)


def bench_accounts(args) -> int:  # owned by the accounts engineer
    """Apply a 10,000-employee bundle (target <= 2 s) and authorize + durable journal approve (<= 5 ms p95).

    Runs in a temporary state folder on the same disk as $TMPDIR (real fsyncs: WAL, synchronous=FULL).
    """
    import os
    import statistics
    import tempfile
    import time
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..money.accounts import AccountStore
    from ..money.bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, TemplateRecord, encode_bundle
    from ..config import Config
    from ..money.keys import KeyStore, TemplateCipher, public_key_to_pem

    employees, purchases, runs, history = 10_000, 500, 3, 3000
    signer, template_key = Ed25519PrivateKey.generate(), os.urandom(32)
    transport = TemplateCipher(template_key, TEMPLATE_TRANSPORT_PURPOSE)
    now = time.time()
    staff = [EmployeeRecord(f"E{i:05d}", f"Employee {i}", funds_cents=1_000_000) for i in range(employees)]
    templates = [TemplateRecord(e.id, transport.seal(e.id, os.urandom(1024)), "consent-1", now) for e in staff]
    policy = {"per_day_cap_cents": 10 ** 9, "unsynced_total_cap_cents": 10 ** 9}
    data = encode_bundle(Bundle(kind="snapshot", version=1, created=now, expires=now + 86400, policy=policy,
                                unit_id=Config().unit.unit_id, employees=staff, templates=templates), signer)
    print(f"bundle: {employees} employees with 1 KiB templates, {len(data) / 1e6:.1f} MB; {runs} runs; "
          f"{purchases} purchases timed after {history} synced ones")

    apply_s, decrypt_s, authorize_ms, total_ms = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-accounts-") as tmp:
        bundle_path = Path(tmp) / "bundle.vnb"
        bundle_path.write_bytes(data)
        for run in range(runs):
            cfg = Config().replace(unit={"state_dir": Path(tmp) / f"state{run}"})
            keys = KeyStore.from_config(cfg)
            keys.pin_fleet_public_key(public_key_to_pem(signer.public_key()))
            keys.install_fleet_template_key(template_key)
            with AccountStore.open(cfg) as store:
                t0 = time.perf_counter()
                store.import_bundle(bundle_path)
                apply_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                loaded = store.templates()
                decrypt_s.append(time.perf_counter() - t0)
                assert len(loaded) == employees
                if run:
                    continue
                journal = store.journal
                for i in range(history):  # a unit some weeks into service, its journal synced
                    session = journal.begin_session()
                    journal.approve(session, staff[i % employees].id, "A1", 150)
                    journal.succeed(session)
                journal.mark_uploaded(journal.head()[0])
                for i in range(purchases):
                    employee = staff[(i * 37) % employees].id
                    session = journal.begin_session()
                    t0 = time.perf_counter()
                    answer = store.authorize(employee, 150)
                    t1 = time.perf_counter()
                    if not answer.approved:
                        raise RuntimeError(f"bench purchase refused: {answer.reason_code}")
                    journal.approve(session, employee, "A1", 150)
                    t2 = time.perf_counter()
                    journal.succeed(session)
                    authorize_ms.append((t1 - t0) * 1e3)
                    total_ms.append((t2 - t0) * 1e3)

    def p95(samples):
        return sorted(samples)[min(len(samples) - 1, int(0.95 * len(samples)))]

    from .journal import bench_store_after_history

    history = {n: bench_store_after_history(n) for n in (10_000, 100_000)}  # unsynced purchases, 100 employees
    rows = [
        ("apply 10k bundle (verify+parse+reseal+commit), median", statistics.median(apply_s), "s", 2.0),
        ("apply 10k bundle, worst run", max(apply_s), "s", 2.0),
        ("authorize + durable approve, p95", p95(total_ms), "ms", 5.0),
        ("authorize + durable approve, p50", statistics.median(total_ms), "ms", None),
        ("authorize alone, p95", p95(authorize_ms), "ms", None),
        ("decrypt 10k templates for the gallery", statistics.median(decrypt_s), "s", None),
        ("store's part of a purchase after 10k unsynced, p95", history[10_000]["p95"], "ms", 2.0),
        ("store's part of a purchase after 100k unsynced, p95", history[100_000]["p95"], "ms", 2.0),
    ]
    print(f"{'figure':<56} {'measured':>10} {'target':>8} {'ratio':>6}")
    met = True
    for name, value, unit, target in rows:
        record(name, value, unit, target)
        ratio = f"{value / target:.2f}" if target else "-"
        met = met and (target is None or value <= target)
        print(f"{name:<56} {value:>8.3f} {unit:<2}" + (f" {target:>6g} {unit:<2}" if target else f" {'-':>9}")
              + f" {ratio:>6}")
    print("all targets met" if met else "TARGET MISSED")
    return 0 if met else 1


def bench_loop(args, cfg) -> int:
    """The whole simulated unit at ``--employees`` beside one of 100 employees (bench/loop.py)."""
    from . import loop

    return loop.run(args, cfg)
