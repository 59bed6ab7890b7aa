"""An emulated ATECC608 behind the same transport as the I2C one (simulator, tests): "another board" is another file.

It speaks the bytes the real chip speaks (wake answer, word addresses, packets with CRC-16, status answers,
busy reads not acknowledged until woken) for the commands the unit uses: Read of the config zone, Write
of a data slot while the data zone is unlocked, Lock, and MAC with the configuration checks the chip makes.
Its slots and lock bytes persist in a JSON file which, like the chip on a board, must live outside the
state directory (devices/secure_element.py refuses one inside).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import KeyFileError
from .secure_element import (LOCKED, OP_LOCK, OP_MAC, OP_READ, OP_WRITE, WAKE_ANSWER, WORD_COMMAND, ChipConfig,
                             crc16, expected_mac)

UNLOCKED = 0x55
SECRET_SLOT_CONFIG = 0x2080  # IsSecret, WriteConfig = Never: readable by nobody, written once before the lock
SHA_KEY_CONFIG = 0x003C  # KeyType 7 (SHA key), Lockable
ECC_KEY_CONFIG = 0x0033  # KeyType 4 (P256), Private, PubInfo: what other slots of a TLS config hold


def fresh_config(slot: int, *, config_locked: bool = True, slot_config: int = SECRET_SLOT_CONFIG,
                 key_config: int = SHA_KEY_CONFIG) -> bytes:
    """A new chip's configuration zone: a random serial number, ``slot`` set up as a secret SHA key."""
    raw = bytearray(128)
    raw[0:4] = bytes([0x01, 0x23]) + os.urandom(2)
    raw[4:8] = bytes([0x00, 0x00, 0x60, 0x02])  # ATECC608A revision
    raw[8:13] = os.urandom(4) + bytes([0xEE])
    raw[16] = 0xC0  # I2C address 0x60, as the chip stores it
    for n in range(16):
        sc, kc = (slot_config, key_config) if n == slot else (0x0000, ECC_KEY_CONFIG)
        raw[20 + 2 * n:22 + 2 * n] = sc.to_bytes(2, "little")
        raw[96 + 2 * n:98 + 2 * n] = kc.to_bytes(2, "little")
    raw[86] = UNLOCKED
    raw[87] = LOCKED if config_locked else UNLOCKED
    raw[88:90] = b"\xff\xff"
    return bytes(raw)


class EmulatedChip:
    """The chip's persistent state (config zone, slots) in a file; ``open()`` gives a transport to it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path | str, slot: int, **config) -> "EmulatedChip":
        chip = cls(path)
        if chip.path.exists():
            raise KeyFileError(f"{chip.path}: an emulated chip is already there")
        chip.path.parent.mkdir(parents=True, exist_ok=True)
        chip._save({"config": fresh_config(slot, **config).hex(), "slots": {}})
        return chip

    def open(self) -> "EmulatedWire":
        if not self.path.exists():
            raise KeyFileError(f"{self.path}: no secure element on this board (emulated chip file missing)")
        return EmulatedWire(self)

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{self.path}: cannot read the emulated chip: {exc}") from None

    def _save(self, state: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, self.path)


class EmulatedWire:
    """The transport to an emulated chip: ``wake``, ``write``, ``read``, ``close``, as I2cTransport."""

    def __init__(self, chip: EmulatedChip):
        self.chip = chip
        self.awake = False
        self._out = b""

    def wake(self) -> None:
        self.awake, self._out = True, WAKE_ANSWER

    def write(self, data: bytes) -> None:
        if not self.awake:
            raise OSError(errno.EREMOTEIO, "not acknowledged (asleep)")
        if data[:1] == bytes([WORD_COMMAND]):
            self._out = _answer(self._run(data[1:]))
        else:  # sleep, idle, reset
            self.awake, self._out = False, b""

    def read(self, count: int) -> bytes:
        if not self.awake or not self._out:
            raise OSError(errno.EREMOTEIO, "not acknowledged")
        data, self._out = self._out[:count], self._out[count:]
        return data + bytes(count - len(data))

    def close(self) -> None:
        self.awake = False

    def _run(self, packet: bytes) -> bytes:
        """The answer's data for one command packet (a status byte when there is nothing else)."""
        if len(packet) < 7 or packet[0] != len(packet) or crc16(packet[:-2]) != packet[-2:]:
            return b"\xff"
        opcode, param1, param2, data = packet[1], packet[2], int.from_bytes(packet[3:5], "little"), packet[5:-2]
        state = self.chip.load()
        config = bytearray.fromhex(state["config"])
        view = ChipConfig(bytes(config))
        if opcode == OP_READ and param1 == 0x80:
            block = (param2 >> 3) & 0x3
            return bytes(config[32 * block:32 * block + 32])
        if opcode == OP_WRITE and param1 == 0x82 and len(data) == 32:
            if not view.config_locked or view.data_locked:
                return b"\x0f"
            state["slots"][str((param2 >> 3) & 0xF)] = data.hex()
        elif opcode == OP_LOCK and param1 in (0x80, 0x81):
            byte = 87 if param1 == 0x80 else 86
            if config[byte] == LOCKED or (byte == 86 and not view.config_locked):
                return b"\x0f"
            config[byte] = LOCKED
            state["config"] = config.hex()
        elif opcode == OP_MAC and param1 in (0x00, 0x40) and len(data) == 32:
            slot = param2 & 0xF
            if not view.data_locked or view.slot_problems(slot):
                return b"\x0f"
            secret = bytes.fromhex(state["slots"].get(str(slot), "00" * 32))
            return expected_mac(secret, data, param2, view.serial, param1)
        else:
            return b"\x03"  # parse error: a command this emulation does not know
        self.chip._save(state)
        return b"\x00"


def _answer(data: bytes) -> bytes:
    body = bytes([len(data) + 3]) + data
    return body + crc16(body)
