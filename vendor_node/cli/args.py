"""Argument types and the config lookup shared by the `vendor-node` subcommands.

Each type raises argparse.ArgumentTypeError with what is wrong, so argparse
prints it against the option's name and exits 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config


def state_dir_arg(parser) -> None:
    """The --state-dir option every command that touches the unit's state takes."""
    parser.add_argument("--state-dir", type=Path, help="the unit's state folder (default from the config)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def config_from_args(args):
    """The unit config, with --state-dir and --sim applied when the command has them.

    A provisioned unit's id (written by `vendor-node provision`) wins over the config's,
    so journals and uploads always carry the id the back office knows.
    """
    from ..money.keys import KeyStore

    cfg = load_config(
        getattr(args, "config", None),
        hardware="sim" if getattr(args, "sim", False) else None,
        state_dir=getattr(args, "state_dir", None),
    )
    provisioned = KeyStore.from_config(cfg).read_unit_id()
    if provisioned and provisioned != cfg.unit.unit_id:
        cfg = cfg.replace(unit={"unit_id": provisioned})
    return cfg


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def amount_arg(text: str) -> int:
    from ..money.employees_csv import parse_amount_cents

    try:
        return parse_amount_cents(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def money_text(cents: int | None) -> str:
    return "-" if cents is None else f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02d}"
