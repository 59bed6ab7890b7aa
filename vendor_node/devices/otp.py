"""The board's OTP device key: the 256-bit secret the unit's key files are wrapped under (money/key_wrap.py).

Raspberry Pi 4 and 5 carry a 256-bit device private key in OTP, readable only on that board
through the firmware mailbox (``vcmailbox``, as ``rpi-otp-private-key`` in raspberrypi/rpi-eeprom
does). Programming it is irreversible: OTP bits never go back from 1 to 0. The simulator and the
tests use an emulated OTP key instead: a 32-byte file chosen by ``keys.otp_file``, kept outside the
state directory so that copying a unit's state directory to another "board" does not carry it.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ..errors import KeyFileError

OTP_KEY_BYTES = 32
OTP_ROWS = 8
GET_PRIVATE_KEY_TAG = "0x00030081"  # firmware mailbox: read the device private key rows
SET_PRIVATE_KEY_TAG = "0x00038081"  # firmware mailbox: program them (irreversible)
MAILBOX_SUCCESS = 0x80000000
VCMAILBOX = "vcmailbox"
VCMAILBOX_TIMEOUT_S = 10.0


class EmulatedOtp:
    """A file standing in for the OTP key (simulation, tests): read-only once written, like OTP."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def describe(self) -> str:
        return f"emulated OTP key {self.path}"

    def is_programmed(self) -> bool:
        return self.path.exists() and any(self._read_bytes())

    def read(self) -> bytes:
        if not self.path.exists():
            raise KeyFileError(f"{self.path}: no OTP key on this board (emulated OTP file missing): the key files "
                               "here were sealed on another board, or `vendor-node keys program-otp` was never run")
        data = self._read_bytes()
        if len(data) != OTP_KEY_BYTES:
            raise KeyFileError(f"{self.path}: the emulated OTP key is {len(data)} bytes, expected {OTP_KEY_BYTES}")
        return data

    def program(self, secret: bytes) -> None:
        """Write the key once; like OTP it can never be changed afterwards."""
        _check_secret(secret)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{self.path}: the OTP key is already programmed; OTP cannot be rewritten") from None
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot program the emulated OTP key: {exc}") from None
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot read the emulated OTP key: {exc}") from None


class FirmwareOtp:
    """The Pi 4/5's OTP device private key through the firmware mailbox (``vcmailbox``, needs root or video)."""

    def __init__(self, vcmailbox: str = VCMAILBOX, run=subprocess.run):
        self.vcmailbox = vcmailbox
        self._run = run

    def describe(self) -> str:
        return "the board's OTP device key (vcmailbox)"

    def is_programmed(self) -> bool:
        return any(self._rows(GET_PRIVATE_KEY_TAG, [0] * OTP_ROWS))

    def read(self) -> bytes:
        return b"".join(row.to_bytes(4, "big") for row in self._rows(GET_PRIVATE_KEY_TAG, [0] * OTP_ROWS))

    def program(self, secret: bytes) -> None:
        _check_secret(secret)
        if self.is_programmed():
            raise KeyFileError("the board's OTP device key is already programmed; OTP cannot be rewritten")
        rows = [int.from_bytes(secret[i:i + 4], "big") for i in range(0, OTP_KEY_BYTES, 4)]
        self._rows(SET_PRIVATE_KEY_TAG, rows)
        if self.read() != secret:
            raise KeyFileError("the board's OTP key reads back different from what was programmed")

    def _rows(self, tag: str, rows: list[int]) -> list[int]:
        """Run one mailbox call (8 rows in, 8 rows out) and return the rows the firmware answered."""
        command = [self.vcmailbox, tag, "40", "40", "0", str(OTP_ROWS)] + [f"0x{r:08x}" for r in rows]
        try:
            done = self._run(command, capture_output=True, text=True, timeout=VCMAILBOX_TIMEOUT_S, check=False)
        except FileNotFoundError:
            raise KeyFileError(f"{self.vcmailbox}: not found; the OTP key is read through the Raspberry Pi "
                               "firmware mailbox (package raspi-utils), or set keys.otp_file / keys.mode") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KeyFileError(f"{self.vcmailbox}: cannot read the OTP key: {exc}") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise KeyFileError(f"{self.vcmailbox}: cannot read the OTP key (exit {done.returncode}: {why[0]}); "
                               "the service user needs access to /dev/vcio (group video)")
        return parse_mailbox_rows(done.stdout)


def parse_mailbox_rows(output: str) -> list[int]:
    """The 8 key rows from vcmailbox's answer (words 8..15, as rpi-otp-private-key reads them)."""
    words = re.findall(r"0x[0-9a-fA-F]{1,8}", output)
    if len(words) < 7 + OTP_ROWS:
        raise KeyFileError(f"vcmailbox: unexpected answer {output.strip()[:120]!r}")
    values = [int(w, 16) for w in words]
    if values[1] != MAILBOX_SUCCESS:
        raise KeyFileError(f"vcmailbox: the firmware refused the OTP request (status 0x{values[1]:08x}); "
                           "this board may have no OTP device key (Zero 2 W, Pi 3 and older)")
    return values[7:7 + OTP_ROWS]


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) != OTP_KEY_BYTES or not any(secret):
        raise KeyFileError(f"an OTP key must be {OTP_KEY_BYTES} random bytes, not all zeros")


def otp_source(keys_cfg, state_dir: Path | str):
    """The OTP key source ``[keys]`` names; an emulated file inside the state dir is refused."""
    if keys_cfg.otp_file is None:
        return FirmwareOtp()
    return EmulatedOtp(outside_state_dir(keys_cfg.otp_file, state_dir, "keys.otp_file", "an emulated OTP key"))


def outside_state_dir(path, state_dir, key: str, what: str) -> Path:
    """``path`` made absolute; KeyFileError naming ``key`` when it lies inside the state directory."""
    path, state = Path(path).absolute(), Path(state_dir).absolute()
    if path == state or state in path.parents:
        raise KeyFileError(f"{key}: {path} is inside the state directory {state}; {what} must live outside it, "
                           "or a copied state directory would carry its own key")
    return path
