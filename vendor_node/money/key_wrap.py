"""Wrapping the unit's key files to the board: AES-256-GCM under an HKDF key from the Pi's OTP secret.

Why: the key files sit on the same SD card as the database they open. Wrapped under a key that
only this board's OTP can give, a copied card (or a whole copied state directory) opens nothing
on any other board. ``software`` mode writes plain files and is reported as a warning.

The secret itself is read by devices/otp.py; money never imports devices, so the caller hands it
in as a callable, read only when a key file is actually read or written.
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

KEY_MODES = ("software", "otp")
WRAP_MAGIC = b"VNKWRAP1"  # starts every wrapped key file
WRAP_SALT = b"vendor-node unit key wrap v1"
WRAP_NONCE_BYTES = 12
DEVICE_SECRET_BYTES = 32  # the Pi 4/5 OTP device private key: 8 rows of 32 bits
SEAL_COMMAND = "vendor-node keys seal"
SOFTWARE_MODE_WARNING = ("keys.mode = \"software\": key files are plain on the SD card, so a copied card opens "
                         "every template; use keys.mode = \"otp\" on a Pi 4/5 (docs/threat-model.md)")


def wrapping_key(device_secret: bytes) -> bytes:
    """The key-encryption key: HKDF-SHA256 of the board's OTP secret (the secret itself is never a key)."""
    if not isinstance(device_secret, (bytes, bytearray)) or len(device_secret) != DEVICE_SECRET_BYTES:
        raise KeyFileError(f"the board's OTP device secret must be {DEVICE_SECRET_BYTES} bytes")
    if not any(device_secret):
        raise KeyFileError("the board's OTP device key is all zeros (not programmed): run "
                           "`vendor-node keys program-otp` once, or use keys.mode = \"software\"")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=WRAP_SALT,
                info=b"unit key files").derive(bytes(device_secret))


def is_wrapped(data: bytes) -> bool:
    return data.startswith(WRAP_MAGIC)


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
                raise KeyFileError("keys.mode = \"otp\" but the key store was opened without the board's OTP "
                                   "key source (open it with vendor_node.unit.keysource.unit_keystore(cfg))")
            self._kek = wrapping_key(self._device_secret())
        return self._kek

    def check_board(self) -> None:
        """Read the OTP secret now (KeyFileError naming why it cannot be used); no-op in software mode."""
        if self.mode == "otp":
            self._key()

    def seal(self, data: bytes, path: Path) -> bytes:
        if self.mode != "otp":
            return data
        nonce = os.urandom(WRAP_NONCE_BYTES)
        return WRAP_MAGIC + nonce + AESGCM(self._key()).encrypt(nonce, data, _aad(path))

    def unseal(self, data: bytes, path: Path) -> bytes:
        """The key bytes; a KeyFileError naming the cause when this board cannot open them."""
        if self.mode != "otp":
            if is_wrapped(data):
                raise KeyFileError(f"{path}: this key is sealed to a board's OTP key but keys.mode is "
                                   "\"software\"; set keys.mode = \"otp\" (on the board it was sealed on)")
            return data
        if not is_wrapped(data):
            raise KeyFileError(f"{path}: this key file is not sealed to the board (made in software key mode); "
                               f"run `{SEAL_COMMAND}` once to seal the existing keys, then start again")
        body = data[len(WRAP_MAGIC):]
        try:
            return AESGCM(self._key()).decrypt(body[:WRAP_NONCE_BYTES], body[WRAP_NONCE_BYTES:], _aad(path))
        except (InvalidTag, ValueError):
            raise KeyFileError(f"{path}: sealed to another board's OTP key: this state directory was copied "
                               "from another unit (or the OTP key source changed), so nothing in it opens here; "
                               "provision this board afresh with its own state directory") from None


def template_guard_key_from_fleet(fleet_template_key: bytes) -> bytes:
    """The fleet's template guard secret when provisioning gives only the fleet template key: every unit of
    the fleet derives the same one, and it is not the transport key itself."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"vendor-node template guard v1",
                info=b"fleet template guard").derive(fleet_template_key)
