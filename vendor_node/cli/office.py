"""`vendor-node office serve | create-user | register-unit | import-employees | accept-journal`: the back office
(the `office` extra)."""
from __future__ import annotations

from pathlib import Path

from .args import positive_int
from ..errors import UsageError

DEFAULT_DB = "sqlite:///office.db"


def add_office_commands(sub) -> None:
    office = sub.add_parser("office", help="the back office server: ledger, employees, units (office extra)")
    osub = office.add_subparsers(dest="office_command", required=True, metavar="ACTION")

    def common(p):
        p.add_argument("--db", default=DEFAULT_DB,
                       help=f"database URL: sqlite:///PATH or postgresql://user:pass@host:port/name (default {DEFAULT_DB})")
        p.add_argument("--fleet-keys", type=Path, metavar="DIR",
                       help="folder made by `vendor-node fleet keygen --out DIR` (its signing key signs bundles "
                            "and receipts)")

    p = osub.add_parser("serve", help="migrate the database, then serve the office under gunicorn")
    common(p)
    p.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default 127.0.0.1:8000; put TLS in front)")
    p.add_argument("--demo", action="store_true",
                   help="demo employees and login (printed), fleet keys beside the db; loopback only")
    p.add_argument("--workers", type=positive_int, default=2, help="gunicorn worker processes (default 2)")
    p.add_argument("--threads", type=positive_int, default=4, help="threads per worker (default 4)")
    p.add_argument("--behind-tls", action="store_true",
                   help="a TLS proxy is in front: secure cookies, trust X-Forwarded-Proto")
    p.set_defaults(handler=_cmd_serve)

    p = osub.add_parser("create-user", help="a manager or technician login (password read from stdin)")
    common(p)
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=["manager", "technician"])
    p.set_defaults(handler=_cmd_create_user)

    p = osub.add_parser("register-unit", help="register a unit by id and fingerprint (as the units page does)")
    common(p)
    p.add_argument("unit_id")
    p.add_argument("--fingerprint", required=True, help="as `vendor-node provision` prints it")
    p.add_argument("--site", default="")
    p.add_argument("--exist-ok", action="store_true",
                   help="succeed when the unit is already registered with this fingerprint")
    p.set_defaults(handler=_cmd_register_unit)
    add_office_import_command(osub, common)

    p = osub.add_parser("accept-journal",
                        help="unit reinstalled: accept its new journal (as the unit's page does; audited)")
    common(p)
    p.add_argument("unit_id")
    p.add_argument("--confirm", metavar="UNIT_ID", default=None,
                   help="the unit id typed again (without it, asked for on the terminal)")
    p.add_argument("--fingerprint", default="",
                   help="the reinstalled unit's new key fingerprint, as `vendor-node provision` prints it")
    p.add_argument("--reason", default="", help="why, for the audit log (e.g. 'SD card replaced')")
    p.set_defaults(handler=_cmd_accept_journal)


def _load():
    try:
        from ..office import server
    except ImportError as exc:
        raise UsageError(f"the office needs its extra: pip install 'vendor-node[office]' ({exc})") from None
    return server


def _cmd_serve(args) -> int:
    return _load().serve(args)


def _cmd_create_user(args) -> int:
    import getpass
    import sys

    server = _load()
    server.prepare(args.db, args.fleet_keys)
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    server.create_user(args.username, args.role, password)
    print(f"user {args.username} ({args.role}) ready")
    return 0


def _cmd_register_unit(args) -> int:
    server = _load()
    server.prepare(args.db, args.fleet_keys)
    from ..office.models import Unit
    from ..office.unit_api import normalise_fingerprint
    from ..office.views import register_unit

    known = Unit.objects.filter(unit_id=args.unit_id).first()
    if args.exist_ok and known is not None and known.fingerprint == normalise_fingerprint(args.fingerprint):
        print(f"unit {known.unit_id} already registered with this fingerprint")
        return 0
    unit = register_unit("command line", args.unit_id, args.fingerprint, args.site)
    print(f"registered unit {unit.unit_id} (fingerprint {unit.fingerprint})")
    return 0


def add_office_import_command(osub, common) -> None:
    p = osub.add_parser("import-employees", help="import the employees CSV (as the employees page does)")
    common(p)
    p.add_argument("csv", type=Path, help="employee_id, display_name, funds[, status, funding, caps]")
    p.set_defaults(handler=_cmd_import_employees)


def _cmd_import_employees(args) -> int:
    server = _load()
    server.prepare(args.db, args.fleet_keys)
    from ..office.ledger import import_employees_csv

    try:
        data = args.csv.read_bytes()
    except OSError as exc:
        raise UsageError(f"{args.csv}: cannot read: {exc.strerror}") from None
    added, updated = import_employees_csv("command line", data)
    print(f"employees: {added} added, {updated} updated")
    return 0


def _cmd_accept_journal(args) -> int:
    """The same action and rules as the unit's page: the unit id typed back, the old journal closed where the
    office holds it, the next uploads ingested from seq 1, one audit row."""
    import sys

    confirm = args.confirm
    if confirm is None:
        if not sys.stdin.isatty():
            raise UsageError("accept-journal: no terminal to confirm on; pass --confirm UNIT_ID")
        print(f"This closes unit {args.unit_id}'s journal where the office holds it; its next uploads are ingested "
              "from seq 1 (a reinstalled unit's fresh journal).", file=sys.stderr)
        confirm = input(f"type the unit id ({args.unit_id}) to confirm: ").strip()
    server = _load()
    server.prepare(args.db, args.fleet_keys)
    from ..office.units import accept_new_journal

    closed = accept_new_journal("command line", args.unit_id, confirm, args.fingerprint, args.reason)
    print(f"unit {args.unit_id}: journal {closed.epoch} closed at seq {closed.last_seq}; journal {closed.epoch + 1} "
          "is ingested from seq 1" + ("; new key fingerprint registered" if args.fingerprint.strip() else ""))
    return 0
