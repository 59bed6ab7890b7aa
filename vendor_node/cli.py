"""The `vendor-node` command: one entry point for the unit, technicians and the nightly sync.

Each group of subcommands is added by one function below; the handlers import
their module lazily so `vendor-node --help` stays fast on a Pi Zero.
Exit codes: 0 success, 1 the operation failed (message on stderr), 2 bad usage.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import load_config
from .errors import UsageError, VendorNodeError

log = logging.getLogger("vendor_node")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _config(args):
    """The unit config, with --state-dir and --sim applied when the command has them.

    A provisioned unit's id (written by `vendor-node provision`) wins over the config's,
    so journals and uploads always carry the id the back office knows.
    """
    from .keys import KeyStore

    cfg = load_config(
        getattr(args, "config", None),
        hardware="sim" if getattr(args, "sim", False) else None,
        state_dir=getattr(args, "state_dir", None),
    )
    provisioned = KeyStore.from_config(cfg).read_unit_id()
    if provisioned and provisioned != cfg.unit.unit_id:
        cfg = cfg.replace(unit={"unit_id": provisioned})
    return cfg


# --- recognition (issue 2) --------------------------------------------------
def _add_recognition_commands(sub) -> None:
    p = sub.add_parser("eval", help="measure the recognizer on a folder of hand photos")
    p.add_argument("--dataset", required=True, type=Path, help="folder laid out as <subject>/<image>")
    p.add_argument("--enroll", type=_positive_int, default=1, help="images per subject to enroll (default 1)")
    p.add_argument("--report", type=Path, required=True, help="JSON report to write (a DET curve PNG goes beside it)")
    p.add_argument("--exclude-trained", action="store_true",
                   help="leave out subjects the model manifest says it was trained on (figures on held-out people)")
    p.add_argument("--same-person", type=_subject_pair, action="append", metavar="A,B",
                   help="two subjects that may be one person labelled twice: never scored as impostors (repeatable)")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("bench", help="print speed and memory figures")
    p.add_argument("what", choices=["recognition", "accounts", "loop"], help="which benchmark")
    p.set_defaults(handler=_cmd_bench)


def _subject_pair(text: str) -> tuple[str, str]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise argparse.ArgumentTypeError(f"expected two different subjects as A,B, got {text!r}")
    return parts[0], parts[1]


def _cmd_eval(args) -> int:
    from .evaluation import run_eval

    return run_eval(args)


def _cmd_bench(args) -> int:
    from . import bench

    return bench.run(args.what, args)


# --- accounts, keys, bundles, enrollment (issue 3) -------------------------
def _add_accounts_commands(sub) -> None:
    def state_dir_option(p):
        p.add_argument("--state-dir", type=Path, help="the unit's state folder (default from the config)")

    p = sub.add_parser("provision", help="create the unit's keys and pin the fleet public key")
    p.add_argument("--fleet-public-key", required=True, type=_existing_file, help="fleet public key (PEM)")
    p.add_argument("--unit-id", required=True, help="this unit's id (letters, digits, . _ @ -)")
    p.add_argument("--fleet-template-key", type=_existing_file,
                   help="fleet template key (32-byte file from `fleet keygen`): templates travel under it")
    p.add_argument("--replace-fleet-key", action="store_true", help="trust a new fleet key over the pinned one")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_provision)

    accounts = sub.add_parser("accounts", help="the unit's offline account cache").add_subparsers(
        dest="accounts_command", required=True, metavar="ACTION")
    p = accounts.add_parser("import", help="verify a signed account bundle and apply it atomically")
    p.add_argument("bundle", type=_existing_file, help="bundle file from `vendor-node fleet bundle` or the sync")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_accounts_import)
    p = accounts.add_parser("list", help="employees on this unit (never a template)")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_accounts_list)
    p = accounts.add_parser("purge-templates", help="delete templates unused for template_retention_days")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_accounts_purge)
    p = accounts.add_parser("export-uploads",
                            help="templates enrolled here, still sealed, for `fleet bundle --templates`")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--mark-uploaded", action="store_true", help="then drop them from the upload queue")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_accounts_export_uploads)

    fleet = sub.add_parser("fleet", help="back-office tools: fleet keys and account bundles").add_subparsers(
        dest="fleet_command", required=True, metavar="ACTION")
    p = fleet.add_parser("keygen", help="a new fleet signing key pair and fleet template key")
    p.add_argument("--out", required=True, type=Path, help="folder to write the keys to (must not hold keys)")
    p.set_defaults(handler=_cmd_fleet_keygen)
    from .bundle import CSV_HELP

    p = fleet.add_parser("bundle", help="a signed account bundle from a CSV of employees", epilog=CSV_HELP)
    p.add_argument("--employees", required=True, type=_existing_file, help="CSV of employees")
    p.add_argument("--signing-key", required=True, type=_existing_file, help="fleet signing key (PEM, 0600)")
    p.add_argument("--out", required=True, type=Path, help="bundle file to write")
    p.add_argument("--version", type=_positive_int, help="bundle version (default: now in Unix seconds)")
    p.add_argument("--expires-days", type=_positive_float, default=7.0, help="valid for this many days (default 7)")
    p.add_argument("--delta", action="store_true", help="a delta on --base-version instead of a full snapshot")
    p.add_argument("--base-version", type=_positive_int, help="the version a delta applies on")
    p.add_argument("--templates", type=_existing_file, help="sealed templates from `accounts export-uploads`")
    p.add_argument("--per-day-cap", type=_amount, help="policy: per-employee daily cap, e.g. 15.00")
    p.add_argument("--unsynced-cap", type=_amount, help="policy: the unit's cap on unsynced charges, e.g. 250.00")
    p.add_argument("--max-offline-age-h", type=_positive_float, help="policy: hours a unit may run on this bundle")
    p.set_defaults(handler=_cmd_fleet_bundle)

    p = sub.add_parser("enroll", help="enroll an employee's hand (technician at the unit)")
    p.add_argument("employee_id")
    p.add_argument("--consent", required=True, help="version of the consent form the employee signed")
    p.add_argument("--images", type=_existing_dir, help="folder of hand photos instead of the camera")
    p.add_argument("--sim", action="store_true", help="use the simulated camera")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_enroll)
    p = sub.add_parser("unenroll", help="delete an employee's template (and any queued copy) at once")
    p.add_argument("employee_id")
    state_dir_option(p)
    p.set_defaults(handler=_cmd_unenroll)


MAX_PRESENTATIONS = 5


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _amount(text: str) -> int:
    from .bundle import parse_amount_cents

    try:
        return parse_amount_cents(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _money(cents: int | None) -> str:
    return "-" if cents is None else f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _cmd_provision(args) -> int:
    from .bundle import EMPLOYEE_ID_RE
    from .keys import KeyStore, load_symmetric_key_file, public_key_to_pem

    if not EMPLOYEE_ID_RE.match(args.unit_id):
        raise UsageError(f"--unit-id: {args.unit_id!r} is not a valid id (letters, digits, . _ @ -)")
    cfg = _config(args)
    store = KeyStore.from_config(cfg)
    template_key = (load_symmetric_key_file(args.fleet_template_key, "fleet template key")
                    if args.fleet_template_key else None)
    current_id = store.read_unit_id()
    if current_id not in (None, args.unit_id):  # checked before anything is written
        raise UsageError(f"--unit-id: this unit is already provisioned as {current_id!r}")
    store.pin_fleet_public_key(args.fleet_public_key.read_bytes(), replace=args.replace_fleet_key)
    if template_key is not None:
        store.install_fleet_template_key(template_key)
    store.write_unit_id(args.unit_id)
    store.ensure_data_key()
    signing = store.ensure_signing_key()
    public_pem = store.state_dir / "unit_signing_public.pem"
    public_pem.write_bytes(public_key_to_pem(signing.public_key()))
    print(f"unit {args.unit_id} provisioned in {store.state_dir}")
    print(f"  fleet key pinned: {store.fleet_public_key_path}")
    template_key = "installed" if store.has_fleet_template_key() else "none (enrolled templates stay on this unit)"
    print(f"  fleet template key: {template_key}")
    print(f"  unit signing public key (give it to the back office): {public_pem}")
    return 0


def _cmd_accounts_import(args) -> int:
    from .accounts import AccountStore

    with AccountStore.open(_config(args)) as store:
        info = store.import_bundle(args.bundle)
    print(f"imported {info.kind} v{info.version}: {info.employees} employees, {info.templates} templates, "
          f"{info.deletions} deletions")
    return 0


def _cmd_accounts_list(args) -> int:
    import datetime

    from .accounts import AccountStore

    with AccountStore.open(_config(args)) as store:
        bundle = store.current_bundle()
        reason = store.out_of_service_reason()
        rows = [(e.id, e.display_name, e.status, e.funding,
                 _money(store.funds_left_cents(e)) if e.status != "deleted" else "-",
                 "yes" if e.has_template else "no",
                 datetime.datetime.fromtimestamp(e.last_used_at).strftime("%Y-%m-%d") if e.last_used_at else "-")
                for e in store.employees()]
    if bundle is None:
        print("no account bundle imported")
    else:
        print(f"bundle v{bundle.version} ({bundle.kind}), created "
              f"{datetime.datetime.fromtimestamp(bundle.created):%Y-%m-%d %H:%M}; "
              f"{'OUT OF SERVICE: ' + reason if reason else 'in service'}")
    header = ("id", "name", "status", "funding", "funds left", "template", "last used")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _cmd_accounts_purge(args) -> int:
    from .accounts import AccountStore

    with AccountStore.open(_config(args)) as store:
        count = store.purge_expired_templates()
    print(f"deleted {count} templates unused for {store.cfg.accounts.template_retention_days} days")
    return 0


def _cmd_accounts_export_uploads(args) -> int:
    from .accounts import AccountStore
    from .bundle import TemplateRecord, templates_to_json

    with AccountStore.open(_config(args)) as store:
        pending = store.pending_uploads()
        text = templates_to_json([TemplateRecord(*row) for row in pending])
        try:
            args.out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--out {args.out}: cannot write: {exc}") from None
        if args.mark_uploaded:
            store.mark_uploaded([row[0] for row in pending])
    print(f"wrote {len(pending)} sealed templates to {args.out}")
    return 0


def _cmd_fleet_keygen(args) -> int:
    from .keys import generate_fleet_keys

    paths = generate_fleet_keys(args.out)
    print(f"fleet signing key (keep secret): {paths['signing_key']}")
    print(f"fleet template key (keep secret; give to units at provisioning): {paths['template_key']}")
    print(f"fleet public key (pin on every unit): {paths['public_key']}")
    return 0


def _cmd_fleet_bundle(args) -> int:
    import time

    from .bundle import Bundle, encode_bundle, parse_employees_csv, read_templates_json, write_bundle_file
    from .errors import BundleError
    from .keys import load_signing_key_file

    if args.delta and args.base_version is None:
        raise UsageError("--delta needs --base-version (the version the delta applies on)")
    if args.base_version is not None and not args.delta:
        raise UsageError("--base-version only goes with --delta")
    now = time.time()
    version = args.version or int(now)
    if args.delta and args.base_version >= version:
        raise UsageError(f"--base-version {args.base_version} must be below the version {version}")
    signing_key = load_signing_key_file(args.signing_key)
    employees, deletions = parse_employees_csv(args.employees)
    templates = read_templates_json(args.templates) if args.templates else []
    listed = {e.id for e in employees}
    for record in templates:
        if record.employee_id in deletions or (not args.delta and record.employee_id not in listed):
            raise BundleError(f"{args.templates}: template for {record.employee_id!r}, who is not an employee "
                              f"in {args.employees}")
    policy = {key: value for key, value in (("per_day_cap_cents", args.per_day_cap),
                                            ("unsynced_total_cap_cents", args.unsynced_cap),
                                            ("max_offline_age_h", args.max_offline_age_h)) if value is not None}
    bundle = Bundle(kind="delta" if args.delta else "snapshot", version=version,
                    base_version=args.base_version, created=now, expires=now + args.expires_days * 86400,
                    policy=policy, employees=employees, templates=templates, deletions=deletions)
    write_bundle_file(args.out, encode_bundle(bundle, signing_key))
    print(f"wrote {bundle.kind} v{version} to {args.out}: {len(employees)} employees, {len(templates)} templates, "
          f"{len(deletions)} deletions, expires in {args.expires_days:g} days")
    return 0


def _enrollment_images_from_folder(folder: Path) -> list:
    import cv2

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UsageError(f"--images {folder}: no files in the folder")
    if len(files) > MAX_PRESENTATIONS:
        log.warning("%s holds %d files; using the first %d", folder, len(files), MAX_PRESENTATIONS)
        files = files[:MAX_PRESENTATIONS]
    images = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise UsageError(f"--images: {path} is not an image that can be read")
        images.append(image)
    return images, [p.name for p in files]


def _enrollment_images_from_camera(cfg) -> list:
    from .camera import open_camera

    images = []
    with open_camera(cfg) as camera:
        for i in range(1, MAX_PRESENTATIONS + 1):
            print(f"presentation {i}/{MAX_PRESENTATIONS}: hold the hand flat over the unit, fingers apart",
                  file=sys.stderr)
            if sys.stdin.isatty():
                input("press Enter when the hand is in place ")
            images.append(camera.capture())
    return images, [f"presentation {i}" for i in range(1, len(images) + 1)]


def _cmd_enroll(args) -> int:
    from .accounts import AccountStore
    from .errors import ConsentError

    if not args.consent.strip():
        raise ConsentError("--consent: a consent version is required; no template is stored without one")
    cfg = _config(args)
    with AccountStore.open(cfg) as store:
        employee = store.employee(args.employee_id)
        if employee is None or employee.status == "deleted":
            raise UsageError(f"unknown employee {args.employee_id!r}: import a bundle that lists them first")
        if args.images:
            images, names = _enrollment_images_from_folder(args.images)
        else:
            images, names = _enrollment_images_from_camera(cfg)
        from .recognition import Recognizer

        enrollment = Recognizer.from_config(cfg).enroll(images)
        queued = store.enroll(args.employee_id, enrollment.template, args.consent)
    print(f"enrolled {args.employee_id} ({employee.display_name}) from {len(enrollment.used)} of {len(images)} "
          f"images (consent {args.consent}); "
          + ("queued for upload" if queued else "kept on this unit only (no fleet template key)"))
    for index, reason in enrollment.rejected:
        print(f"  left out {names[index]}: {reason}")
    return 0


def _cmd_unenroll(args) -> int:
    from .accounts import AccountStore

    with AccountStore.open(_config(args)) as store:
        removed = store.unenroll(args.employee_id)
    print(f"template of {args.employee_id} deleted" if removed else f"no template stored for {args.employee_id}")
    return 0


# --- the charging journal (issue 3) -----------------------------------------
def _add_journal_commands(sub) -> None:
    journal = sub.add_parser("journal", help="the charging journal: verify, export for the nightly sync, review")
    jsub = journal.add_subparsers(dest="journal_command", required=True, metavar="JOURNAL_COMMAND")

    def state_dir_arg(p):
        p.add_argument("--state-dir", type=Path, help="the unit's state folder (default from the config)")

    p = jsub.add_parser("verify", help="check the whole hash chain; exit 1 naming the first bad entry")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_verify)

    p = jsub.add_parser("export", help="write the not-yet-uploaded entries as one batch signed by the unit")
    p.add_argument("--out", type=Path, required=True, help="batch file to write (atomically)")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_export)

    p = jsub.add_parser("ack", help="mark an exported batch as uploaded (after the back office confirmed it)")
    p.add_argument("--batch", type=_existing_file, required=True, help="the batch file that was uploaded")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_ack)

    p = jsub.add_parser("open", help="list approvals with no outcome and outcomes awaiting review")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_open)

    p = jsub.add_parser("review", help="settle an 'outcome unknown' session after checking the machine")
    p.add_argument("session_id", help="the session id shown by `journal open`")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--charged", action="store_true", help="the snack did drop: charge the approved amount")
    verdict.add_argument("--not-charged", action="store_true", help="nothing dropped: no charge")
    p.add_argument("--note", default="", help="why (kept in the journal)")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_review)


def _open_existing_journal(args):
    """The journal of an existing unit db: a missing db is an error here, never silently created."""
    from .journal import Journal
    from .storage import DB_NAME

    cfg = _config(args)
    db_path = cfg.state_dir / DB_NAME
    if not db_path.is_file():
        raise VendorNodeError(f"{db_path}: no unit database here (wrong --state-dir?)")
    return cfg, Journal.open(cfg.state_dir)


def _cmd_journal_verify(args) -> int:
    _, journal = _open_existing_journal(args)
    with journal:
        report = journal.verify()
    print(report, file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _cmd_journal_export(args) -> int:
    from .keys import KeyStore

    cfg, journal = _open_existing_journal(args)
    with journal:
        signing_key = KeyStore.from_config(cfg).ensure_signing_key()
        info = journal.export(args.out, signing_key, cfg.unit.unit_id)
    print(f"wrote {info.path}: batch {info.batch_id}, {info.entries} entries (seq {info.first_seq}.."
          f"{info.last_seq}), {info.charged_cents} cents charged")
    return 0


def _cmd_journal_ack(args) -> int:
    from .journal_export import acknowledge_batch
    from .keys import KeyStore

    cfg, journal = _open_existing_journal(args)
    with journal:
        public_key = KeyStore.from_config(cfg).load_signing_key().public_key()
        watermark = acknowledge_batch(journal, args.batch, public_key)
        unsynced = journal.unsynced_total_cents()
    print(f"acknowledged: entries up to seq {watermark} are uploaded; {unsynced} cents still unsynced")
    return 0


def _cmd_journal_open(args) -> int:
    import datetime

    _, journal = _open_existing_journal(args)
    with journal:
        rows = [("open", a) for a in journal.open_approvals()] + [("unknown", a) for a in journal.unknown_outcomes()]
    for state, a in rows:
        when = datetime.datetime.fromtimestamp(a.approved_at).isoformat(timespec="seconds")
        print(f"{state:8} {a.session_id} {when} employee {a.employee_id} item {a.item} {a.amount_cents} cents")
    print(f"{len(rows)} session(s) need attention" if rows else "nothing open")
    return 0


def _cmd_journal_review(args) -> int:
    _, journal = _open_existing_journal(args)
    with journal:
        entry = journal.settle_review(args.session_id, charged=args.charged, note=args.note)
    print(f"session {args.session_id}: {entry.detail} ({entry.amount_cents} cents), seq {entry.seq}")
    return 0


# --- the nightly sync ---------------------------------------------------------
def _add_sync_commands(sub) -> None:
    p = sub.add_parser("sync", help="pull signed bundles, push the journal and sealed templates (nightly timer)")
    p.add_argument("--state-dir", type=Path, help="the unit's state directory (default from the config)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--server", metavar="URL", help="back office URL (default sync.server_url)")
    target.add_argument("--folder", type=_existing_dir, metavar="DIR",
                        help="a folder instead of a server: bundles from DIR/inbox, uploads to DIR/outbox/<unit>")
    p.set_defaults(handler=_cmd_sync)


def _cmd_sync(args) -> int:
    from .sync import run_sync, transport_from

    cfg = _config(args)
    report = run_sync(cfg, transport_from(cfg, folder=args.folder, server_url=args.server))
    print(report.summary())
    return 0 if report.ok else 1


# --- the unit (issue 4) -----------------------------------------------------
def _add_unit_commands(sub) -> None:
    def common(p):
        # SUPPRESS: a --config given before the command (vendor-node --config F run) is kept
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file")
        p.add_argument("--state-dir", type=Path, help="the unit's state folder (default from the config)")

    p = sub.add_parser("run", help="the purchase loop on the hardware named in the config (systemd runs this)")
    p.add_argument("--sim", action="store_true", help="simulated hardware and a simulated vending machine")
    common(p)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("simulate", help="a whole unit on simulated hardware against a vending-machine simulator")
    p.add_argument("--customers", type=_positive_int, required=True, help="how many customers come to the machine")
    p.add_argument("--state-dir", type=Path, required=True,
                   help="the simulated unit's state (kept between runs; provisioned when new)")
    p.add_argument("--report", type=Path, help="JSON report to write")
    p.add_argument("--dataset", type=_existing_dir,
                   help="hand photos as <subject>/<image> (default ../shared/handdata/coep_dev when present, "
                        "else drawn hands)")
    p.add_argument("--synthetic", action="store_true", help="drawn hands even when photos are present")
    p.add_argument("--employees", type=_positive_int, default=12, help="employees to enroll when provisioning")
    p.add_argument("--seed", type=int, default=1, help="random seed for customers and selections")
    p.add_argument("--quiet", action="store_true", help="do not print each purchase")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file")
    p.set_defaults(handler=_cmd_simulate)

    p = sub.add_parser("selftest", help="technician: check config, keys, model, camera, GPIO, serial adapter, journal")
    p.add_argument("--sim", action="store_true", help="check the simulated hardware instead")
    common(p)
    p.set_defaults(handler=_cmd_selftest)


def _cmd_run(args) -> int:
    import signal
    import threading

    from .unit import run_unit

    cfg = _config(args)
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if cfg.unit.hardware != "sim":
        return run_unit(cfg, stop)
    from .vmc_sim import VendingMachineSimulator

    with VendingMachineSimulator() as machine:  # a machine to talk to; no customers come unless scripted
        log.info("simulated vending machine on %s", machine.port_path)
        return run_unit(cfg, stop, board_port=machine.port_path)


def _cmd_simulate(args) -> int:
    from .simulate import run_simulation

    return run_simulation(args)


def _cmd_selftest(args) -> int:
    """Each check prints PASS or FAIL with what it saw; exit 1 when any failed."""
    cfg = _config(args)
    results: list[bool] = []

    def check(name, probe):
        try:
            detail = probe()
            ok = True
        except Exception as exc:  # a technician's tool: every failure is reported, none stops the others
            detail, ok = f"{type(exc).__name__}: {exc}", False
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name:<8} {detail}", flush=True)

    def keys():
        from .keys import KeyStore

        store = KeyStore.from_config(cfg)
        store.load_data_key()
        store.load_signing_key()
        store.load_fleet_public_key()
        return f"data key, unit signing key and pinned fleet key load ({store.keys_dir})"

    def model():
        from .model import Embedder

        embedder = Embedder.load(cfg.unit.assets_dir)
        return f"{embedder.model_path.name} matches the sha256 in its manifest"

    def camera():
        from .camera import open_camera

        with open_camera(cfg) as cam:
            cam.check()
        return f"{cfg.unit.hardware} camera delivers frames ({cfg.camera.width}x{cfg.camera.height})"

    def gpio():
        from .proximity import open_panel

        with open_panel(cfg) as panel:
            panel.show("working")
            present = panel.hand_present()
            panel.show("ready")
        return (f"sensor pin {cfg.gpio.proximity_pin} reads {'a hand' if present else 'nothing'}, "
                f"LED and buzzer set up")

    def serial_adapter():
        from .unit import open_board

        def ping(port=None):
            with open_board(cfg, port=port) as board:
                return f"{port or cfg.board.port} answers {board.ping()}"

        if cfg.unit.hardware != "sim":
            return ping()
        from .vmc_sim import VendingMachineSimulator

        with VendingMachineSimulator() as machine:
            return ping(machine.port_path)

    def journal():
        from .journal import Journal
        from .storage import DB_NAME

        if not (cfg.state_dir / DB_NAME).is_file():
            raise VendorNodeError(f"{cfg.state_dir / DB_NAME}: no unit database (run `vendor-node provision`)")
        with Journal.open(cfg.state_dir) as j:
            report = j.verify()
            if not report.ok:
                raise VendorNodeError(str(report))
            review = len(j.unknown_outcomes())
        return f"hash chain intact ({report.entries} entries); {review} outcome(s) awaiting review"

    def accounts():
        from .accounts import AccountStore
        from .storage import DB_NAME

        if not (cfg.state_dir / DB_NAME).is_file():  # never create a db or a key from a selftest
            raise VendorNodeError(f"{cfg.state_dir / DB_NAME}: no unit database (run `vendor-node provision`)")
        with AccountStore.open(cfg) as store:
            reason = store.out_of_service_reason()
            count = len(store.templates())
        if reason:
            raise VendorNodeError(reason)
        return f"bundle current, {count} enrolled employees"

    print(f"PASS  config   {getattr(args, 'config', None) or 'defaults/env'}: hardware {cfg.unit.hardware}, "
          f"state {cfg.state_dir}")
    for name, probe in [("keys", keys), ("model", model), ("camera", camera), ("gpio", gpio),
                        ("serial", serial_adapter), ("journal", journal), ("accounts", accounts)]:
        check(name, probe)
    failed = results.count(False)
    print(f"{len(results) + 1 - failed} passed, {failed} failed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vendor-node", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="config file (default $VENDOR_NODE_CONFIG or /etc/vendor-node/config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_recognition_commands(sub)
    _add_accounts_commands(sub)
    _add_journal_commands(sub)
    _add_sync_commands(sub)
    _add_unit_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        parser.exit(2, f"vendor-node {args.command}: {exc}\n")
    except VendorNodeError as exc:
        print(f"vendor-node {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
