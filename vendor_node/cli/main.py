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

from .accounts import add_accounts_commands
from .logs import print_error, setup_logging
from .selftest import add_selftest_command
from .office import add_office_commands
from .args import state_dir_arg, config_from_args, existing_dir, existing_file, positive_int
from ..errors import UsageError, VendorNodeError

log = logging.getLogger("vendor_node")


# --- recognition (issue 2) --------------------------------------------------
def _add_recognition_commands(sub) -> None:
    p = sub.add_parser("eval", help="measure the recognizer on a folder of hand photos")
    p.add_argument("--dataset", required=True, type=Path, help="folder laid out as <subject>/<image>")
    p.add_argument("--enroll", type=positive_int, default=1, help="images per subject to enroll (default 1)")
    p.add_argument("--report", type=Path, required=True, help="JSON report to write (a DET curve PNG goes beside it)")
    p.add_argument("--exclude-trained", action="store_true",
                   help="leave out subjects the model manifest says it was trained on (figures on held-out people)")
    p.add_argument("--same-person", type=_subject_pair, action="append", metavar="A,B",
                   help="two subjects that may be one person labelled twice: never scored as impostors (repeatable)")
    p.add_argument("--exclude-tuned", action="store_true",
                   help="also leave out subjects the manifest says the hand finding was tuned on")
    p.add_argument("--robustness", action="store_true",
                   help="probes turned, scaled, blurred, darkened, infrared-like and close-up: one line each")
    p.add_argument("--debug-dir", type=Path, metavar="DIR",
                   help="write every frame with its key points and palm square drawn on it into DIR")
    p.add_argument("--roi", action="store_true",
                   help="the images are already-aligned square palm regions (e.g. tongji_dev): skip hand finding")
    p.add_argument("--model", type=Path, metavar="DIR",
                   help="measure the model in DIR (its manifest.json beside it) instead of the unit's assets "
                        "(e.g. firmware_assets/palm-embed-1); \"fused\": the palm codes and the embedding "
                        "deciding together on their fused score (the fusion block of the embedding's manifest)")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("bench", help="print speed and memory figures")
    p.add_argument("what", choices=["recognition", "accounts", "loop", "memory", "template-guard"], help="which benchmark")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object on stdout (tables on stderr)")
    p.add_argument("--employees", type=positive_int, default=10_000,
                   help="loop, memory: the office's size, measured beside 100 employees (default 10000; drawn "
                        "employees' templates are made once and cached in $VENDOR_NODE_CACHE_DIR, default "
                        "~/.cache/vendor-node/templates-<model id>-hands1000.npz)")
    p.add_argument("--customers", type=positive_int,
                   help="loop: customers served at each size (default $VENDOR_NODE_BENCH_CUSTOMERS or 1000)")
    p.set_defaults(handler=_cmd_bench)


def _subject_pair(text: str) -> tuple[str, str]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise argparse.ArgumentTypeError(f"expected two different subjects as A,B, got {text!r}")
    return parts[0], parts[1]


def _cmd_eval(args) -> int:
    from ..hand.evaluation import run_eval

    return run_eval(args, config_from_args(args))


def _cmd_bench(args) -> int:
    from .. import bench

    if not getattr(args, "json", False):
        return bench.run(args.what, args, config_from_args(args))
    import contextlib
    import json

    from ..bench.figures import collecting

    with collecting() as figures, contextlib.redirect_stdout(sys.stderr):  # the tables still show, on stderr
        code = bench.run(args.what, args, config_from_args(args))
    print(json.dumps({"bench": args.what, "targets_met": code == 0, "figures": figures}, indent=2))
    return code


# --- the charging journal (issue 3) -----------------------------------------
def _add_journal_commands(sub) -> None:
    journal = sub.add_parser("journal", help="the charging journal: verify, export for the nightly sync, review")
    jsub = journal.add_subparsers(dest="journal_command", required=True, metavar="JOURNAL_COMMAND")

    p = jsub.add_parser("verify", help="check the whole hash chain; exit 1 naming the first bad entry")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_verify)

    p = jsub.add_parser("export", help="write the not-yet-uploaded entries as one batch signed by the unit")
    p.add_argument("--out", type=Path, required=True, help="batch file to write (atomically)")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_export)

    p = jsub.add_parser("ack", help="mark an exported batch as uploaded (after the back office confirmed it)")
    p.add_argument("--batch", type=existing_file, required=True, help="the batch file that was uploaded")
    state_dir_arg(p)
    p.set_defaults(handler=_cmd_journal_ack)

    p = jsub.add_parser("open", help="list approvals with no outcome and outcomes awaiting review")
    p.add_argument("--json", action="store_true", help="one JSON object: the sessions needing attention")
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
    from ..money.journal import Journal
    from ..money.storage import DB_NAME

    cfg = config_from_args(args)
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
    from ..unit.keysource import unit_keystore

    cfg, journal = _open_existing_journal(args)
    with journal:
        signing_key = unit_keystore(cfg).ensure_signing_key()
        info = journal.export(args.out, signing_key, cfg.unit.unit_id)
    print(f"wrote {info.path}: batch {info.batch_id}, {info.entries} entries (seq {info.first_seq}.."
          f"{info.last_seq}), {info.charged_cents} cents charged")
    return 0


def _cmd_journal_ack(args) -> int:
    from ..money.journal_export import acknowledge_batch
    from ..unit.keysource import unit_keystore

    cfg, journal = _open_existing_journal(args)
    with journal:
        public_key = unit_keystore(cfg).load_signing_key().public_key()
        watermark = acknowledge_batch(journal, args.batch, public_key)
        unsynced = journal.unsynced_total_cents()
    print(f"acknowledged: entries up to seq {watermark} are uploaded; {unsynced} cents still unsynced")
    return 0


def _cmd_journal_open(args) -> int:
    import datetime

    _, journal = _open_existing_journal(args)
    with journal:
        rows = [("open", a) for a in journal.open_approvals()] + [("unknown", a) for a in journal.unknown_outcomes()]
    if args.json:
        import json

        print(json.dumps({"sessions": [{"state": state, "session_id": a.session_id, "approved_at": a.approved_at,
                                        "employee_id": a.employee_id, "item": a.item,
                                        "amount_cents": a.amount_cents} for state, a in rows]}, indent=2))
        return 0
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
    target.add_argument("--folder", type=existing_dir, metavar="DIR",
                        help="a folder instead of a server: bundles from DIR/inbox, uploads to DIR/outbox/<unit>")
    p.set_defaults(handler=_cmd_sync)


def _cmd_sync(args) -> int:
    from ..money.sync import run_sync, transport_from

    from ..unit.keysource import unit_keystore

    cfg = config_from_args(args)
    keystore = unit_keystore(cfg)
    transport = transport_from(cfg, folder=args.folder, server_url=args.server, keystore=keystore)
    if transport is None:  # a unit run from bundles imported by hand: the nightly timer must not fail
        log.warning("sync: nothing to do: no sync target (sync.server_url is empty; --server URL or --folder DIR)")
        return 0
    report = run_sync(cfg, transport, keystore)
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
    p.add_argument("--customers", type=positive_int, required=True, help="how many customers come to the machine")
    p.add_argument("--state-dir", type=Path, required=True,
                   help="the simulated unit's state (kept between runs; provisioned when new)")
    p.add_argument("--report", type=Path, help="JSON report to write")
    p.add_argument("--dataset", type=existing_dir,
                   help="hand photos as <subject>/<image> (default ../shared/handdata/coep_dev when present, "
                        "else drawn hands)")
    p.add_argument("--synthetic", action="store_true", help="drawn hands even when photos are present")
    p.add_argument("--employees", type=positive_int, default=12,
                   help="employees to enroll when provisioning; from 50 drawn employees on, their templates are "
                        "made once (real enrollment of drawn hands, on every core, with a progress bar) and cached "
                        "outside the state dir in $VENDOR_NODE_CACHE_DIR (default ~/.cache/vendor-node) as "
                        "templates-<model id>-hands1000.npz, reused by any smaller office and made again for "
                        "another model")
    p.add_argument("--seed", type=int, default=1, help="random seed for customers and selections")
    p.add_argument("--quiet", action="store_true", help="do not print each purchase")
    p.add_argument("--office", metavar="URL", help="sync with this running back office (the unit provisioned "
                   "with its fleet keys and registered there; see scripts/dev.sh)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file")
    p.set_defaults(handler=_cmd_simulate)

    add_selftest_command(sub, common)


def _cmd_run(args) -> int:
    import signal
    import threading

    from ..unit.assemble import run_unit

    cfg = config_from_args(args)
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    _report_clock_sync()
    if cfg.unit.hardware != "sim":
        return run_unit(cfg, stop)
    from ..sim.vmc_sim import VendingMachineSimulator

    with VendingMachineSimulator() as machine:  # a machine to talk to; no customers come unless scripted
        log.info("simulated vending machine on %s", machine.port_path)
        return run_unit(cfg, stop, board_port=machine.port_path)


def _report_clock_sync() -> None:
    """A Pi has no battery clock: say at start when NTP has not synchronized it (journalctl -p warning)."""
    from ..devices.clock_sync import clock_sync_state

    state = clock_sync_state()
    if state.synchronized is False:
        log.warning("%s; day caps and bundle age use the journal's trusted time meanwhile", state.detail)
    else:
        log.info("%s", state.detail)


def _cmd_simulate(args) -> int:
    from ..sim.simulate import run_simulation

    return run_simulation(args)


class VersionAction(argparse.Action):
    """`vendor-node --version`: what a technician reads out on the phone (package, model, bundle)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .version import version_text

        print(version_text(getattr(namespace, "config", None)))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vendor-node", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="config file (default $VENDOR_NODE_CONFIG or /etc/vendor-node/config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=VersionAction, help="version, model id and bundle version, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_recognition_commands(sub)
    add_accounts_commands(sub)
    _add_journal_commands(sub)
    _add_sync_commands(sub)
    _add_unit_commands(sub)
    add_office_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        parser.exit(2, f"vendor-node {args.command}: {exc}\n")
    except VendorNodeError as exc:
        print_error(f"vendor-node {args.command}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
