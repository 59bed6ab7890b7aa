"""The unit's one SQLite database, opened the same way by every module.

WAL so the nightly sync can read while the loop writes; synchronous=FULL so a
committed approval survives a power cut. Also the two things every user of the db
repeats: one write transaction (``transaction``) and sharing or owning the
connection (``HoldsConnection``, ``open_owning``).
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import JournalError

DB_NAME = "unit.db"
T = TypeVar("T", bound="HoldsConnection")


def open_db(state_dir: Path | str) -> sqlite3.Connection:
    """Open (creating if needed) <state_dir>/unit.db in WAL mode with synchronous=FULL."""
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(state_dir / DB_NAME, timeout=10.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(f"{state_dir / DB_NAME}: cannot open the unit database: {exc}{_why_not(state_dir)}") from None
    try:
        os.chmod(state_dir / DB_NAME, 0o600)
    except OSError:
        pass
    return conn


def _why_not(state_dir: Path) -> str:
    """The likely cause when the database will not open: a read-only or full file system (SQLite only says
    "unable to open database file" or "disk I/O error")."""
    try:
        info = os.statvfs(state_dir)
    except OSError:
        return ""
    if info.f_flag & os.ST_RDONLY:
        return f" ({state_dir} is on a read-only file system)"
    if info.f_bavail == 0:
        return f" ({state_dir} is on a full disk)"
    if not os.access(state_dir, os.W_OK):
        return f" ({state_dir} is not writable by this user)"
    return ""


@contextmanager
def transaction(conn: sqlite3.Connection, error_cls: type[Exception], what: str, *,
                failed: str | None = None, nested: str | None = None) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error ``ROLLBACK``, so nothing half-written stays.

    A sqlite error becomes ``error_cls(f"{what}: {exc}")`` when BEGIN fails and
    ``error_cls(f"{failed or what}: {exc}")`` inside; other exceptions pass unchanged.
    ``nested`` (if given) is the error for being called inside another transaction,
    whose COMMIT would not be ours. A body that already rolled back (nothing to
    write) is left as it is.
    """
    if nested is not None and conn.in_transaction:
        raise error_cls(nested)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise error_cls(f"{what}: {exc}") from None
    try:
        yield
        if conn.in_transaction:
            conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise error_cls(f"{failed or what}: {exc}") from None
        raise


class HoldsConnection:
    """Base for what works on the unit db: it shares a connection it was given, or owns
    one made by :func:`open_owning` and closes it in close() (or on leaving ``with``)."""

    conn: sqlite3.Connection
    _owns_conn = False

    def close(self) -> None:
        if self._owns_conn:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_owning(state_dir: Path | str, build: Callable[[sqlite3.Connection], T]) -> T:
    """``build(conn)`` on a new connection to <state_dir>/unit.db, which the result then owns;
    the connection is closed again if ``build`` fails."""
    conn = open_db(state_dir)
    try:
        holder = build(conn)
    except BaseException:
        conn.close()
        raise
    holder._owns_conn = True
    return holder


def _write_synced(tmp: Path, data: bytes, mode: int, flags: int) -> None:
    """``data`` whole into the temp file ``tmp`` with ``mode`` (whatever the umask was), fsync'd."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)


def _fsync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` survive a power cut."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_file_atomically(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a power cut leaves the old file or the new, never half of one:
    a temp file beside it, fsync, rename, fsync of the folder. Raises OSError (callers name their error)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_synced(tmp, data, mode, os.O_TRUNC)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_new_file(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` whole or not at all, never replacing a file already there: a temp file
    beside it, fsync, hard link to the name (FileExistsError if it appeared), fsync of the folder.
    Raises FileExistsError or OSError (callers name their error)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        _write_synced(tmp, data, mode, os.O_EXCL)
        os.link(tmp, path)  # fails if the name appeared meanwhile: never an overwrite
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    _fsync_folder(path.parent)
