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
    """The unit config, with --state-dir and --sim applied when the command has them."""
    return load_config(
        getattr(args, "config", None),
        hardware="sim" if getattr(args, "sim", False) else None,
        state_dir=getattr(args, "state_dir", None),
    )


# --- recognition (issue 2) --------------------------------------------------
def _add_recognition_commands(sub) -> None:
    p = sub.add_parser("eval", help="measure the recognizer on a folder of hand photos")
    p.add_argument("--dataset", required=True, type=Path, help="folder laid out as <subject>/<image>")
    p.add_argument("--enroll", type=_positive_int, default=1, help="images per subject to enroll (default 1)")
    p.add_argument("--report", type=Path, required=True, help="JSON report to write (a DET curve PNG goes beside it)")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("bench", help="print speed and memory figures")
    p.add_argument("what", choices=["recognition", "accounts", "loop"], help="which benchmark")
    p.set_defaults(handler=_cmd_bench)


def _cmd_eval(args) -> int:
    from .evaluation import run_eval

    return run_eval(args)


def _cmd_bench(args) -> int:
    from . import bench

    return bench.run(args.what, args)


# --- accounts, keys, bundles, enrollment (issue 3) -------------------------
def _add_accounts_commands(sub) -> None:
    pass


# --- the charging journal (issue 3) -----------------------------------------
def _add_journal_commands(sub) -> None:
    pass


# --- the unit (issue 4) -----------------------------------------------------
def _add_unit_commands(sub) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vendor-node", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="config file (default $VENDOR_NODE_CONFIG or /etc/vendor-node/config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_recognition_commands(sub)
    _add_accounts_commands(sub)
    _add_journal_commands(sub)
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
