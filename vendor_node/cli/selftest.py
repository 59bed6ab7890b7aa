"""`vendor-node selftest`: a technician's PASS/FAIL for each part of the unit, with the real cause of each failure.

Exit code = the number of failed checks (0 = all passed), so a script can tell "one thing wrong"
from "nothing works". A selftest never creates a key, a database or a journal entry: it reads
what is there and says what to run next (provision, accounts import) when something is missing.
"""
from __future__ import annotations

import errno
import grp
import json
import os
import pwd
from dataclasses import asdict, dataclass
from pathlib import Path

from .args import config_from_args
from ..errors import VendorNodeError


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    figures: dict | None = None  # counts a script reads from --json (templates per model)


def add_selftest_command(sub, common) -> None:
    p = sub.add_parser("selftest", help="technician: check config, keys, model, camera, GPIO, serial adapter, journal",
                       description="PASS/FAIL per check; exit code = number of failed checks")
    p.add_argument("--sim", action="store_true", help="check the simulated hardware instead")
    p.add_argument("--json", action="store_true", help="one JSON object: config file, checks, passed, failed")
    common(p)
    p.set_defaults(handler=cmd_selftest)


def config_source(args) -> str:
    """The config file this command loads, in load_config's order; "defaults" when there is none."""
    from ..config import CONFIG_ENV, DEFAULT_CONFIG_PATH

    explicit = getattr(args, "config", None) or os.environ.get(CONFIG_ENV)
    if explicit:
        return str(explicit)
    return str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else f"defaults (no {DEFAULT_CONFIG_PATH})"


def cmd_selftest(args) -> int:
    source = config_source(args)
    results: list[CheckResult] = []

    def emit(result: CheckResult) -> None:
        results.append(result)
        if not args.json:
            print(f"{'PASS' if result.ok else 'FAIL'}  {result.name:<8} {result.detail}", flush=True)

    try:
        cfg = config_from_args(args)
    except VendorNodeError as exc:
        emit(CheckResult("config", False, f"{source}: {exc}" if source not in str(exc) else str(exc)))
        return _finish(args, source, results)
    emit(CheckResult("config", True, f"{source}: hardware {cfg.unit.hardware}, state {cfg.state_dir}"))
    for name, probe in _checks(cfg):
        try:
            found = probe()
            detail, figures = found if isinstance(found, tuple) else (found, None)
            emit(CheckResult(name, True, detail, figures))
        except VendorNodeError as exc:  # what the check found, in its own words
            emit(CheckResult(name, False, str(exc), getattr(exc, "figures", None)))
        except Exception as exc:  # a technician's tool: every failure is reported, none stops the others
            emit(CheckResult(name, False, f"{type(exc).__name__}: {exc}"))
    return _finish(args, source, results)


def _finish(args, source: str, results: list[CheckResult]) -> int:
    failed = sum(not r.ok for r in results)
    if args.json:
        print(json.dumps({"config": source, "checks": [asdict(r) for r in results],
                          "passed": len(results) - failed, "failed": failed}, indent=2))
    else:
        print(f"{len(results) - failed} passed, {failed} failed")
    return failed


def _checks(cfg):
    from ..money.storage import DB_NAME
    from ..unit.keysource import check_unit_keys, unit_keystore
    from .keys import key_mode_line

    store = unit_keystore(cfg)
    db_path = cfg.state_dir / DB_NAME
    provisioned = store.read_unit_id() is not None

    def not_provisioned() -> VendorNodeError:
        return VendorNodeError(f"{cfg.state_dir}: unit not provisioned (run `vendor-node provision "
                               "--fleet-public-key FLEET.pem --unit-id ID`)")

    def keys():
        from ..money.keys import fingerprint, grouped

        if not provisioned and not store.has_data_key():
            raise not_provisioned()
        check_unit_keys(cfg)  # otp mode: sealed to this board (a copied state dir is named here)
        store.load_data_key()
        signing = store.load_signing_key()
        store.load_fleet_public_key()
        return (f"data key, unit signing key and pinned fleet key load ({store.keys_dir}); unit "
                f"{store.read_unit_id() or cfg.unit.unit_id} fingerprint {grouped(fingerprint(signing.public_key()))}; "
                f"{key_mode_line(store)}")

    def model():
        from ..hand.bit_search import KERNEL
        from ..hand.model import Embedder

        embedders = Embedder.load_all(cfg.unit.assets_dir)
        roles = ["active"] + ["accepted"] * (len(embedders) - 1)
        return "; ".join(f"{e.model_id} ({role}): {e.model_path.name} matches the sha256 in its manifest"
                         for e, role in zip(embedders, roles)) + f"; palm-code 1:N kernel: {KERNEL}"

    def templates():
        from ..assets import model_set
        from ..hand.decision import DecisionPolicy
        from ..hand.model import read_manifest
        from ..hand.recognition import shortlist_coverage, templates_by_model
        from ..money.accounts import AccountStore

        if not db_path.is_file():  # the accounts check names what is missing
            return "no templates yet (no account database)", {}
        with AccountStore.open(cfg, keystore=store) as accounts_store:
            stored = list(accounts_store.templates().values())
        counts = templates_by_model(stored, cfg.unit.assets_dir)
        listed = shortlist_coverage(stored, cfg.unit.assets_dir)
        models = model_set(cfg.unit.assets_dir)
        known = {folder.name for folder in models.all}
        parts = [f"{name} {n}" + (" (active)" if name == models.active.name else "") for name, n in counts.items()]
        text = f"{sum(counts.values())} templates by model: {', '.join(parts) or 'none'}"
        stranded = {name: n for name, n in counts.items() if name not in known}
        if stranded:
            raise FiguresError(f"{text}; {sum(stranded.values())} made by no model this firmware ships: those "
                               "employees cannot pay until they enroll again", counts)
        if listed is not None:
            text += (f"; {listed[1]} with a {listed[0]} shortlist template (the others are always palm-code "
                     "candidates, their shortlist template added at a confident match)")
        old = sum(n for name, n in counts.items() if name != models.active.name)
        if old:
            text += f"; {old} on older models, refreshed to {models.active.name} at their next confident match"
        threshold = DecisionPolicy(read_manifest(models.active)["decision"], cfg.recognition.threshold,
                                   max_wrong_payer=cfg.recognition.max_wrong_payer).threshold_for(sum(counts.values()))
        text += f"; {models.active.name}'s threshold for {sum(counts.values())} enrolled: {threshold:.3f}"
        if threshold > 1:
            raise FiguresError(f"{text}: no score can reach it (the model's calibrated false-match rate at this "
                               "staff size); a better-separating model, or a higher recognition.max_wrong_payer",
                               counts)
        return text, counts

    def camera():
        from ..devices.camera import open_camera

        with open_camera(cfg) as cam:
            cam.check()
        return f"{cfg.unit.hardware} camera delivers frames ({cfg.camera.width}x{cfg.camera.height})"

    def gpio():
        from ..devices.panel import open_panel

        try:
            panel = open_panel(cfg)
        except VendorNodeError as exc:
            raise VendorNodeError(f"{exc}{_gpio_hint(str(exc))}") from None
        with panel:
            panel.show("working")
            present = panel.hand_present()
            panel.show("ready")
        return (f"sensor pin {cfg.gpio.proximity_pin} reads {'a hand' if present else 'nothing'}, "
                f"LED and buzzer set up")

    def serial_adapter():
        if cfg.unit.hardware != "sim":
            return _ping_board(cfg, str(cfg.board.port))
        from ..sim.vmc_sim import VendingMachineSimulator

        with VendingMachineSimulator() as machine:
            return _ping_board(cfg, machine.port_path)

    def journal():
        from ..money.journal import Journal

        if not db_path.is_file():  # never create a db from a selftest
            if not provisioned:
                raise not_provisioned()
            return "empty: the unit is provisioned and has no database yet (created by the first accounts import)"
        with Journal.open(cfg.state_dir) as j:
            report = j.verify()
            if not report.ok:
                raise VendorNodeError(str(report))
            review = len(j.unknown_outcomes())
        return f"hash chain intact ({report.entries} entries); {review} outcome(s) awaiting review"

    def accounts():
        from ..money.accounts import AccountStore

        if not db_path.is_file():
            if not provisioned:
                raise not_provisioned()
            raise VendorNodeError("no account bundle imported yet: the unit is out of service until "
                                  "`vendor-node accounts import BUNDLE` (or the nightly sync brings one)")
        with AccountStore.open(cfg, keystore=store) as accounts_store:
            reason = accounts_store.out_of_service_reason()
            bundle = accounts_store.current_bundle()
            count = len(accounts_store.templates())
        if reason:
            raise VendorNodeError(reason)
        return f"bundle v{bundle.version if bundle else '?'} current, {count} enrolled employees"

    def clock():
        from ..devices.clock_sync import clock_sync_state

        state = clock_sync_state()
        if state.synchronized is False and cfg.unit.hardware != "sim":
            raise VendorNodeError(f"{state.detail}; the service waits for it (time-sync.target, bounded)")
        return state.detail + (" (not required for a simulated unit)" if not state.synchronized else "")

    return [("clock", clock), ("keys", keys), ("model", model), ("camera", camera), ("gpio", gpio),
            ("serial", serial_adapter), ("journal", journal), ("accounts", accounts), ("templates", templates)]


class FiguresError(VendorNodeError):
    """A failed check that still has figures for --json."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def _ping_board(cfg, port: str) -> str:
    """The adapter answers a ping on ``port``; a failure names the device problem, not just "link closed"."""
    from ..devices.board import SerialTransport
    from ..unit.assemble import open_board

    problem = serial_device_problem(port)
    if problem:
        raise VendorNodeError(problem)
    try:  # the link itself retries quietly; open the port once here to get the operating system's reason
        SerialTransport(port, cfg.board.baudrate, write_timeout_s=cfg.board.reply_timeout_s).close()
    except VendorNodeError as exc:
        raise VendorNodeError(f"{exc}{_serial_hint(port)}") from None
    with open_board(cfg, port=port) as board:
        return f"{port} answers {board.ping()}"


def serial_device_problem(port: str) -> str | None:
    """Why ``port`` cannot be opened by this user, with the fix; None when it looks usable."""
    path = Path(port)
    if not path.exists():
        return f"{port}: no such device{_serial_hint(port)}"
    if not os.access(path, os.R_OK | os.W_OK):
        try:
            group = grp.getgrgid(path.stat().st_gid).gr_name
        except (KeyError, OSError):
            group = "its group"
        user = pwd.getpwuid(os.geteuid()).pw_name
        return (f"{port}: {os.strerror(errno.EACCES)} for user {user} (add it to group {group}; "
                f"the service runs with SupplementaryGroups=dialout)")
    return None


def _gpio_hint(message: str) -> str:
    """The usual reasons gpiozero finds no way to drive the pins, named for a technician."""
    if "pin factory" in message:
        return (" (no GPIO library could drive the pins: on a Pi 5 or bookworm and later, apt install python3-lgpio "
                "and a venv made with --system-site-packages, as install.sh does; the user needs group gpio)")
    if "ermission" in message or "busy" in message.lower():
        return " (another process holds the pins: sudo systemctl stop vendor-node first; the user needs group gpio)"
    return ""


def _serial_hint(port: str) -> str:
    if "vendor-mdb" in port:
        return (" (is the MDB adapter plugged in? the udev rule 99-vendor-mdb.rules names it /dev/vendor-mdb: "
                "`udevadm info /dev/ttyACM0`, then `ls -l /dev/vendor-mdb`)")
    if "ttyAMA" in port or "serial0" in port:
        return (" (the Pi's UART: enable_uart=1 and dtoverlay=disable-bt in /boot/firmware/config.txt, "
                "no serial console in cmdline.txt, then reboot)")
    return " (check the cable and board.port in the config)"
