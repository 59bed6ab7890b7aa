"""Key files on disk: written once (0600, atomic, never overwritten) and refused when others could read them."""
from __future__ import annotations

import stat
from pathlib import Path

from ..errors import KeyFileError
from .storage import write_new_file


def _write_new_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file, atomically (temp file + fsync + rename); never overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    try:
        write_new_file(path, data, 0o600)  # fails if someone created the key meanwhile: never replace one
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the key: {exc}") from None


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
