"""The unit's keys: data key (AES-256-GCM), unit signing key (Ed25519), pinned fleet keys.

Every secret lives in ``<state_dir>/keys/`` as a 0600 file, created once (at
provisioning or first start) and never overwritten: losing the data key would
make every stored template unreadable, so an existing key is always reused.
A key file with looser permissions, the wrong size or the wrong kind is refused
with KeyFileError rather than used, because a key others could read is no key.

Key modes (``[keys] mode``): in ``otp`` mode every secret file is wrapped with
AES-256-GCM under a key derived (HKDF-SHA256) from the board's OTP device secret,
in ``secure_element`` mode from an ATECC608's answer to a stored challenge (its
slot secret never leaves the chip), so a copied SD card opens nothing on any other
board (key_wrap.py); the secret is read by the CLI/unit layer (devices/) and handed
in as a callable, since money never imports devices. ``software`` mode keeps plain
0600 files (a copied card opens everything); selftest and the heartbeat say so.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from typing import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import KeyFileError
from .key_files import _read_public, _read_secret, _write_new_secret
from .key_wrap import SEAL_COMMAND, KeyWrap, is_wrapped
from .storage import write_file_atomically
from .template_cipher import NONCE_BYTES, TAG_BYTES, TemplateCipher  # noqa: F401  (importable from here)

KEYS_DIR = "keys"
DATA_KEY_FILE = "data.key"
SIGNING_KEY_FILE = "unit_signing.key"
FLEET_TEMPLATE_KEY_FILE = "fleet_template.key"
SYMMETRIC_KEY_BYTES = 32  # AES-256
FLEET_SIGNING_KEY_FILE = "fleet_signing.key"
FLEET_PUBLIC_KEY_FILE = "fleet_public_key.pem"
UNIT_ID_FILE = "unit_id"
TEMPLATE_GUARD_KEY_FILE = "template_guard.key"


def generate_symmetric_key() -> bytes:
    return os.urandom(SYMMETRIC_KEY_BYTES)


def signing_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key: the office registers a unit by its id and this."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()


def grouped(fingerprint_hex: str) -> str:
    """The fingerprint in groups of four, easier to read aloud and compare (the office compares hex digits)."""
    return " ".join(fingerprint_hex[i:i + 4] for i in range(0, len(fingerprint_hex), 4))


def parse_signing_key(data: bytes, path: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}, not an Ed25519 signing key")
    return key


def parse_public_key(data: bytes, path: Path | str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_signing_key_file(path: Path | str) -> Ed25519PrivateKey:
    """An Ed25519 signing key from a 0600 PEM file (the fleet key on a technician's laptop)."""
    path = Path(path)
    return parse_signing_key(_read_secret(path, "signing key"), path)


def load_public_key_file(path: Path | str) -> Ed25519PublicKey:
    path = Path(path)
    return parse_public_key(_read_public(path, "public key"), path)


def load_symmetric_key_file(path: Path | str, what: str) -> bytes:
    path = Path(path)
    return load_symmetric_key_bytes(_read_secret(path, what), path, what)


def load_symmetric_key_bytes(key: bytes, where, what: str) -> bytes:
    if len(key) != SYMMETRIC_KEY_BYTES:
        raise KeyFileError(f"{where}: the {what} is {len(key)} bytes, expected {SYMMETRIC_KEY_BYTES}")
    return key


# --- the unit's key store ------------------------------------------------------
class KeyStore:
    """The unit's keys under ``<state_dir>/keys``, plain (``software``) or wrapped to the board (``otp``).

    ``device_secret`` is a callable giving the board's 32-byte OTP secret (devices/otp.py builds it
    from config, the CLI/unit layer passes it in); it is called only when a key file is read or written.
    """

    def __init__(self, state_dir: Path | str, fleet_public_key_path: Path | str | None = None,
                 mode: str = "software", device_secret: Callable[[], bytes] | None = None):
        self.state_dir = Path(state_dir)
        self.keys_dir = self.state_dir / KEYS_DIR
        self.fleet_public_key_path = Path(fleet_public_key_path or self.state_dir / FLEET_PUBLIC_KEY_FILE)
        self._wrap = KeyWrap(mode, device_secret)

    @classmethod
    def from_config(cls, cfg, device_secret: Callable[[], bytes] | None = None) -> "KeyStore":
        keys_cfg = getattr(cfg, "keys", None)
        return cls(cfg.state_dir, cfg.fleet_public_key_path, keys_cfg.mode if keys_cfg else "software",
                   device_secret)

    @property
    def key_mode(self) -> str:
        """"software", "otp" or "secure_element"; reported in the heartbeat and by selftest."""
        return self._wrap.mode

    def _seal(self, data: bytes, path: Path) -> bytes:
        return self._wrap.seal(data, path)

    def _unseal(self, data: bytes, path: Path) -> bytes:
        return self._wrap.unseal(data, path)

    def check_board(self) -> None:
        """Fail now, naming the cause, if this board's secret cannot be read (otp, secure_element)."""
        self._wrap.check_board()

    def seal_existing_keys(self) -> list[Path]:
        """Wrap every plain key file to this board (software -> otp or secure_element); the files it sealed."""
        if self.key_mode == "software":
            raise KeyFileError(f"`{SEAL_COMMAND}` needs keys.mode = \"otp\" or \"secure_element\" in the config")
        self.check_board()  # no usable board secret: fail before touching any file
        sealed = []
        for path in (self.data_key_path, self.signing_key_path, self.fleet_template_key_path,
                     self.template_guard_key_path):
            if not path.exists():
                continue
            data = _read_secret(path, "key")
            if is_wrapped(data):
                self._unseal(data, path)  # already sealed, and to this board
                continue
            try:
                write_file_atomically(path, self._seal(data, path), 0o600)
            except OSError as exc:
                raise KeyFileError(f"{path}: cannot seal the key: {exc}") from None
            sealed.append(path)
        return sealed

    @property
    def data_key_path(self) -> Path:
        return self.keys_dir / DATA_KEY_FILE

    @property
    def signing_key_path(self) -> Path:
        return self.keys_dir / SIGNING_KEY_FILE

    @property
    def fleet_template_key_path(self) -> Path:
        return self.keys_dir / FLEET_TEMPLATE_KEY_FILE

    # data key
    def has_data_key(self) -> bool:
        return self.data_key_path.exists()

    def load_data_key(self) -> bytes:
        """The 32-byte AES-256 key that encrypts templates at rest; KeyFileError if unusable."""
        key = self._unseal(_read_secret(self.data_key_path, "unit data key"), self.data_key_path)
        if len(key) != SYMMETRIC_KEY_BYTES:
            raise KeyFileError(
                f"{self.data_key_path}: the unit data key is {len(key)} bytes, expected {SYMMETRIC_KEY_BYTES}"
            )
        return key

    def create_data_key(self) -> bytes:
        key = generate_symmetric_key()
        _write_new_secret(self.data_key_path, self._seal(key, self.data_key_path))
        return key

    def ensure_data_key(self) -> bytes:
        """Load the data key, creating it only if there is none yet."""
        if not self.has_data_key():
            try:
                return self.create_data_key()
            except KeyFileError:
                if not self.has_data_key():  # not a lost race with another process
                    raise
        return self.load_data_key()

    # unit signing key (signs journal exports)
    def load_signing_key(self) -> Ed25519PrivateKey:
        return parse_signing_key(self._unseal(_read_secret(self.signing_key_path, "unit signing key"),
                                              self.signing_key_path),
                                 self.signing_key_path)

    def ensure_signing_key(self) -> Ed25519PrivateKey:
        if not self.signing_key_path.exists():
            key = Ed25519PrivateKey.generate()
            try:
                _write_new_secret(self.signing_key_path, self._seal(signing_key_to_pem(key), self.signing_key_path))
                return key
            except KeyFileError:
                if not self.signing_key_path.exists():
                    raise
        return self.load_signing_key()

    # fleet keys (pinned at provisioning)
    def load_fleet_public_key(self) -> Ed25519PublicKey:
        """The fleet's public key that every account bundle must be signed with."""
        path = self.fleet_public_key_path
        if not path.exists():
            raise KeyFileError(f"{path}: no fleet public key pinned (run `vendor-node provision`)")
        return parse_public_key(_read_public(path, "fleet public key"), path)

    def pin_fleet_public_key(self, pem: bytes, replace: bool = False) -> Ed25519PublicKey:
        """Pin the fleet key; re-pinning a different key needs ``replace`` (it moves the trust anchor)."""
        key = parse_public_key(pem, "fleet public key")
        canonical = public_key_to_pem(key)
        path = self.fleet_public_key_path
        if path.exists():
            current = self.load_fleet_public_key()
            if public_key_to_pem(current) == canonical:
                return current
            if not replace:
                raise KeyFileError(
                    f"{path}: a different fleet public key is already pinned; "
                    "pass --replace-fleet-key to trust the new one instead"
                )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_file_atomically(path, canonical, 0o644)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot pin the fleet public key: {exc}") from None
        return key

    def has_fleet_template_key(self) -> bool:
        return self.fleet_template_key_path.exists()

    def load_fleet_template_key(self) -> bytes:
        """The fleet-wide AES-256 key that templates travel under (bundles, upload queue)."""
        key = self._unseal(_read_secret(self.fleet_template_key_path, "fleet template key"),
                           self.fleet_template_key_path)
        if len(key) != SYMMETRIC_KEY_BYTES:
            raise KeyFileError(f"{self.fleet_template_key_path}: the fleet template key is {len(key)} bytes, "
                               f"expected {SYMMETRIC_KEY_BYTES}")
        return key

    def install_fleet_template_key(self, key: bytes) -> None:
        if len(key) != SYMMETRIC_KEY_BYTES:
            raise KeyFileError(f"fleet template key is {len(key)} bytes, expected {SYMMETRIC_KEY_BYTES}")
        if self.has_fleet_template_key():
            if self.load_fleet_template_key() == key:
                return
            raise KeyFileError(f"{self.fleet_template_key_path}: a different fleet template key is already "
                               "installed; refusing to replace it (templates travelling under it would be lost)")
        _write_new_secret(self.fleet_template_key_path, self._seal(key, self.fleet_template_key_path))

    # the fleet's template guard secret (hand/template_guard.py): templates are stored only under it
    @property
    def template_guard_key_path(self) -> Path:
        return self.keys_dir / TEMPLATE_GUARD_KEY_FILE

    def has_template_guard_key(self) -> bool:
        return self.template_guard_key_path.exists()

    def load_template_guard_key(self) -> bytes:
        return load_symmetric_key_bytes(self._unseal(_read_secret(self.template_guard_key_path, "template guard key"),
                                                     self.template_guard_key_path), self.template_guard_key_path,
                                        "template guard key")

    def ensure_template_guard_key(self, fleet_key: bytes | None = None) -> bytes:
        """The guard secret: the fleet's (installed once at provisioning) or, for a lone unit, its own."""
        if not self.has_template_guard_key():
            key = fleet_key if fleet_key is not None else generate_symmetric_key()
            load_symmetric_key_bytes(key, "template guard key", "template guard key")
            try:
                _write_new_secret(self.template_guard_key_path, self._seal(key, self.template_guard_key_path))
                return key
            except KeyFileError:
                if not self.has_template_guard_key():
                    raise
        current = self.load_template_guard_key()
        if fleet_key is not None and fleet_key != current:
            raise KeyFileError(f"{self.template_guard_key_path}: a different template guard key is installed; "
                               "change it only with `vendor-node keys renew-template-guard` (re-transforms templates)")
        return current

    def replace_template_guard_key(self, new_key: bytes) -> None:
        """Renewal's last step (after every template is re-transformed): the old secret is overwritten."""
        load_symmetric_key_bytes(new_key, "new template guard key", "template guard key")
        try:
            write_file_atomically(self.template_guard_key_path, self._seal(new_key, self.template_guard_key_path),
                                  0o600)
        except OSError as exc:
            raise KeyFileError(f"{self.template_guard_key_path}: cannot write the template guard key: {exc}") from None

    # the unit's identity, fixed at provisioning
    @property
    def unit_id_path(self) -> Path:
        return self.state_dir / UNIT_ID_FILE

    def read_unit_id(self) -> str | None:
        try:
            return self.unit_id_path.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{self.unit_id_path}: cannot read the unit id: {exc}") from None

    def write_unit_id(self, unit_id: str) -> None:
        current = self.read_unit_id()
        if current == unit_id:
            return
        if current is not None:
            raise KeyFileError(f"{self.unit_id_path}: this unit is already provisioned as {current!r}, "
                               f"not {unit_id!r}")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.unit_id_path.write_text(unit_id + "\n", encoding="utf-8")
        except OSError as exc:
            raise KeyFileError(f"{self.unit_id_path}: cannot write the unit id: {exc}") from None


def load_data_key(state_dir: Path | str) -> bytes:
    """Shortcut for modules that only need the data key."""
    return KeyStore(state_dir).load_data_key()


# --- fleet side (technician / back office) ---------------------------------------
def generate_fleet_keys(out_dir: Path | str) -> dict[str, Path]:
    """A new fleet signing key pair and fleet template key in ``out_dir`` (secrets 0600)."""
    out_dir = Path(out_dir)
    paths = {
        "signing_key": out_dir / FLEET_SIGNING_KEY_FILE,
        "public_key": out_dir / FLEET_PUBLIC_KEY_FILE,
        "template_key": out_dir / FLEET_TEMPLATE_KEY_FILE,
    }
    clashes = [str(p) for p in paths.values() if p.exists()]
    if clashes:
        raise KeyFileError(f"{clashes[0]}: already exists; refusing to overwrite fleet keys")
    key = Ed25519PrivateKey.generate()
    _write_new_secret(paths["signing_key"], signing_key_to_pem(key))
    _write_new_secret(paths["template_key"], generate_symmetric_key())
    try:
        paths["public_key"].write_bytes(public_key_to_pem(key.public_key()))
        os.chmod(paths["public_key"], 0o644)
    except OSError as exc:
        raise KeyFileError(f"{paths['public_key']}: cannot write: {exc}") from None
    return paths
