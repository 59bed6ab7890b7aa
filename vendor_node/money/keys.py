"""The unit's keys: data key (AES-256-GCM), unit signing key (Ed25519), pinned fleet keys.

Every secret lives in ``<state_dir>/keys/`` as a 0600 file, created once (at
provisioning or first start) and never overwritten: losing the data key would
make every stored template unreadable, so an existing key is always reused.
A key file with looser permissions, the wrong size or the wrong kind is refused
with KeyFileError rather than used, because a key others could read is no key.

Sealing with the Pi's OTP device key later needs only a ``KeyStore`` subclass
that overrides ``_seal`` / ``_unseal``; nothing else reads the key files.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import KeyFileError
from .storage import write_file_atomically

KEYS_DIR = "keys"
DATA_KEY_FILE = "data.key"
SIGNING_KEY_FILE = "unit_signing.key"
FLEET_TEMPLATE_KEY_FILE = "fleet_template.key"
SYMMETRIC_KEY_BYTES = 32  # AES-256
FLEET_SIGNING_KEY_FILE = "fleet_signing.key"
FLEET_PUBLIC_KEY_FILE = "fleet_public_key.pem"
UNIT_ID_FILE = "unit_id"


# --- file helpers ------------------------------------------------------------
def _write_new_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file, atomically (temp file + fsync + rename); never overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)  # in case the umask was odd
        os.link(tmp, path)  # fails if someone created the key meanwhile: never replace one
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the key: {exc}") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _read_secret(path: Path, what: str) -> bytes:
    """Read a secret key file, refusing anything but a regular 0600 (or stricter) file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} not found (run `vendor-node provision`)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: the {what} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open for the {what}; "
            f"it must be 0600 (chmod 600 {path})"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc}") from None


def _read_public(path: Path, what: str) -> bytes:
    """Read a public key file; it need not be secret but must not be writable by others."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc}") from None
    if st.st_mode & 0o022:
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} let others replace the {what}; "
            f"it must not be group- or world-writable (chmod 644 {path})"
        )
    return data


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
    key = _read_secret(path, what)
    if len(key) != SYMMETRIC_KEY_BYTES:
        raise KeyFileError(f"{path}: the {what} is {len(key)} bytes, expected {SYMMETRIC_KEY_BYTES}")
    return key


# --- the unit's key store ------------------------------------------------------
class KeyStore:
    """The unit's keys under ``<state_dir>/keys``; the one seam for sealing them later.

    ``_seal``/``_unseal`` are the identity here; an OTP-sealed store overrides
    them to wrap the bytes with a key derived from the Pi's device secret.
    """

    def __init__(self, state_dir: Path | str, fleet_public_key_path: Path | str | None = None):
        self.state_dir = Path(state_dir)
        self.keys_dir = self.state_dir / KEYS_DIR
        self.fleet_public_key_path = Path(fleet_public_key_path or self.state_dir / FLEET_PUBLIC_KEY_FILE)

    @classmethod
    def from_config(cls, cfg) -> "KeyStore":
        return cls(cfg.state_dir, cfg.fleet_public_key_path)

    key_mode = "file"  # reported in the heartbeat; an OTP-sealed store says "otp"

    def _seal(self, data: bytes) -> bytes:
        return data

    def _unseal(self, data: bytes) -> bytes:
        return data

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
        key = self._unseal(_read_secret(self.data_key_path, "unit data key"))
        if len(key) != SYMMETRIC_KEY_BYTES:
            raise KeyFileError(
                f"{self.data_key_path}: the unit data key is {len(key)} bytes, expected {SYMMETRIC_KEY_BYTES}"
            )
        return key

    def create_data_key(self) -> bytes:
        key = generate_symmetric_key()
        _write_new_secret(self.data_key_path, self._seal(key))
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
        return parse_signing_key(self._unseal(_read_secret(self.signing_key_path, "unit signing key")),
                                 self.signing_key_path)

    def ensure_signing_key(self) -> Ed25519PrivateKey:
        if not self.signing_key_path.exists():
            key = Ed25519PrivateKey.generate()
            try:
                _write_new_secret(self.signing_key_path, self._seal(signing_key_to_pem(key)))
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
        key = self._unseal(_read_secret(self.fleet_template_key_path, "fleet template key"))
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
        _write_new_secret(self.fleet_template_key_path, self._seal(key))


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


# --- AES-256-GCM sealing of one employee's template ------------------------------
NONCE_BYTES = 12  # 96-bit random nonce, the GCM standard size
TAG_BYTES = 16


class TemplateCipher:
    """AES-256-GCM for templates: ``nonce || ciphertext+tag``, a fresh random nonce each time.

    The associated data is ``purpose | employee id``, so a sealed template moved to
    another employee's row, or from transport form into storage form, fails to open.
    """

    def __init__(self, key: bytes, purpose: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != SYMMETRIC_KEY_BYTES:
            raise KeyFileError(f"a template key must be {SYMMETRIC_KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._purpose = purpose + b"|"

    def seal(self, employee_id: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._purpose + employee_id.encode("utf-8"))

    def open(self, employee_id: str, sealed: bytes) -> bytes:
        """The plaintext, or ``cryptography.exceptions.InvalidTag`` if key, employee or bytes differ."""
        from cryptography.exceptions import InvalidTag

        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise InvalidTag()
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                                  self._purpose + employee_id.encode("utf-8"))
