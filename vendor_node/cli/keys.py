"""`vendor-node keys status|seal|program-otp|program-secure-element|new-guard-key|renew-template-guard`.

The unit's key custody. Programming the OTP key is irreversible (OTP bits never go back to 0), and so
is programming a secure element (a random secret written into its slot, then its data zone locked for
ever), so both ask for the unit id typed back unless --yes; renewal re-transforms every stored
template under a new fleet secret without any image and overwrites the old secret (docs/threat-model.md).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .args import config_from_args, existing_file, state_dir_arg
from ..errors import KeyFileError, UsageError


def add_keys_commands(sub) -> None:
    keys = sub.add_parser("keys", help="technician: key mode, OTP binding, template guard renewal").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    p = keys.add_parser("status", help="key mode, OTP key, which key files are sealed to this board")
    state_dir_arg(p)
    p.set_defaults(handler=cmd_keys_status)
    p = keys.add_parser("program-otp", help="IRREVERSIBLE: program a random device key into this Pi's OTP, "
                                            "then seal the key files to it (needs keys.mode = \"otp\")")
    p.add_argument("--yes", action="store_true", help="do not ask for the unit id to be typed back")
    state_dir_arg(p)
    p.set_defaults(handler=cmd_program_otp)
    p = keys.add_parser("program-secure-element",
                        help="IRREVERSIBLE: write a random secret into the ATECC608's slot and lock its data zone, "
                             "then seal the key files to it (needs keys.mode = \"secure_element\")")
    p.add_argument("--yes", action="store_true", help="do not ask for the unit id to be typed back")
    state_dir_arg(p)
    p.set_defaults(handler=cmd_program_secure_element)
    p = keys.add_parser("seal", help="seal existing plain key files to this board (software -> otp/secure_element)")
    state_dir_arg(p)
    p.set_defaults(handler=cmd_keys_seal)
    p = keys.add_parser("new-guard-key", help="fleet side: a new template guard secret (32 bytes, 0600)")
    p.add_argument("--out", required=True, type=Path, help="file to write (must not exist)")
    p.set_defaults(handler=cmd_new_guard_key)
    p = keys.add_parser("renew-template-guard",
                        help="re-transform every stored template under a new fleet secret (stop the service first)")
    p.add_argument("--new-key", required=True, type=existing_file, help="from `keys new-guard-key` (0600)")
    state_dir_arg(p)
    p.set_defaults(handler=cmd_renew_template_guard)


def open_accounts(cfg):
    """The unit's account store with its keys opened the configured way (otp: sealed to this board)."""
    from ..money.accounts import AccountStore
    from ..unit.keysource import unit_keystore

    return AccountStore.open(cfg, keystore=unit_keystore(cfg))


def key_mode_line(store) -> str:
    """What selftest and `keys status` say about the key mode; software mode is a warning."""
    from ..money.key_wrap import SOFTWARE_MODE_WARNING

    if store.key_mode == "otp":
        return "key mode otp: key files sealed to this board's OTP key"
    if store.key_mode == "secure_element":
        return "key mode secure_element: key files sealed to this board's secure element (ATECC608)"
    return f"WARNING {SOFTWARE_MODE_WARNING}"


def cmd_keys_status(args) -> int:
    from ..money.key_wrap import BOARD_SECRET, wrapped_mode
    from ..unit.keysource import board_key_source, unit_keystore

    cfg = config_from_args(args)
    store = unit_keystore(cfg)
    print(key_mode_line(store))
    source, failed = board_key_source(cfg), 0
    try:
        if cfg.keys.mode == "otp":
            print(f"OTP key source: {source.describe()}, "
                  f"{'programmed' if source.is_programmed() else 'NOT programmed'}")
        elif cfg.keys.mode == "secure_element":
            print(f"secure element: {source.describe()}, {source.status()}")
    except KeyFileError as exc:  # the key files are still listed: what is sealed, and to what
        print(f"board key source: {exc}")
        failed = 1
    for path in (store.data_key_path, store.signing_key_path, store.fleet_template_key_path,
                 store.template_guard_key_path):
        sealed_in = wrapped_mode(path.read_bytes()) if path.exists() else None
        state = ("absent" if not path.exists() else
                 f"sealed to a board's {BOARD_SECRET[sealed_in]}" if sealed_in else "plain file")
        print(f"  {path.name}: {state}")
    return failed


def _confirm_irreversible(args, unit_id: str, what: str) -> None:
    """The unit id typed back (or --yes): nothing is written otherwise."""
    if args.yes:
        return
    print(f"This writes a random 256-bit key into {what}. It is IRREVERSIBLE: the board keeps it for life, and "
          "key files sealed to it open on this board only.", file=sys.stderr)
    if not sys.stdin.isatty():
        raise UsageError(f"{args.keys_command}: no terminal to confirm on; pass --yes to program without asking")
    if input(f"type the unit id ({unit_id}) to program: ").strip() != unit_id:
        raise UsageError(f"{args.keys_command}: not confirmed; nothing was written")


def cmd_program_secure_element(args) -> int:
    from ..unit.keysource import board_key_source, unit_keystore

    cfg = config_from_args(args)
    if cfg.keys.mode != "secure_element":
        raise UsageError("program-secure-element: set keys.mode = \"secure_element\" and [keys.secure_element] "
                         "bus, address and slot in the config first (the keys are sealed right after)")
    chip = board_key_source(cfg)
    if chip.is_programmed():
        print(f"{chip.describe()} is already programmed; nothing written")
    else:
        store = unit_keystore(cfg)
        _confirm_irreversible(args, store.read_unit_id() or cfg.unit.unit_id, chip.describe())
        chip.program(os.urandom(32))  # the secret is checked by a MAC, then forgotten: it lives only in the chip
        print(f"programmed {chip.describe()}: {chip.status()}")
    sealed = unit_keystore(cfg).seal_existing_keys()
    print(f"sealed {len(sealed)} key file(s) to this board" + "".join(f"\n  {p}" for p in sealed))
    return 0


def cmd_program_otp(args) -> int:
    from ..devices.otp import otp_source
    from ..unit.keysource import unit_keystore

    cfg = config_from_args(args)
    if cfg.keys.mode != "otp":
        raise UsageError("program-otp: set keys.mode = \"otp\" in the config first (the keys are sealed right after)")
    source = otp_source(cfg.keys, cfg.state_dir)
    if source.is_programmed():
        print(f"{source.describe()} is already programmed; nothing written")
    else:
        store = unit_keystore(cfg)
        _confirm_irreversible(args, store.read_unit_id() or cfg.unit.unit_id, source.describe())
        source.program(os.urandom(32))
        print(f"programmed {source.describe()}")
    sealed = unit_keystore(cfg).seal_existing_keys()
    print(f"sealed {len(sealed)} key file(s) to this board" + "".join(f"\n  {p}" for p in sealed))
    return 0


def cmd_keys_seal(args) -> int:
    from ..unit.keysource import unit_keystore

    sealed = unit_keystore(config_from_args(args)).seal_existing_keys()
    print(f"sealed {len(sealed)} key file(s) to this board" + "".join(f"\n  {p}" for p in sealed))
    return 0


def cmd_new_guard_key(args) -> int:
    from ..money.key_files import _write_new_secret

    _write_new_secret(args.out, os.urandom(32))
    print(f"wrote {args.out}: give it to every unit of the fleet with `vendor-node keys renew-template-guard`")
    return 0


def cmd_renew_template_guard(args) -> int:
    from ..hand.template_guard import TemplateGuard
    from ..money.accounts import AccountStore
    from ..money.keys import load_symmetric_key_file
    from ..unit.keysource import check_unit_keys, renew_templates, unit_template_guard

    cfg = config_from_args(args)
    new = TemplateGuard(load_symmetric_key_file(args.new_key, "new template guard key"))
    store = check_unit_keys(cfg)
    old = unit_template_guard(store)
    if old.guard_id == new.guard_id:
        print("the templates are already under this guard key; nothing changed")
        return 0
    started = time.perf_counter()
    with AccountStore.open(cfg, keystore=store) as accounts:
        count = accounts.retransform_templates(lambda templates: renew_templates(templates, old, new),
                                               requeue_enrolled=True)
        queued = len(accounts.pending_uploads())
    store.replace_template_guard_key(new_key=load_symmetric_key_file(args.new_key, "new template guard key"))
    print(f"renewed {count} template(s) under guard {new.guard_id:08x} in {time.perf_counter() - started:.2f} s; "
          f"the old guard {old.guard_id:08x} is overwritten; {queued} queued for upload, so the office relays the "
          "renewed forms to units that renew with the same key (renew every unit of the fleet with it)")
    return 0

