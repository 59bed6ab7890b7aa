"""Wrapping the unit's key files to the board: AES-256-GCM under an HKDF key from a secret only the board gives.

Why: the key files sit on the same SD card as the database they open. Wrapped under a key that
only this board can give, a copied card (or a whole copied state directory) opens nothing on any
other board. The board's secret is the Pi's OTP device key (``otp``) or a secure element's answer
to a challenge kept in the state directory (``secure_element``: the chip's slot secret never
leaves it). ``software`` mode writes plain files and is reported as a warning.

The secret itself is read by devices/otp.py or devices/secure_element.py; money never imports
devices, so the caller hands it in as a callable, read only when a key file is read or written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import KeyFileError
from .key_files import _read_secret, _write_new_secret

KEY_MODES = ("software", "otp", "secure_element")
WRAP_MAGIC = b"VNKWRAP1"  # starts every key file wrapped to an OTP key
WRAP_MAGICS = {"otp": WRAP_MAGIC, "secure_element": b"VNKWRSE1"}  # the magic names the key source
BOARD_SECRET = {"otp": "OTP key", "secure_element": "secure element"}
CHALLENGE_FILE = "secure_element.challenge"  # in keys/: what the secure element answers (not secret alone)
WRAP_SALT = b"vendor-node unit key wrap v1"
WRAP_NONCE_BYTES = 12
DEVICE_SECRET_BYTES = 32  # the Pi 4/5 OTP device private key: 8 rows of 32 bits
SEAL_COMMAND = "vendor-node keys seal"
SOFTWARE_MODE_WARNING = ("keys.mode = \"software\": key files are plain on the SD card, so a copied card opens "
                         "every template; use keys.mode = \"otp\" on a Pi 4/5, or \"secure_element\" with an "
                         "ATECC608 (docs/threat-model.md)")


def wrapping_key(device_secret: bytes, mode: str = "otp") -> bytes:
    """The key-encryption key: HKDF-SHA256 of the board's secret (the secret itself is never a key); the info
    names the key source, so an OTP key and a chip's answer never give the same key."""
    what = BOARD_SECRET.get(mode, mode)
    if not isinstance(device_secret, (bytes, bytearray)) or len(device_secret) != DEVICE_SECRET_BYTES:
        raise KeyFileError(f"the board's {what} secret must be {DEVICE_SECRET_BYTES} bytes")
    if not any(device_secret):
        raise KeyFileError(f"the board's {what} secret is all zeros (not programmed): run "
                           f"`vendor-node keys program-{mode.replace('_', '-')}` once, or use keys.mode = \"software\"")
    info = b"unit key files" if mode == "otp" else b"unit key files|" + mode.encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=WRAP_SALT, info=info).derive(bytes(device_secret))


def is_wrapped(data: bytes) -> bool:
    return wrapped_mode(data) is not None


def wrapped_mode(data: bytes) -> str | None:
    """The key mode a key file was sealed in ("otp", "secure_element"), None for a plain file."""
    return next((mode for mode, magic in WRAP_MAGICS.items() if data.startswith(magic)), None)


def wrap_challenge(keys_dir: Path) -> bytes:
    """The 32 random bytes the secure element answers (keys/secure_element.challenge), made once.

    Alone it opens nothing (the chip's slot secret is in the answer); lost while key files are sealed
    with it, those files can never be opened, so it is never made again over sealed files.
    """
    path = Path(keys_dir) / CHALLENGE_FILE
    if not path.exists():
        sealed = sorted(p.name for p in Path(keys_dir).glob("*.key")
                        if p.is_file() and wrapped_mode(p.read_bytes()[:len(WRAP_MAGIC)]) == "secure_element")
        if sealed:
            raise KeyFileError(f"{path}: missing, but {', '.join(sealed)} were sealed with it: those keys cannot be "
                               "opened without it (restore it from the unit's backup, or provision afresh)")
        try:
            _write_new_secret(path, os.urandom(DEVICE_SECRET_BYTES))
        except KeyFileError:
            if not path.exists():  # not a lost race with another process
                raise
    challenge = _read_secret(path, "secure element challenge")
    if len(challenge) != DEVICE_SECRET_BYTES:
        raise KeyFileError(f"{path}: the secure element challenge is {len(challenge)} bytes, "
                           f"expected {DEVICE_SECRET_BYTES}")
    return challenge


def _aad(path: Path) -> bytes:
    """Binds a wrapped key to its role (the file name): the data key cannot be swapped in as another key."""
    return b"vendor-node key|" + path.name.encode("utf-8")


class KeyWrap:
    """Seal/unseal of key file contents for one key mode."""

    def __init__(self, mode: str, device_secret: Callable[[], bytes] | None = None):
        if mode not in KEY_MODES:
            raise KeyFileError(f"keys.mode: must be one of {', '.join(KEY_MODES)}, got {mode!r}")
        self.mode = mode
        self._device_secret = device_secret
        self._kek: bytes | None = None

    def _key(self) -> bytes:
        if self._kek is None:
            if self._device_secret is None:  # unit id and public keys need no secret; the key files do
                raise KeyFileError(f"keys.mode = \"{self.mode}\" but the key store was opened without the board's "
                                   f"{BOARD_SECRET[self.mode]} source (open it with "
                                   "vendor_node.unit.keysource.unit_keystore)")
            self._kek = wrapping_key(self._device_secret(), self.mode)
        return self._kek

    def check_board(self) -> None:
        """Read the board's secret now (KeyFileError naming why it cannot be used); no-op in software mode."""
        if self.mode != "software":
            self._key()

    def seal(self, data: bytes, path: Path) -> bytes:
        if self.mode == "software":
            return data
        nonce = os.urandom(WRAP_NONCE_BYTES)
        return WRAP_MAGICS[self.mode] + nonce + AESGCM(self._key()).encrypt(nonce, data, _aad(path))

    def unseal(self, data: bytes, path: Path) -> bytes:
        """The key bytes; a KeyFileError naming the cause when this board cannot open them."""
        sealed_in = wrapped_mode(data)
        if sealed_in != self.mode and sealed_in is not None:
            raise KeyFileError(f"{path}: this key is sealed to a board's {BOARD_SECRET[sealed_in]} but keys.mode is "
                               f"\"{self.mode}\"; set keys.mode = \"{sealed_in}\" (on the board it was sealed on)")
        if self.mode == "software":
            return data
        if sealed_in is None:
            raise KeyFileError(f"{path}: this key file is not sealed to the board (made in software key mode); "
                               f"run `{SEAL_COMMAND}` once to seal the existing keys, then start again")
        body = data[len(WRAP_MAGICS[self.mode]):]
        try:
            return AESGCM(self._key()).decrypt(body[:WRAP_NONCE_BYTES], body[WRAP_NONCE_BYTES:], _aad(path))
        except (InvalidTag, ValueError):
            what = BOARD_SECRET[self.mode]
            raise KeyFileError(f"{path}: sealed to another board's {what}: this state directory was copied "
                               f"from another unit (or the {what} changed), so nothing in it opens here; "
                               "provision this board afresh with its own state directory") from None


def template_guard_key_from_fleet(fleet_template_key: bytes) -> bytes:
    """The fleet's template guard secret when provisioning gives only the fleet template key: every unit of
    the fleet derives the same one, and it is not the transport key itself."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"vendor-node template guard v1",
                info=b"fleet template guard").derive(fleet_template_key)
