"""What the journal cannot check inside its own database: that it was not shortened, and that the disk still takes writes.

The mark file ``<state_dir>/journal.mark`` lives beside ``unit.db``, not in it, so losing the WAL or putting
back an older copy of the database does not take the mark with it:

- line 1: JSON ``{"verified_seq": N, "verified_hash": H}``: the chain up to N was verified (by the unit at
  start-up); the next start verifies only what came after it (incremental, fast at any journal size);
- then one ``<seq> <hash> <crc32>`` line per entry appended (a small write after each commit): the
  high-water mark (a torn or fused line fails its checksum and is ignored: the mark can only lag). A journal whose head is below it lost committed entries (a deleted WAL, a restored
  copy), and the unit refuses to serve on it.

``probe_durable_write`` is how a journal fault is judged cleared: a row written and committed in the database
and a file written and synced in the state folder, not just a BEGIN that touches nothing.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path

from ..errors import JournalCorrupt, JournalError
from .storage import write_file_atomically

log = logging.getLogger("vendor_node.journal")

MARK_NAME = "journal.mark"
PROBE_NAME = ".journal-probe"
PROBE_BYTES = 256 * 1024  # room for a few hundred more entries and a checkpoint, or the disk counts as full
_WARN_EVERY_S = 60.0


def db_folder(conn: sqlite3.Connection) -> Path | None:
    """The folder of the connection's main database file (None for an in-memory database)."""
    try:
        row = conn.execute("PRAGMA database_list").fetchone()
    except sqlite3.Error:
        return None
    return Path(row[2]).parent if row and row[2] else None


class JournalMark:
    """The verified mark and the high-water mark of one unit's journal, in a file beside its database."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._last_warning = 0.0
        self.failed: str | None = None  # why the last note could not be written (the disk is full, ...)

    @classmethod
    def beside(cls, conn: sqlite3.Connection) -> "JournalMark | None":
        folder = db_folder(conn)
        return cls(folder / MARK_NAME) if folder else None

    def read(self) -> tuple[int, str | None, int]:
        """(verified_seq, verified_hash, high_water_seq); (0, None, 0) when there is no mark yet.

        A torn last line (power cut mid-append) is ignored: the entry it names was committed
        before it, so the head can only be at or past it.
        """
        try:
            lines = self.path.read_text(encoding="ascii").splitlines()
        except FileNotFoundError:
            return 0, None, 0
        except (OSError, UnicodeDecodeError) as exc:
            raise JournalCorrupt(f"{self.path}: cannot read the journal's mark ({exc}); "
                                 "the unit cannot tell whether entries were lost") from None
        try:
            first = json.loads(lines[0]) if lines else {}
            verified_seq, verified_hash = int(first["verified_seq"]), str(first["verified_hash"])
        except (ValueError, KeyError, TypeError, IndexError):
            raise JournalCorrupt(f"{self.path}: line 1 is not a journal mark; "
                                 "the unit cannot tell whether entries were lost") from None
        high_water = verified_seq
        for line in lines[1:]:
            seq = _checked_note(line)
            if seq is not None:
                high_water = max(high_water, seq)
        return verified_seq, verified_hash, high_water

    def read_tail(self, tail_bytes: int = 8192) -> tuple[int, str | None, int]:
        """As read(), but the high-water mark from the file's last lines only (notes are appended in seq
        order, and between start-ups the file grows by a line per entry): for the nightly heartbeat."""
        try:
            with open(self.path, "rb") as f:
                first = f.readline()
                size = os.fstat(f.fileno()).st_size
                f.seek(max(len(first), size - tail_bytes))
                tail = f.read().decode("ascii", errors="replace").splitlines()
        except FileNotFoundError:
            return 0, None, 0
        except OSError:
            return self.read()  # read() names the problem
        noted = [seq for seq in map(_checked_note, tail) if seq is not None]
        if not noted and size > len(first) + tail_bytes:
            return self.read()  # a garbled tail: read every line
        try:
            verified = json.loads(first.decode("ascii"))
            verified_seq, verified_hash = int(verified["verified_seq"]), str(verified["verified_hash"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return self.read()
        return verified_seq, verified_hash, max([verified_seq, *noted])

    def note(self, seq: int, digest: str) -> None:
        """Record that entry ``seq`` was committed (after its COMMIT). A failure is logged, never raised:
        the entry itself is durable, and a disk that refuses this write fails the next probe too.

        Written without an fsync of its own: the write reaches the page cache at once, so a WAL deleted or a
        database swapped while the system runs is caught; only a power cut *and* a deleted WAL together could
        lose a few lines, and a lagging mark is never a false alarm. An fsync here measured ~1.4 ms per entry
        on this machine (more on an SD card), doubling the approval's own durable write.
        """
        try:
            if self._fd is None:
                if not self.path.exists():
                    self.rewrite(0, None)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            line = _note_line(seq, digest)
            os.write(self._fd, (b"\n" + line) if self.failed else line)  # no fsync: see note()
            self.failed = None
        except OSError as exc:
            self.close()
            self.failed = f"{self.path}: cannot record the journal's high-water mark ({exc.strerror or exc})"
            now = time.monotonic()
            if now - self._last_warning > _WARN_EVERY_S:
                self._last_warning = now
                log.error("%s: cannot record the journal's high-water mark: %s", self.path, exc)

    def rewrite(self, verified_seq: int, verified_hash: str | None) -> None:
        """Replace the file with one verified mark (compacts the high-water lines). OSError passes up."""
        from .journal_schema import GENESIS_HASH

        self.close()
        body = json.dumps({"verified_seq": verified_seq, "verified_hash": verified_hash or GENESIS_HASH})
        write_file_atomically(self.path, (body + "\n").encode("ascii"), 0o600)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _note_line(seq: int, digest: str) -> bytes:
    """``<seq> <hash> <crc32>``: a line torn by a full disk or a power cut, or fused with the next, fails its check."""
    body = f"{seq} {digest}"
    return f"{body} {zlib.crc32(body.encode('ascii')):08x}\n".encode("ascii")


def _checked_note(line: str) -> int | None:
    """The seq a high-water line names, or None for a torn, fused or foreign line (ignored: the mark only lags)."""
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    body = f"{parts[0]} {parts[1]}"
    return int(parts[0]) if f"{zlib.crc32(body.encode('ascii')):08x}" == parts[2] else None


def check_integrity(journal) -> str:
    """At start-up: the chain after the verified mark holds and nothing below the high-water mark is gone.

    Raises JournalCorrupt naming the first bad entry (or the lost range); on success moves the verified
    mark to the head and returns a one-line summary. Without a mark file (first start, or a unit from
    before the mark existed) the whole chain is verified once.
    """
    from .journal_verify import check_range

    mark = journal.mark
    if mark is None:
        return "journal not checked (in-memory database)"
    verified_seq, verified_hash, high_water = mark.read()
    try:
        head_seq, head_hash = journal.head()
        if head_seq < high_water:
            raise JournalCorrupt(
                f"journal SHORTENED: it ends at seq {head_seq} but entries up to seq {high_water} were committed "
                f"(seq {head_seq + 1}..{high_water} are lost: the WAL file was deleted or the database replaced "
                "by an older copy); the unit will not serve until a technician restores it")
        if verified_seq:
            row = journal.conn.execute("SELECT hash FROM journal WHERE seq = ?", (verified_seq,)).fetchone()
            if row is None or row[0] != verified_hash:
                found = "missing" if row is None else f"hash {str(row[0])[:16]}"
                raise JournalCorrupt(
                    f"journal BROKEN at seq {verified_seq}: verified earlier with hash {verified_hash[:16]}, "
                    f"now {found}: the entry was changed or removed after it was written")
        start = time.perf_counter()
        check_range(journal, verified_seq, head_seq)
        checked_ms = 1000 * (time.perf_counter() - start)
        journal.rebuild_totals()  # the running totals come from the verified chain, never from a hand-edited table
    except sqlite3.DatabaseError as exc:
        raise JournalCorrupt(f"journal database damaged: {exc}; run `vendor-node journal verify`") from None
    try:
        mark.rewrite(head_seq, head_hash)
    except OSError as exc:
        raise JournalError(f"{mark.path}: cannot write the journal's mark: {exc}") from None
    return (f"journal verified: seq {verified_seq + 1}..{head_seq} in {checked_ms:.0f} ms, running totals rebuilt "
            f"in {1000 * (time.perf_counter() - start) - checked_ms:.0f} ms (head {head_hash[:16]})")


HEARTBEAT_MARK_NAME = "journal.heartbeat-mark"


def verify_for_heartbeat(journal) -> tuple[bool, str]:
    """The nightly heartbeat's journal check, incremental: from the furthest position verified before (the
    start-up mark, or the previous heartbeat's own mark) to the head, that position's hash unchanged, and
    nothing lost below the high-water mark. (ok, one line). The whole walk, session histories included,
    stays in `journal verify` and selftest; an entry altered before the position is also caught by the
    office, which holds the uploaded copy. The heartbeat keeps its own mark file (the running unit appends
    to ``journal.mark`` and only its start-up rewrites it)."""
    from .journal_verify import check_range

    mark = journal.mark
    if mark is None:
        report = journal.verify()
        return report.ok, str(report).splitlines()[0]
    own = mark.path.with_name(HEARTBEAT_MARK_NAME)
    try:
        verified_seq, verified_hash, high_water = mark.read_tail()
        try:
            saved = json.loads(own.read_text(encoding="ascii"))
            if int(saved["verified_seq"]) > verified_seq:
                verified_seq, verified_hash = int(saved["verified_seq"]), str(saved["verified_hash"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet (or unreadable): start from the start-up mark
        head_seq, head_hash = journal.head()
        if head_seq < high_water:
            return False, (f"journal SHORTENED: it ends at seq {head_seq} but entries up to seq {high_water} were "
                           "committed")
        if verified_seq:
            row = journal.conn.execute("SELECT hash FROM journal WHERE seq = ?", (verified_seq,)).fetchone()
            if row is None or row[0] != verified_hash:
                return False, (f"journal BROKEN at seq {verified_seq}: verified earlier with hash "
                               f"{str(verified_hash)[:16]}, now {'missing' if row is None else str(row[0])[:16]}")
        check_range(journal, verified_seq, head_seq)
    except JournalCorrupt as exc:
        return False, str(exc).splitlines()[0]
    except sqlite3.DatabaseError as exc:
        return False, f"journal database damaged: {exc}"
    try:
        write_file_atomically(own, (json.dumps({"verified_seq": head_seq, "verified_hash": head_hash}) + "\n")
                              .encode("ascii"), 0o600)
    except OSError as exc:  # a full disk: the next heartbeat checks from the older position again
        log.warning("%s: cannot record the heartbeat's verified position: %s", own, exc)
    if head_seq == verified_seq:
        return True, f"journal verified: nothing new since seq {head_seq} (head {head_hash[:16]})"
    return True, f"journal verified: seq {verified_seq + 1}..{head_seq} since the last check (head {head_hash[:16]})"


def probe_durable_write(conn: sqlite3.Connection) -> None:
    """A real durable write, or JournalError saying why not: a committed row, and PROBE_BYTES synced to disk."""
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS journal_probe (id INTEGER PRIMARY KEY CHECK (id = 1), "
                     "at REAL NOT NULL, pad BLOB)")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO journal_probe (id, at, pad) VALUES (1, ?, randomblob(4096)) "
                         "ON CONFLICT(id) DO UPDATE SET at = excluded.at, pad = excluded.pad", (time.time(),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise JournalError(f"the journal database does not take writes: {exc}") from None
    folder = db_folder(conn)
    if folder is None:
        return
    probe = folder / PROBE_NAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(bytes(PROBE_BYTES))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise JournalError(f"{folder}: the disk does not take writes ({exc.strerror or exc})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
