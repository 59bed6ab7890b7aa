"""Key files on disk: written once (0600, atomic, never overwritten) and refused when others could read them."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import KeyFileError


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
