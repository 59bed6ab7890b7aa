"""Keys bound to the board: otp mode wraps every key file under an HKDF key from the (emulated) OTP secret.

"Another board" is another emulated OTP file: a copy of a unit's whole state directory opens nothing
there, and the unit refuses to start naming the cause; the same key files without any OTP secret too.
"""
import os
import shutil
import subprocess
import threading
import types

import pytest

from vendor_node.cli import main
from vendor_node.config import load_config
from vendor_node.devices.otp import EmulatedOtp, FirmwareOtp, otp_source, parse_mailbox_rows
from vendor_node.errors import KeyFileError
from vendor_node.money.key_wrap import WRAP_MAGIC
from vendor_node.money.keys import KeyStore
from vendor_node.unit.keysource import check_unit_keys, unit_keystore

CSV = "employee_id,display_name,funds,status,funding,per_purchase_cap,per_day_cap\nE1,Ann,20.00,,,,\n"


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch):
    monkeypatch.delenv("VENDOR_NODE_CONFIG", raising=False)
    monkeypatch.delenv("VENDOR_NODE_HARDWARE", raising=False)


def board_config(tmp_path, board: str, state, mode="otp"):
    """A config for one (emulated) board: its own OTP file outside the state dir."""
    path = tmp_path / f"{board}.toml"
    otp = tmp_path / board / "otp.key"
    path.write_text(f'[unit]\nstate_dir = "{state}"\nhardware = "sim"\n\n[keys]\nmode = "{mode}"\n'
                    f'otp_file = "{otp}"\n')
    return path


def cli(config, *argv):
    return main(["--config", str(config), *argv])


@pytest.fixture
def fleet(tmp_path, capsys):
    fleet = tmp_path / "fleet"
    assert main(["fleet", "keygen", "--out", str(fleet)]) == 0
    (tmp_path / "staff.csv").write_text(CSV)
    capsys.readouterr()
    return fleet


def provision(config, fleet, state, unit_id="U1"):
    return cli(config, "provision", "--fleet-public-key", str(fleet / "fleet_public_key.pem"), "--unit-id", unit_id,
               "--fleet-template-key", str(fleet / "fleet_template.key"), "--state-dir", str(state))


@pytest.fixture
def otp_unit(tmp_path, fleet, capsys):
    """A unit on board A, its OTP programmed, provisioned, with a bundle and one enrolled template."""
    state = tmp_path / "state"
    config = board_config(tmp_path, "boardA", state)
    assert cli(config, "keys", "program-otp", "--yes") == 0
    assert provision(config, fleet, state) == 0
    out = capsys.readouterr().out
    assert "key mode otp" in out
    bundle = tmp_path / "b1.vnb"
    assert main(["fleet", "bundle", "--employees", str(tmp_path / "staff.csv"), "--signing-key",
                 str(fleet / "fleet_signing.key"), "--out", str(bundle), "--unit-id", "U1", "--version", "1"]) == 0
    assert cli(config, "accounts", "import", str(bundle), "--state-dir", str(state)) == 0
    cfg = load_config(config)
    store = unit_keystore(cfg)
    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(cfg, keystore=store) as accounts:
        accounts.enroll("E1", b"template-bytes-" * 8, "consent-1")
    capsys.readouterr()
    return types.SimpleNamespace(state=state, config=config, cfg=cfg, store=store)


def test_every_key_file_is_sealed_to_the_board(otp_unit):
    keys = otp_unit.state / "keys"
    names = {p.name for p in keys.iterdir()}
    assert {"data.key", "unit_signing.key", "fleet_template.key"} <= names
    for path in keys.iterdir():
        assert path.read_bytes().startswith(WRAP_MAGIC), path
        assert os.stat(path).st_mode & 0o777 == 0o600
    data_key = otp_unit.store.load_data_key()
    assert data_key not in (keys / "data.key").read_bytes()  # the data key itself is nowhere on the card
    assert otp_unit.store.key_mode == "otp"


def test_a_copied_state_dir_opens_nothing_on_another_board(otp_unit, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(otp_unit.state, copy)
    other = board_config(tmp_path, "boardB", copy)
    EmulatedOtp(tmp_path / "boardB" / "otp.key").program(os.urandom(32))  # board B's own OTP key
    cfg = load_config(other)
    with pytest.raises(KeyFileError, match="sealed to another board's OTP key: this state directory was copied"):
        check_unit_keys(cfg)
    store = unit_keystore(cfg)
    readable = 0
    for load in (store.load_data_key, store.load_signing_key, store.load_fleet_template_key):
        with pytest.raises(KeyFileError, match="another board"):
            load()
    from vendor_node.money.accounts import AccountStore

    with pytest.raises(KeyFileError, match="another board"):
        with AccountStore.open(cfg, keystore=store) as accounts:
            readable = len(accounts.templates())
    assert readable == 0
    # the unit refuses to start, naming the cause
    from vendor_node.unit.assemble import run_unit

    with pytest.raises(KeyFileError, match="copied from another unit"):
        run_unit(cfg, threading.Event())
    capsys.readouterr()
    assert cli(other, "accounts", "list", "--state-dir", str(copy)) == 1
    assert "sealed to another board's OTP key" in capsys.readouterr().err


def test_the_key_files_without_the_otp_secret_open_nothing(otp_unit, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(otp_unit.state, copy)
    bare = board_config(tmp_path, "boardC", copy)  # otp mode, but this board's OTP was never programmed
    cfg = load_config(bare)
    with pytest.raises(KeyFileError, match="no OTP key on this board"):
        check_unit_keys(cfg)
    from vendor_node.unit.assemble import run_unit

    with pytest.raises(KeyFileError, match="no OTP key on this board"):
        run_unit(cfg, threading.Event())
    software = board_config(tmp_path, "boardD", copy, mode="software")  # nor by switching the mode off
    with pytest.raises(KeyFileError, match="sealed to a board's OTP key but keys.mode is \"software\""):
        check_unit_keys(load_config(software))


def test_the_same_board_opens_everything_again(otp_unit):
    store = check_unit_keys(otp_unit.cfg)
    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(otp_unit.cfg, keystore=store) as accounts:
        assert accounts.templates() == {"E1": b"template-bytes-" * 8}


def test_a_software_mode_unit_is_told_to_seal_then_migrates(tmp_path, fleet, capsys):
    """A store made before otp mode: refused with the command to run, which seals it in place."""
    state = tmp_path / "state"
    soft = board_config(tmp_path, "boardA", state, mode="software")
    assert provision(soft, fleet, state) == 0
    assert "WARNING keys.mode = \"software\"" in capsys.readouterr().out
    cfg = load_config(soft)
    data_key = KeyStore.from_config(cfg).load_data_key()
    otp = board_config(tmp_path, "boardA", state, mode="otp")
    assert cli(otp, "keys", "program-otp", "--yes") == 0  # programs, then seals what is there
    assert "sealed 3 key file(s)" in capsys.readouterr().out
    assert unit_keystore(load_config(otp)).load_data_key() == data_key
    assert cli(otp, "keys", "seal") == 0 and "sealed 0 key file(s)" in capsys.readouterr().out


def test_plain_key_files_in_otp_mode_name_the_command(tmp_path, fleet, capsys):
    state = tmp_path / "state"
    assert provision(board_config(tmp_path, "boardA", state, mode="software"), fleet, state) == 0
    otp = board_config(tmp_path, "boardA", state)
    EmulatedOtp(tmp_path / "boardA" / "otp.key").program(os.urandom(32))
    with pytest.raises(KeyFileError, match="not sealed to the board .* run `vendor-node keys seal`"):
        check_unit_keys(load_config(otp))


def test_program_otp_asks_and_never_reprograms(tmp_path, capsys):
    state = tmp_path / "state"
    config = board_config(tmp_path, "boardA", state)
    with pytest.raises(SystemExit) as info:  # no terminal to confirm on, no --yes: nothing written
        cli(config, "keys", "program-otp")
    assert info.value.code == 2 and "pass --yes" in capsys.readouterr().err
    assert not (tmp_path / "boardA" / "otp.key").exists()
    assert cli(config, "keys", "program-otp", "--yes") == 0
    first = (tmp_path / "boardA" / "otp.key").read_bytes()
    assert cli(config, "keys", "program-otp", "--yes") == 0
    assert "already programmed; nothing written" in capsys.readouterr().out
    assert (tmp_path / "boardA" / "otp.key").read_bytes() == first
    with pytest.raises(KeyFileError, match="cannot be rewritten"):
        EmulatedOtp(tmp_path / "boardA" / "otp.key").program(os.urandom(32))
    software = board_config(tmp_path, "boardB", state, mode="software")
    with pytest.raises(SystemExit):
        cli(software, "keys", "program-otp", "--yes")
    assert "set keys.mode = \"otp\"" in capsys.readouterr().err


def test_keys_status_shows_mode_and_sealing(otp_unit, capsys):
    assert cli(otp_unit.config, "keys", "status", "--state-dir", str(otp_unit.state)) == 0
    out = capsys.readouterr().out
    assert "key mode otp" in out and "programmed" in out and "data.key: sealed to a board" in out


def test_an_emulated_otp_file_inside_the_state_dir_is_refused(tmp_path):
    cfg = types.SimpleNamespace(mode="otp", otp_file=tmp_path / "state" / "otp.key")
    with pytest.raises(KeyFileError, match="keys.otp_file: .* is inside the state directory"):
        otp_source(cfg, tmp_path / "state")


def test_otp_mode_without_a_key_source_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(KeyFileError, match="without the board's OTP key source"):
        KeyStore(tmp_path, mode="otp").ensure_data_key()
    assert not (tmp_path / "keys" / "data.key").exists()
    with pytest.raises(KeyFileError, match="keys.mode: must be one of software, otp"):
        KeyStore(tmp_path, mode="secure-element")


# --- the Pi's firmware mailbox (vcmailbox), with a recorded answer ------------------------------------
def mailbox_answer(rows, status=0x80000000):
    words = [0x40, status, 0x30081, 0x28, 0x80000028, 0, 8] + list(rows) + [0]
    return " ".join(f"0x{w:08x}" for w in words) + "\n"


class FakeMailbox:
    """Stands in for `vcmailbox` (passed to FirmwareOtp, not patched in): OTP rows that only ever gain bits."""

    def __init__(self, rows=None, returncode=0):
        self.rows, self.returncode, self.calls = list(rows or [0] * 8), returncode, []

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        if command[1] == "0x00038081":
            self.rows = [r | int(v, 16) for r, v in zip(self.rows, command[6:14])]
        return subprocess.CompletedProcess(command, self.returncode, mailbox_answer(self.rows), "")


def test_firmware_otp_reads_the_rows_as_rpi_otp_private_key_does():
    rows = [0x01234567, 0x89abcdef, 1, 2, 3, 4, 5, 0xffffffff]
    source = FirmwareOtp(run=FakeMailbox(rows))
    assert source.read() == bytes.fromhex("0123456789abcdef" + "00000001000000020000000300000004" + "00000005ffffffff")
    assert source.is_programmed()


def test_firmware_otp_programs_once_and_checks_the_read_back():
    box = FakeMailbox()
    source = FirmwareOtp(run=box)
    assert not source.is_programmed()
    secret = os.urandom(32)
    source.program(secret)
    assert source.read() == secret
    with pytest.raises(KeyFileError, match="already programmed"):
        source.program(os.urandom(32))


def test_firmware_otp_errors_name_the_cause():
    with pytest.raises(KeyFileError, match="refused the OTP request .* no OTP device key"):
        parse_mailbox_rows(mailbox_answer([0] * 8, status=0x80000001))
    with pytest.raises(KeyFileError, match="unexpected answer"):
        parse_mailbox_rows("error\n")
    with pytest.raises(KeyFileError, match="exit 1"):
        FirmwareOtp(run=FakeMailbox(returncode=1)).read()
    with pytest.raises(KeyFileError, match="not found"):
        FirmwareOtp(vcmailbox="/nonexistent/vcmailbox").read()
    store = KeyStore("/tmp/x", mode="otp", device_secret=FirmwareOtp(run=FakeMailbox()).read)
    with pytest.raises(KeyFileError, match="all zeros \\(not programmed\\)"):
        store.check_board()


def test_selftest_names_a_copied_state_dir_and_warns_in_software_mode(otp_unit, tmp_path, capsys):
    assert cli(otp_unit.config, "selftest", "--state-dir", str(otp_unit.state)) >= 0
    keys_line = next(line for line in capsys.readouterr().out.splitlines() if " keys " in line)
    assert keys_line.startswith("PASS") and "key mode otp" in keys_line
    copy = tmp_path / "copy"
    shutil.copytree(otp_unit.state, copy)
    other = board_config(tmp_path, "boardB", copy)
    EmulatedOtp(tmp_path / "boardB" / "otp.key").program(os.urandom(32))
    cli(other, "selftest", "--state-dir", str(copy))
    keys_line = next(line for line in capsys.readouterr().out.splitlines() if " keys " in line)
    assert keys_line.startswith("FAIL") and "sealed to another board's OTP key" in keys_line
    state = tmp_path / "soft"
    soft = board_config(tmp_path, "boardS", state, mode="software")
    fleet = tmp_path / "fleet"
    assert provision(soft, fleet, state) == 0
    capsys.readouterr()
    cli(soft, "selftest", "--state-dir", str(state))
    keys_line = next(line for line in capsys.readouterr().out.splitlines() if " keys " in line)
    assert keys_line.startswith("PASS") and "WARNING keys.mode = \"software\"" in keys_line


def test_the_simulator_runs_a_unit_whose_keys_are_sealed_to_its_emulated_board(tmp_path, capsys):
    import json

    state = tmp_path / "state"
    config = board_config(tmp_path, "boardA", state)
    EmulatedOtp(tmp_path / "boardA" / "otp.key").program(os.urandom(32))
    report = tmp_path / "report.json"
    assert main(["simulate", "--config", str(config), "--customers", "4", "--state-dir", str(state), "--report",
                 str(report), "--seed", "3", "--synthetic", "--employees", "3"]) == 0
    result = json.loads(report.read_text())
    assert result["charges_equal_vends"] is True and result["identification"]["wrong_payer"] == 0
    assert all(p.read_bytes().startswith(WRAP_MAGIC) for p in (state / "keys").iterdir())
    from vendor_node.hand.template_guard import is_guarded
    from vendor_node.money.accounts import AccountStore

    cfg = load_config(config)
    with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as accounts:
        templates = accounts.templates()
    assert len(templates) == 3 and all(is_guarded(t) for t in templates.values())


@pytest.mark.parametrize("unit_file", ["vendor-node.service", "vendor-node-sync.service"])
def test_the_services_may_open_the_firmware_mailbox_and_nothing_more(unit_file):
    """otp mode under systemd: both the unit and the sync read the OTP key through /dev/vcio (group video)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "systemd" / unit_file).read_text(encoding="utf-8")
    lines = {line.strip() for line in text.splitlines()}
    assert "DevicePolicy=closed" in lines and "DeviceAllow=/dev/vcio rw" in lines
    groups = next(line for line in lines if line.startswith("SupplementaryGroups="))
    assert "video" in groups.split("=", 1)[1].split()
    assert "PrivateDevices=yes" not in lines  # it would hide /dev/vcio
