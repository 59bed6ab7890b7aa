"""`vendor-node provision | accounts | fleet | enroll | unenroll`: the technician's and back office's account tools."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .keys import add_keys_commands, open_accounts
from .args import state_dir_arg, amount_arg, config_from_args, existing_dir, existing_file, money_text, positive_float, positive_int
from ..errors import BundleError, ImageFileError, UsageError
from ..money.bundle import MAX_VALIDITY_DAYS

log = logging.getLogger("vendor_node")


def add_accounts_commands(sub) -> None:
    p = sub.add_parser("provision", help="create the unit's keys and pin the fleet public key")
    p.add_argument("--fleet-public-key", required=True, type=existing_file, help="fleet public key (PEM)")
    p.add_argument("--unit-id", required=True, help="this unit's id (letters, digits, . _ @ -)")
    p.add_argument("--fleet-template-key", type=existing_file,
                   help="fleet template key (32-byte file from `fleet keygen`): templates travel under it")
    p.add_argument("--template-guard-key", type=existing_file,
                   help="the fleet's current template guard secret (after a renewal); default: derived from "
                        "--fleet-template-key, or this unit's own when there is none")
    p.add_argument("--replace-fleet-key", action="store_true", help="trust a new fleet key over the pinned one")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_provision)

    unit = sub.add_parser("unit", help="this unit's identity for the back office").add_subparsers(
        dest="unit_command", required=True, metavar="ACTION")
    p = unit.add_parser("fingerprint", help="the unit id and signing-key fingerprint the office registers")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_unit_fingerprint)

    accounts = sub.add_parser("accounts", help="the unit's offline account cache").add_subparsers(
        dest="accounts_command", required=True, metavar="ACTION")
    p = accounts.add_parser("import", help="verify a signed account bundle and apply it atomically")
    p.add_argument("bundle", type=existing_file, help="bundle file from `vendor-node fleet bundle` or the sync")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_accounts_import)
    p = accounts.add_parser("list", help="employees on this unit (never a template)")
    p.add_argument("--json", action="store_true", help="one JSON object: bundle, service state, employees")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_accounts_list)
    p = accounts.add_parser("purge-templates", help="delete templates unused for template_retention_days")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_accounts_purge)
    p = accounts.add_parser("export-uploads",
                            help="templates enrolled here, still sealed, for `fleet bundle --templates`")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--mark-uploaded", action="store_true", help="then drop them from the upload queue")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_accounts_export_uploads)

    fleet = sub.add_parser("fleet", help="back-office tools: fleet keys and account bundles").add_subparsers(
        dest="fleet_command", required=True, metavar="ACTION")
    p = fleet.add_parser("receipt", help="sign receipts for a unit's sync-folder uploads (an office without a server)")
    p.add_argument("uploads", nargs="+", type=existing_file, help="journal-*.json / templates-*.json from the outbox")
    p.add_argument("--unit-id", required=True, type=unit_id_arg, help="the unit that wrote them")
    p.add_argument("--unit-fingerprint", required=True, help="the unit's fingerprint, as `provision` printed it")
    p.add_argument("--signing-key", required=True, type=existing_file, help="fleet signing key (PEM, 0600)")
    p.add_argument("--out", required=True, type=Path, help="the unit's receipts folder: <share>/inbox/receipts/<unit>")
    p.set_defaults(handler=_cmd_fleet_receipt)
    p = fleet.add_parser("keygen", help="a new fleet signing key pair and fleet template key")
    p.add_argument("--out", required=True, type=Path, help="folder to write the keys to (must not hold keys)")
    p.set_defaults(handler=_cmd_fleet_keygen)
    from ..money.employees_csv import CSV_HELP

    p = fleet.add_parser("bundle", help="a signed account bundle for one unit from a CSV of employees",
                         epilog=CSV_HELP)
    p.add_argument("--employees", required=True, type=existing_file, help="CSV of employees")
    p.add_argument("--signing-key", required=True, type=existing_file, help="fleet signing key (PEM, 0600)")
    p.add_argument("--out", required=True, type=Path, help="bundle file to write")
    p.add_argument("--unit-id", required=True, type=unit_id_arg, help="the unit this bundle is for (others refuse it)")
    p.add_argument("--journal-position", type=journal_position_arg, metavar="SEQ:HASH",
                   help="the unit's last journal entry the CSV's funds already count (default 0: none; the "
                        "unit then subtracts every charge in its journal)")
    p.add_argument("--version", type=bundle_version_arg, help="bundle version (default: now in Unix seconds)")
    p.add_argument("--expires-days", type=expires_days_arg, default=7.0,
                   help=f"valid for this many days (default 7, at most {MAX_VALIDITY_DAYS})")
    p.add_argument("--delta", action="store_true", help="a delta on --base-version instead of a full snapshot")
    p.add_argument("--base-version", type=positive_int, help="the version a delta applies on")
    p.add_argument("--templates", type=existing_file, help="sealed templates from `accounts export-uploads`")
    p.add_argument("--per-day-cap", type=amount_arg, help="policy: per-employee daily cap, e.g. 15.00")
    p.add_argument("--unsynced-cap", type=amount_arg, help="policy: the unit's cap on unsynced charges, e.g. 250.00")
    p.add_argument("--max-offline-age-h", type=positive_float, help="policy: hours a unit may run on this bundle")
    p.set_defaults(handler=_cmd_fleet_bundle)

    p = sub.add_parser("enroll", help="enroll an employee's hand (technician at the unit)")
    p.add_argument("employee_id")
    p.add_argument("--consent", required=True, help="version of the consent form the employee signed")
    p.add_argument("--images", type=existing_dir, help="folder of hand photos instead of the camera")
    p.add_argument("--sim", action="store_true", help="use the simulated camera")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_enroll)
    p = sub.add_parser("unenroll", help="delete an employee's template (and any queued copy) at once")
    p.add_argument("employee_id")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_unenroll)
    add_keys_commands(sub)


MAX_PRESENTATIONS = 5


def unit_id_arg(text: str):
    from ..money.bundle import EMPLOYEE_ID_RE

    if not EMPLOYEE_ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid unit id (letters, digits, . _ @ -)")
    return text


def journal_position_arg(text: str):
    from ..money.bundle import JournalPosition

    try:
        return JournalPosition.parse(text)
    except BundleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bundle_version_arg(text: str) -> int:
    from ..money.bundle import MAX_INTEGER

    value = positive_int(text)
    if value > MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"{value} is past the largest version a unit stores (2^63-1)")
    return value


def expires_days_arg(text: str) -> float:
    value = positive_float(text)
    if value > MAX_VALIDITY_DAYS:
        raise argparse.ArgumentTypeError(f"{text} days is more than {MAX_VALIDITY_DAYS}; units refuse it")
    return value


def _cmd_provision(args) -> int:
    from ..money.bundle import EMPLOYEE_ID_RE
    from ..money.keys import fingerprint, grouped, load_symmetric_key_file, public_key_to_pem
    from ..unit.keysource import unit_keystore
    from .keys import key_mode_line

    if not EMPLOYEE_ID_RE.match(args.unit_id):
        raise UsageError(f"--unit-id: {args.unit_id!r} is not a valid id (letters, digits, . _ @ -)")
    cfg = config_from_args(args)
    store = unit_keystore(cfg)
    store.check_board()  # otp mode without a programmed OTP key: stop before writing anything
    template_key = (load_symmetric_key_file(args.fleet_template_key, "fleet template key")
                    if args.fleet_template_key else None)
    guard_key = (load_symmetric_key_file(args.template_guard_key, "template guard key")
                 if args.template_guard_key else None)
    current_id = store.read_unit_id()
    if current_id not in (None, args.unit_id):  # checked before anything is written
        raise UsageError(f"--unit-id: this unit is already provisioned as {current_id!r}")
    store.pin_fleet_public_key(args.fleet_public_key.read_bytes(), replace=args.replace_fleet_key)
    if template_key is not None:
        store.install_fleet_template_key(template_key)
    store.write_unit_id(args.unit_id)
    store.ensure_data_key()
    if guard_key is not None:  # else the fleet's is derived from the fleet template key (unit/keysource.py)
        store.ensure_template_guard_key(guard_key)
    signing = store.ensure_signing_key()
    public_pem = store.state_dir / "unit_signing_public.pem"
    public_pem.write_bytes(public_key_to_pem(signing.public_key()))
    print(f"unit {args.unit_id} provisioned in {store.state_dir}")
    print(f"  fleet key pinned: {store.fleet_public_key_path}")
    template_key = "installed" if store.has_fleet_template_key() else "none (enrolled templates stay on this unit)"
    print(f"  fleet template key: {template_key}")
    print(f"  {key_mode_line(store)}")
    print(f"  unit signing public key: {public_pem}")
    print(f"  register this unit in the back office as {args.unit_id}, fingerprint "
          f"{grouped(fingerprint(signing.public_key()))}")
    return 0


def _cmd_unit_fingerprint(args) -> int:
    from ..money.keys import fingerprint, grouped
    from ..unit.keysource import unit_keystore

    cfg = config_from_args(args)
    store = unit_keystore(cfg)
    unit_id = store.read_unit_id()
    if unit_id is None:
        raise UsageError(f"{cfg.state_dir}: this unit is not provisioned yet (run `vendor-node provision`)")
    print(f"unit {unit_id}")
    print(f"fingerprint {grouped(fingerprint(store.load_signing_key().public_key()))}")
    return 0


def _cmd_accounts_import(args) -> int:

    with open_accounts(config_from_args(args)) as store:
        info = store.import_bundle(args.bundle)
    print(f"imported {info.kind} v{info.version}: {info.employees} employees, {info.templates} templates, "
          f"{info.deletions} deletions")
    return 0


def _cmd_accounts_list(args) -> int:
    import datetime


    with open_accounts(config_from_args(args)) as store:
        bundle = store.current_bundle()
        reason = store.out_of_service_reason()
        employees = store.employees()
        funds = [store.funds_left_cents(e) if e.status != "deleted" else None for e in employees]
    if args.json:
        print(_accounts_json(bundle, reason, [(e.id, e.display_name, e.status, e.funding, cents, e.has_template,
                                               e.last_used_at) for e, cents in zip(employees, funds)]))
        return 0
    rows = [(e.id, e.display_name, e.status, e.funding, money_text(cents) if cents is not None else "-",
             "yes" if e.has_template else "no",
             datetime.datetime.fromtimestamp(e.last_used_at).strftime("%Y-%m-%d") if e.last_used_at else "-")
            for e, cents in zip(employees, funds)]
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


def _accounts_json(bundle, reason, rows) -> str:
    """`accounts list --json`: money in integer cents (null when the employee is deleted), no template."""
    import dataclasses
    import json

    keys = ("id", "name", "status", "funding", "funds_left_cents", "has_template", "last_used_at")
    return json.dumps({
        "bundle": dataclasses.asdict(bundle) if bundle is not None else None,
        "in_service": not reason, "out_of_service_reason": reason or None,
        "employees": [dict(zip(keys, row)) for row in rows]}, indent=2)


def _cmd_accounts_purge(args) -> int:

    with open_accounts(config_from_args(args)) as store:
        count = store.purge_expired_templates()
    print(f"deleted {count} templates unused for {store.cfg.accounts.template_retention_days} days")
    return 0


def _cmd_accounts_export_uploads(args) -> int:
    from ..money.bundle import TemplateRecord, templates_to_json

    with open_accounts(config_from_args(args)) as store:
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
    from ..money.keys import generate_fleet_keys

    paths = generate_fleet_keys(args.out)
    print(f"fleet signing key (keep secret): {paths['signing_key']}")
    print(f"fleet template key (keep secret; give to units at provisioning): {paths['template_key']}")
    print(f"fleet public key (pin on every unit): {paths['public_key']}")
    return 0


def _cmd_fleet_bundle(args) -> int:
    import time

    from ..money.bundle import Bundle, JournalPosition, encode_bundle, read_templates_json, write_bundle_file
    from ..money.employees_csv import parse_employees_csv
    from ..money.keys import load_signing_key_file

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
    position = args.journal_position or JournalPosition()
    bundle = Bundle(kind="delta" if args.delta else "snapshot", version=version,
                    base_version=args.base_version, created=now, expires=now + args.expires_days * 86400,
                    unit_id=args.unit_id, journal_position=position,
                    policy=policy, employees=employees, templates=templates, deletions=deletions)
    write_bundle_file(args.out, encode_bundle(bundle, signing_key))
    print(f"wrote {bundle.kind} v{version} for unit {args.unit_id} (journal position {position.seq}) to {args.out}: "
          f"{len(employees)} employees, {len(templates)} templates, {len(deletions)} deletions, "
          f"expires in {args.expires_days:g} days")
    return 0


def _cmd_fleet_receipt(args) -> int:
    """Receipts the unit accepts (fleet-signed); for batches, the journal position and charges for the next bundle."""
    import json

    from ..money.journal_export import fleet_receipt
    from ..money.keys import load_signing_key_file
    from ..money.storage import write_file_atomically

    signing_key = load_signing_key_file(args.signing_key)
    args.out.mkdir(parents=True, exist_ok=True)
    for upload in args.uploads:
        data = upload.read_bytes()
        answer = fleet_receipt(data, args.unit_id, args.unit_fingerprint, signing_key, str(upload))
        target = args.out / f"receipt-{upload.stem}.json"
        if target.exists():
            print(f"{upload}: {target} already exists; left as it is")
            continue
        write_file_atomically(target, json.dumps(answer).encode(), 0o644)
        receipt = answer["receipt"]
        if receipt["kind"] == "templates":
            print(f"{upload}: receipt for {len(receipt['accepted'])} templates and {len(receipt['revocations'])} "
                  f"revocations -> {target}")
            continue
        charged: dict[str, int] = {}
        for entry in json.loads(data)["body"]["entries"]:
            if entry["kind"] == "vend_succeeded" or (entry["kind"] == "review_settled" and entry["amount_cents"]):
                charged[entry["employee_id"]] = charged.get(entry["employee_id"], 0) + entry["amount_cents"]
        print(f"{upload}: receipt -> {target}; next bundle for {args.unit_id}: --journal-position "
              f"{receipt['last_seq']}:{receipt['last_hash']} (subtract these charges from the CSV's funds first: "
              + (", ".join(f"{e} {money_text(c)}" for e, c in sorted(charged.items())) or "none") + ")")
    return 0


def _enrollment_images_from_folder(folder: Path) -> list:
    from ..images import read_grey

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UsageError(f"--images {folder}: no files in the folder")
    if len(files) > MAX_PRESENTATIONS:
        log.warning("%s holds %d files; using the first %d", folder, len(files), MAX_PRESENTATIONS)
        files = files[:MAX_PRESENTATIONS]
    images = []
    for path in files:
        try:
            images.append(read_grey(path))
        except ImageFileError as exc:
            raise UsageError(f"--images: {exc}") from None
    return images, [p.name for p in files]


def _enrollment_images_from_camera(cfg) -> list:
    from ..devices.camera import open_camera

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
    from ..errors import ConsentError

    if not args.consent.strip():
        raise ConsentError("--consent: a consent version is required; no template is stored without one")
    cfg = config_from_args(args)
    with open_accounts(cfg) as store:
        employee = store.employee(args.employee_id)
        if employee is None or employee.status == "deleted":
            raise UsageError(f"unknown employee {args.employee_id!r}: import a bundle that lists them first")
        if args.images:
            images, names = _enrollment_images_from_folder(args.images)
        else:
            images, names = _enrollment_images_from_camera(cfg)
        from ..hand.recognition import Recognizer
        from ..unit.keysource import adopt_clear_templates, unit_template_guard

        recognizer = Recognizer.from_config(cfg)
        recognizer.guard = unit_template_guard(store.keystore)  # stored only in the fleet's guarded domain
        adopt_clear_templates(store, recognizer.guard)
        enrollment = recognizer.enroll(images)
        queued = store.enroll(args.employee_id, enrollment.template, args.consent)
    print(f"enrolled {args.employee_id} ({employee.display_name}) from {len(enrollment.used)} of {len(images)} "
          f"images (consent {args.consent}); "
          + ("queued for upload" if queued else "kept on this unit only (no fleet template key)"))
    for index, reason in enrollment.rejected:
        print(f"  left out {names[index]}: {reason}")
    return 0


def _cmd_unenroll(args) -> int:

    with open_accounts(config_from_args(args)) as store:
        removed = store.unenroll(args.employee_id)
    print(f"template of {args.employee_id} deleted" if removed else f"no template stored for {args.employee_id}")
    return 0
