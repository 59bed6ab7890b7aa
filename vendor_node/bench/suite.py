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
        return bench_loop(args)
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


def bench_loop(args) -> int:  # owned by the unit engineer
    """The whole simulated unit over many customers: resident memory steady state and growth, trigger->board.

    Runs SimUnit (the real loop, recognizer, accounts, journal and MDB protocol over a pty) against a fast
    simulated machine with drawn hands; ``--customers`` (or $VENDOR_NODE_BENCH_CUSTOMERS, default 10000).
    The simulator keeps only its last records (exact totals aside) so the unit's memory is what is measured.
    """
    import array
    import os
    import random
    import tempfile
    import time
    from pathlib import Path

    from ..config import Config
    from ..hand.recognition import Recognizer
    from ..sim.provision import choose_people, provision
    from ..sim.simulate import MENU, Customer, SimUnit, sim_config

    customers = getattr(args, "customers", None) or int(os.environ.get("VENDOR_NODE_BENCH_CUSTOMERS", "10000"))
    if not getattr(args, "verbose", False):  # 10,000 purchase lines would bury the table (-v shows them)
        import logging

        logging.getLogger("vendor_node").setLevel(logging.WARNING)
    warmup = max(50, min(500, customers // 10))
    rng = random.Random(7)

    def rss_mb() -> float:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS in /proc/self/status")

    latencies = array.array("d")
    checkpoints: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        # no cool-down: customers here come back to back, hundreds a minute
        cfg = sim_config(Config()).replace(unit={"state_dir": Path(tmp), "unit_id": "bench"},
                                           abuse={"max_failures": 10 ** 9})
        recognizer = Recognizer.from_config(cfg)
        people = choose_people(rng, None, employees=8, strangers=2, funds_cents=100_000_000)
        provision(cfg, people, recognizer, rng)
        images = {p.key: p.images("present")[:3] for p in people}  # the simulator's images, kept small
        employees = [p for p in people if p.employee_id]
        strangers = [p for p in people if not p.employee_id]
        fast_machine = {"think_s": 0.001, "vend_time_s": 0.002, "slow_s": 0.02, "cancel_after_s": 0.02,
                        "patience_s": 2.0, "reader_timeout_s": 5.0, "session_timeout_s": 10.0,
                        "keep_history": 100}  # the simulator's records are not the unit's memory
        started = time.monotonic()
        with SimUnit(cfg, recognizer, vmc_options=fast_machine) as unit:
            if not unit.wait_in_service(10.0):
                print(f"the simulated unit did not come into service: {unit.loop.faults}")
                return 1
            vmc = unit.vmc
            for i in range(1, customers + 1):
                person = rng.choice(strangers) if rng.random() < 0.1 else rng.choice(employees)
                behaviour = rng.choices(["normal", "jam", "cancel"], [0.9, 0.05, 0.05])[0]
                order = "selection_first" if rng.random() < 0.3 else "hand_first"
                purchase = Customer(unit, images[person.key], rng.choice(MENU), behaviour, order).run()
                if unit.error is not None:
                    raise unit.error
                if purchase is not None and purchase.trigger_to_board_ms is not None:
                    latencies.append(purchase.trigger_to_board_ms)
                if i == warmup or (i > warmup and (i - warmup) % max(1, (customers - warmup) // 8) == 0) \
                        or i == customers:
                    checkpoints.append((i, rss_mb()))
                    print(f"  {i:>6} customers  RSS {checkpoints[-1][1]:7.1f} MB  "
                          f"({time.monotonic() - started:.0f} s)", flush=True)
            vmc.wait_idle(5.0)
            vended, vended_cents = vmc.vended_count, vmc.vended_cents
            from ..sim.simulate import journal_summary

            summary = journal_summary(unit.journal, 0)
        elapsed = time.monotonic() - started
    steady = checkpoints[0][1]
    peak = max(mb for _, mb in checkpoints)
    growth = checkpoints[-1][1] - steady
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))] if ordered else float("nan")
    p50 = ordered[len(ordered) // 2] if ordered else float("nan")
    equal = summary["charged"] == vended and summary["charged_cents"] == vended_cents
    rows = [
        (f"RSS steady (after {warmup} customers)", steady, "MB", 150.0),
        ("RSS peak", peak, "MB", 150.0),
        (f"RSS growth over {customers - warmup} customers", growth, "MB", 5.0),
        ("trigger->board p50", p50, "ms", None),
        ("trigger->board p95", p95, "ms", 60.0),
        ("trigger->board max", ordered[-1] if ordered else float("nan"), "ms", None),
    ]
    print(f"\nbench loop: {customers} customers in {elapsed:.0f} s ({customers / elapsed:.1f}/s), "
          f"{summary['charged']} charged, {vended} vended")
    print(f"{'metric':<44} {'measured':>10}    {'target':>8}    {'ratio':>6}")
    met = equal
    record("charges equal successful vends", float(equal), "bool", None)
    for name, value, unit_name, target in rows:
        record(name, value, unit_name, target)
        ratio = f"{value / target:.2f}" if target else "-"
        met = met and (target is None or value <= target)
        print(f"{name:<44} {value:>10.1f} {unit_name:<3}" + (f" {target:>8g} {unit_name:<3}" if target else
                                                              f" {'-':>8}    ") + f" {ratio:>6}")
    print(f"{'charges equal successful vends':<44} {str(equal):>10}")
    print("all targets met" if met else "TARGET MISSED")
    return 0 if met else 1
