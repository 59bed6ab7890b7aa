"""The unit's one SQLite database, opened the same way by every module.

WAL so the nightly sync can read while the loop writes; synchronous=FULL so a
committed approval survives a power cut.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import JournalError

DB_NAME = "unit.db"


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
        raise JournalError(f"{state_dir / DB_NAME}: cannot open the unit database: {exc}") from None
    try:
        os.chmod(state_dir / DB_NAME, 0o600)
    except OSError:
        pass
    return conn
