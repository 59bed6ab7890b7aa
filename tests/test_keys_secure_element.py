"""Keys bound to a secure element (ATECC608 on I2C): the protocol on scripted bytes, "another board" on emulated chips.

The scripted wire checks every byte the unit sends and answers what a chip answers (WeeWX-style); the
emulated chip speaks the same bytes with a persistent slot, so a copied state directory can be tried on a
board with another chip, or with none.
"""
import errno
import os
import shutil
import threading
from pathlib import Path

import pytest

from test_keys_otp import cli, fleet, no_system_config, provision  # noqa: F401  (fixtures)
from vendor_node.cli import main
from vendor_node.config import load_config, parse_config
from vendor_node.devices.secure_element import MAC_MODE, SecureElement, command_packet, crc16, expected_mac
from vendor_node.devices.secure_element_emulator import EmulatedChip, fresh_config
from vendor_node.devices.secure_element_i2c import I2cTransport
from vendor_node.errors import ConfigError, KeyFileError
from vendor_node.money.key_wrap import CHALLENGE_FILE, WRAP_MAGICS
from vendor_node.unit.keysource import check_unit_keys, secure_element_source, unit_keystore

SLOT = 9


def board_config(tmp_path, board: str, state, mode="secure_element", slot=SLOT):
    """One (emulated) board: its own chip file outside the state dir."""
    path = tmp_path / f"{board}-{mode}.toml"
    path.write_text(f'[unit]\nstate_dir = "{state}"\nhardware = "sim"\n\n[keys]\nmode = "{mode}"\n\n'
                    f'[keys.secure_element]\nslot = {slot}\nemulated_file = "{tmp_path / board / "atecc.json"}"\n')
    return path


def new_chip(tmp_path, board: str, **config) -> EmulatedChip:
    return EmulatedChip.create(tmp_path / board / "atecc.json", SLOT, **config)


# --- the protocol on scripted bytes -----------------------------------------------------------------
NACK = OSError(errno.EREMOTEIO, "Remote I/O error")


class ScriptedWire:
    """A transport that expects exactly the scripted writes and answers the scripted reads, in order."""

    def __init__(self, script):
        self.script, self.closed = list(script), False

    def _next(self, kind):
        assert self.script, f"unexpected {kind} after the script ended"
        step = self.script.pop(0)
        assert step[0] == kind, f"expected {step[0]}, the unit did {kind}"
        return step[1]

    def wake(self):
        self._next("wake")

    def write(self, data):
        assert data == self._next("write")

    def read(self, count):
        answer = self._next("read")
        if isinstance(answer, Exception):
            raise answer
        assert len(answer) == count
        return answer

    def close(self):
        self.closed = True


def answer(data: bytes) -> bytes:
    body = bytes([len(data) + 3]) + data
    return body + crc16(body)


def reads_of(frame: bytes):
    """An answer read as CryptoAuthLib's Linux HAL reads it: the count byte, then the rest."""
    return [("read", frame[:1]), ("read", frame[1:])]


def config_script(config: bytes):
    steps = []
    for block in range(4):
        steps.append(("write", bytes([0x03]) + command_packet(0x02, 0x80, block << 3)))
        steps += reads_of(answer(config[32 * block:32 * block + 32]))
    return steps


def test_crc16_is_cryptoauthlibs():
    assert crc16(bytes([0x04, 0x11])) == bytes([0x33, 0x43])  # the wake answer 04 11 33 43
    assert command_packet(0x30, 0x00, 0x0000) == bytes.fromhex("0730000000035d")  # Info, as the datasheet lists it


def test_a_mac_on_scripted_bytes(tmp_path):
    """Wake (busy once), read the config zone, MAC over the challenge with the serial number, sleep."""
    config = fresh_config(SLOT)
    config = config[:86] + b"\x00" + config[87:]  # data zone locked: programmed
    secret, challenge = os.urandom(32), os.urandom(32)
    serial = config[0:4] + config[8:13]
    mac = expected_mac(secret, challenge, SLOT, serial)
    wire = ScriptedWire([("wake", None), ("read", NACK), ("read", bytes.fromhex("04113343"))]
                        + config_script(config)
                        + [("write", bytes([0x03, 39, 0x08, MAC_MODE, SLOT, 0]) + challenge
                            + crc16(bytes([39, 0x08, MAC_MODE, SLOT, 0]) + challenge)),
                           ("read", NACK), ("read", NACK)] + reads_of(answer(mac)) + [("write", b"\x01")])
    chip = SecureElement(lambda: wire, SLOT, "scripted chip", sleep=lambda s: None)
    assert chip.respond(challenge) == mac
    assert wire.script == [] and wire.closed
    message_tail = bytes([0x08, MAC_MODE, SLOT, 0]) + bytes(11) + serial[8:9] + serial[4:8] + serial[0:4]
    assert expected_mac(secret, challenge, SLOT, serial) == __import__("hashlib").sha256(
        secret + challenge + message_tail).digest()


def test_programming_on_scripted_bytes_writes_locks_and_checks_the_chips_mac():
    """Write (0x12, 32 bytes of the data zone at slot << 3), Lock (0x17, data zone, no CRC summary), then a MAC
    the host recomputes from the secret it wrote."""
    import hashlib

    config = fresh_config(SLOT)  # configuration locked, data zone not: a chip fresh from its configuration
    serial = config[0:4] + config[8:13]
    secret = bytes(range(1, 33))
    probe = hashlib.sha256(b"vendor-node secure element probe" + serial).digest()
    ok = answer(b"\x00")
    wire = ScriptedWire([("wake", None), ("read", bytes.fromhex("04113343"))] + config_script(config)
                        + [("write", bytes([0x03]) + command_packet(0x12, 0x82, SLOT << 3, secret)), ("read", NACK)]
                        + reads_of(ok)
                        + [("write", bytes.fromhex("030717810000") + crc16(bytes.fromhex("0717810000")))]
                        + reads_of(ok)
                        + [("write", bytes([0x03]) + command_packet(0x08, 0x40, SLOT, probe))]
                        + reads_of(answer(expected_mac(secret, probe, SLOT, serial))) + [("write", b"\x01")])
    SecureElement(lambda: wire, SLOT, "scripted chip", sleep=lambda s: None).program(secret)
    assert wire.script == []
    liar = ScriptedWire([("wake", None), ("read", bytes.fromhex("04113343"))] + config_script(config)
                        + [("write", bytes([0x03]) + command_packet(0x12, 0x82, SLOT << 3, secret))] + reads_of(ok)
                        + [("write", bytes([0x03]) + command_packet(0x17, 0x81, 0))] + reads_of(ok)
                        + [("write", bytes([0x03]) + command_packet(0x08, 0x40, SLOT, probe))]
                        + reads_of(answer(bytes(32))) + [("write", b"\x01")])
    with pytest.raises(KeyFileError, match="the chip's MAC differs from the host's"):
        SecureElement(lambda: liar, SLOT, "scripted chip", sleep=lambda s: None).program(secret)


def test_a_chip_left_awake_is_put_to_sleep_and_woken_again_else_the_cause_is_named():
    config = fresh_config(SLOT)
    stale = answer(b"\x00")[:4]  # an answer left in a chip whose last session died before its sleep
    wire = ScriptedWire([("wake", None), ("read", stale), ("write", b"\x01"), ("wake", None),
                         ("read", bytes.fromhex("04113343"))] + config_script(config) + [("write", b"\x01")])
    assert SecureElement(lambda: wire, SLOT, "scripted chip").chip_config().raw == config
    wire = ScriptedWire([("wake", None), ("read", bytes.fromhex("04113344")), ("write", b"\x01"), ("wake", None),
                         ("read", bytes.fromhex("04113344"))])
    with pytest.raises(KeyFileError, match="no ATECC wake answer \\(got 04113344\\).*i2c_arm_baudrate=100000"):
        SecureElement(lambda: wire, SLOT, "scripted chip").chip_config()


def test_garbled_answers_and_failure_statuses_are_named():
    read0 = ("write", bytes([0x03]) + command_packet(0x02, 0x80, 0))
    garbled = answer(bytes(32))[:-1] + b"\x00"
    wire = ScriptedWire([("wake", None), ("read", bytes.fromhex("04113343")), read0] + reads_of(garbled))
    with pytest.raises(KeyFileError, match="garbled answer to Read config .* check the I2C wiring"):
        SecureElement(lambda: wire, SLOT, "scripted chip").chip_config()
    wire = ScriptedWire([("wake", None), ("read", bytes.fromhex("04113343")), read0] + reads_of(answer(b"\x0f")))
    with pytest.raises(KeyFileError, match="Read config failed, status 0x0f \\(execution error"):
        SecureElement(lambda: wire, SLOT, "scripted chip").chip_config()
    clock = iter(range(100))  # each look at the clock: 60 ms later
    silent = [("wake", None), ("read", NACK), ("read", NACK)]  # polled until COMMAND_WAIT_S has passed
    wire = ScriptedWire(silent + [("write", b"\x01")] + silent)
    with pytest.raises(KeyFileError, match="no ATECC wake answer \\(got nothing\\); is the chip at this bus"):
        SecureElement(lambda: wire, SLOT, "scripted chip", sleep=lambda s: None,
                      clock=lambda: next(clock) * 0.06).chip_config()
    assert wire.script == []


@pytest.mark.parametrize("changes, problem", [
    ({"config_locked": False}, "configuration zone is not locked"),
    ({"slot_config": 0x2000}, "not secret \\(SlotConfig.IsSecret = 0\\)"),
    ({"slot_config": 0x20C0}, "can be read encrypted"),
    ({"slot_config": 0x2090}, "refuses MAC"),
    ({"key_config": 0x0033}, "ECC or AES key \\(KeyConfig.KeyType = 4\\)"),
    ({"key_config": 0x007C}, "ReqRandom/ReqAuth"),
])
def test_a_slot_that_could_leak_or_not_answer_is_refused_before_anything_is_written(tmp_path, changes, problem):
    chip = new_chip(tmp_path, "board", **changes)
    element = SecureElement(chip.open, SLOT, "emulated")
    before = chip.path.read_bytes()
    with pytest.raises(KeyFileError, match="cannot program: .*" + problem):
        element.program(os.urandom(32))
    assert chip.path.read_bytes() == before
    assert problem.split("\\")[0].split(" (")[0] in element.status()


def test_programming_writes_the_slot_locks_it_and_never_again(tmp_path):
    chip = new_chip(tmp_path, "board")
    element = SecureElement(chip.open, SLOT, "emulated")
    assert not element.is_programmed() and "NOT programmed" in element.status()
    with pytest.raises(KeyFileError, match="data zone is not locked.* program-secure-element"):
        element.respond(os.urandom(32))
    element.program(os.urandom(32))
    assert element.is_programmed() and f"slot {SLOT} ready" in element.status()
    challenge = os.urandom(32)
    assert element.respond(challenge) == element.respond(challenge) != element.respond(os.urandom(32))
    with pytest.raises(KeyFileError, match="already locked"):
        element.program(os.urandom(32))
    other = new_chip(tmp_path, "other")
    SecureElement(other.open, SLOT, "other").program(os.urandom(32))
    assert SecureElement(other.open, SLOT, "other").respond(challenge) != element.respond(challenge)


def test_the_i2c_adapter_names_a_missing_bus_a_busy_chip_and_a_non_i2c_device(tmp_path):
    import fcntl

    with pytest.raises(KeyFileError, match="/dev/i2c-250: no such I2C bus .* dtparam=i2c_arm=on"):
        I2cTransport(250, 0x60)
    not_a_bus = tmp_path / "i2c-9"
    not_a_bus.write_bytes(b"")
    with pytest.raises(KeyFileError, match="i2c-9: cannot address 0x60"):  # I2C_SLAVE on a plain file
        I2cTransport(9, 0x60, path=str(not_a_bus))
    with open(not_a_bus, "rb") as holder:  # the nightly sync holds the bus: the unit waits, bounded
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(KeyFileError, match="another process has held the secure element for 0.05 s"):
            I2cTransport(9, 0x60, path=str(not_a_bus), lock_wait_s=0.05)


# --- config ------------------------------------------------------------------------------------------
def test_config_is_strict_and_names_the_key_path(tmp_path):
    base = '[keys]\nmode = "secure_element"\n'
    with pytest.raises(ConfigError, match="keys.secure_element.slot: required"):
        parse_config(base)
    with pytest.raises(ConfigError, match="keys.secure_element.address: must be between 8 and 119, got 192"):
        parse_config(base + "[keys.secure_element]\nslot = 1\naddress = 0xC0\n")
    with pytest.raises(ConfigError, match="keys.secure_element.slot: must be between 0 and 15"):
        parse_config(base + "[keys.secure_element]\nslot = 16\n")
    with pytest.raises(ConfigError, match="keys.secure_element.bsu: unknown key"):
        parse_config(base + "[keys.secure_element]\nslot = 1\nbsu = 1\n")
    cfg = parse_config(base + "[keys.secure_element]\nslot = 3\nbus = 0\naddress = 0x35\n")
    assert (cfg.keys.secure_element.bus, cfg.keys.secure_element.address, cfg.keys.secure_element.slot) == (0, 0x35, 3)
    inside = parse_config(base + f'[keys.secure_element]\nslot = 1\nemulated_file = "{tmp_path}/state/chip.json"\n')
    with pytest.raises(KeyFileError, match="emulated_file: .* is inside the state directory"):
        secure_element_source(inside.keys, tmp_path / "state")


# --- a unit whose keys are sealed to its chip ----------------------------------------------------------
@pytest.fixture
def se_unit(tmp_path, fleet, capsys):  # noqa: F811
    state = tmp_path / "state"
    config = board_config(tmp_path, "boardA", state)
    new_chip(tmp_path, "boardA")
    assert cli(config, "keys", "program-secure-element", "--yes") == 0
    assert provision(config, fleet, state) == 0
    assert "key mode secure_element" in capsys.readouterr().out
    bundle = tmp_path / "b1.vnb"
    assert main(["fleet", "bundle", "--employees", str(tmp_path / "staff.csv"), "--signing-key",
                 str(fleet / "fleet_signing.key"), "--out", str(bundle), "--unit-id", "U1", "--version", "1"]) == 0
    assert cli(config, "accounts", "import", str(bundle), "--state-dir", str(state)) == 0
    cfg = load_config(config)
    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as accounts:
        accounts.enroll("E1", b"template-bytes-" * 8, "consent-1")
    return state, config, cfg


def test_every_key_file_is_sealed_to_the_chip_and_opens_on_its_board(se_unit):
    state, config, cfg = se_unit
    keys = state / "keys"
    for name in ("data.key", "unit_signing.key", "fleet_template.key"):
        assert (keys / name).read_bytes().startswith(WRAP_MAGICS["secure_element"]), name
    store = check_unit_keys(cfg)
    assert store.key_mode == "secure_element"
    assert store.load_data_key() not in (keys / "data.key").read_bytes()
    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(cfg, keystore=store) as accounts:
        assert accounts.templates() == {"E1": b"template-bytes-" * 8}


def test_a_copied_state_dir_opens_nothing_on_a_board_with_another_chip(se_unit, tmp_path, capsys):
    state, _, _ = se_unit
    copy = tmp_path / "copy"
    shutil.copytree(state, copy)
    other = board_config(tmp_path, "boardB", copy)
    SecureElement(new_chip(tmp_path, "boardB").open, SLOT, "B").program(os.urandom(32))
    cfg = load_config(other)
    with pytest.raises(KeyFileError, match="sealed to another board's secure element: this state directory was"):
        check_unit_keys(cfg)
    store, readable = unit_keystore(cfg), 0
    for load in (store.load_data_key, store.load_signing_key, store.load_fleet_template_key):
        with pytest.raises(KeyFileError, match="another board"):
            load()
    from vendor_node.money.accounts import AccountStore

    with pytest.raises(KeyFileError, match="another board"):
        with AccountStore.open(cfg, keystore=store) as accounts:
            readable = len(accounts.templates())
    assert readable == 0
    from vendor_node.unit.assemble import run_unit

    with pytest.raises(KeyFileError, match="copied from another unit"):
        run_unit(cfg, threading.Event())
    capsys.readouterr()
    assert cli(other, "accounts", "list", "--state-dir", str(copy)) == 1
    assert "sealed to another board's secure element" in capsys.readouterr().err


def test_without_the_chip_or_with_a_blank_one_nothing_opens(se_unit, tmp_path):
    state, _, _ = se_unit
    copy = tmp_path / "copy"
    shutil.copytree(state, copy)
    from vendor_node.unit.assemble import run_unit

    bare = load_config(board_config(tmp_path, "boardC", copy))  # no chip on this board
    with pytest.raises(KeyFileError, match="no secure element on this board"):
        run_unit(bare, threading.Event())
    new_chip(tmp_path, "boardD")
    blank = load_config(board_config(tmp_path, "boardD", copy))  # a chip never programmed
    with pytest.raises(KeyFileError, match="data zone is not locked"):
        check_unit_keys(blank)
    software = load_config(board_config(tmp_path, "boardE", copy, mode="software"))
    with pytest.raises(KeyFileError, match="sealed to a board's secure element but keys.mode is \"software\""):
        check_unit_keys(software)
    otp = software.replace(keys={"mode": "otp", "otp_file": tmp_path / "boardE" / "otp.key"})
    from vendor_node.devices.otp import EmulatedOtp

    EmulatedOtp(tmp_path / "boardE" / "otp.key").program(os.urandom(32))
    with pytest.raises(KeyFileError, match="sealed to a board's secure element but keys.mode is \"otp\""):
        check_unit_keys(otp)


def test_a_lost_challenge_is_named_and_never_silently_replaced(se_unit):
    state, _, cfg = se_unit
    (state / "keys" / CHALLENGE_FILE).unlink()
    with pytest.raises(KeyFileError, match="secure_element.challenge: missing, but data.key, .* were sealed with it"):
        check_unit_keys(cfg)
    assert not (state / "keys" / CHALLENGE_FILE).exists()


def test_status_selftest_and_heartbeat_report_the_mode(se_unit, capsys):
    state, config, cfg = se_unit
    capsys.readouterr()
    assert cli(config, "keys", "status", "--state-dir", str(state)) == 0
    out = capsys.readouterr().out
    assert "key mode secure_element" in out and f"slot {SLOT} ready" in out
    assert "data.key: sealed to a board's secure element" in out
    chip = Path(cfg.keys.secure_element.emulated_file)
    chip.rename(chip.with_suffix(".away"))  # the chip is unplugged: the cause is named, the files still listed
    assert cli(config, "keys", "status", "--state-dir", str(state)) == 1
    out = capsys.readouterr().out
    assert "no secure element on this board" in out and "data.key: sealed to a board's secure element" in out
    chip.with_suffix(".away").rename(chip)
    cli(config, "selftest", "--state-dir", str(state))
    keys_line = next(line for line in capsys.readouterr().out.splitlines() if " keys " in line)
    assert keys_line.startswith("PASS") and "key mode secure_element" in keys_line
    from vendor_node.money.accounts import AccountStore
    from vendor_node.money.sync import heartbeat_document

    with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as accounts:
        assert heartbeat_document(cfg, accounts, accounts.journal)["key_mode"] == "secure_element"


def test_program_asks_and_a_software_unit_migrates(tmp_path, fleet, capsys):  # noqa: F811
    state = tmp_path / "state"
    soft = board_config(tmp_path, "boardA", state, mode="software")
    assert provision(soft, fleet, state) == 0
    data_key = unit_keystore(load_config(soft)).load_data_key()
    config = board_config(tmp_path, "boardA", state)
    chip = new_chip(tmp_path, "boardA")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # no terminal to confirm on, no --yes: nothing written
        cli(config, "keys", "program-secure-element")
    assert info.value.code == 2 and "pass --yes" in capsys.readouterr().err
    assert not SecureElement(chip.open, SLOT, "A").is_programmed()
    assert cli(config, "keys", "program-secure-element", "--yes") == 0
    assert "sealed 3 key file(s)" in capsys.readouterr().out
    assert unit_keystore(load_config(config)).load_data_key() == data_key
    assert cli(config, "keys", "program-secure-element", "--yes") == 0
    assert "already programmed; nothing written" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(soft, "keys", "program-secure-element", "--yes")
    assert "set keys.mode = \"secure_element\"" in capsys.readouterr().err


@pytest.mark.parametrize("unit_file", ["vendor-node.service", "vendor-node-sync.service"])
def test_the_services_may_open_the_i2c_bus_with_the_i2c_group(unit_file):
    """secure_element mode under systemd: both the unit and the sync ask the chip (group i2c, char-i2c devices)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    lines = {line.strip() for line in (root / "systemd" / unit_file).read_text(encoding="utf-8").splitlines()}
    assert "DevicePolicy=closed" in lines and "DeviceAllow=char-i2c rw" in lines
    groups = next(line for line in lines if line.startswith("SupplementaryGroups="))
    assert "i2c" in groups.split("=", 1)[1].split()
    assert "for group in video gpio dialout i2c; do" in (root / "scripts" / "install.sh").read_text(encoding="utf-8")


def test_the_simulator_runs_a_unit_whose_keys_are_sealed_to_its_emulated_chip(tmp_path):
    import json

    state = tmp_path / "state"
    config = board_config(tmp_path, "boardA", state)
    SecureElement(new_chip(tmp_path, "boardA").open, SLOT, "A").program(os.urandom(32))
    report = tmp_path / "report.json"
    assert main(["simulate", "--config", str(config), "--customers", "4", "--state-dir", str(state), "--report",
                 str(report), "--seed", "3", "--synthetic", "--employees", "3"]) == 0
    result = json.loads(report.read_text())
    assert result["charges_equal_vends"] is True and result["identification"]["wrong_payer"] == 0
    keys = [p for p in (state / "keys").iterdir() if p.suffix == ".key"]
    assert keys and all(p.read_bytes().startswith(WRAP_MAGICS["secure_element"]) for p in keys)
