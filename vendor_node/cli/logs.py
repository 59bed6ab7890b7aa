"""Logging for a terminal and for journald: every line carries its priority when systemd reads stderr.

Why sd-daemon prefixes and not the journal library: they need nothing installed (python3-systemd
is not in the venv), and journald turns a leading ``<3>`` into PRIORITY=3, so ``journalctl -p err``
finds the unit's errors. Every line of a multi-line record (a traceback) gets the same prefix, so
a traceback is not split into an error line and info lines. On a terminal the lines stay plain.
"""
from __future__ import annotations

import logging
import os
import sys

# syslog(3) priorities, as journald reads them from a "<N>" prefix (sd-daemon(3))
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"  # journald stamps the time, the unit and the priority itself


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level takes the next more severe one's)."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


def stream_is_journal(stream) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM`` names its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def prefix_lines(text: str, priority: int) -> str:
    """``text`` with ``<priority>`` in front of every line."""
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


class JournalPrefixFormatter(logging.Formatter):
    """Formats a record with its sd-daemon priority prefix on every line."""

    def format(self, record: logging.LogRecord) -> str:
        return prefix_lines(super().format(record), syslog_priority(record.levelno))


def setup_logging(verbose: bool = False, stream=None) -> bool:
    """Configure the root logger for ``stream`` (stderr); return True when it is journald's.

    Like logging.basicConfig it leaves a root logger that someone else set up alone (pytest's
    capture); a handler it installed itself is replaced, so calling ``main`` twice does not double lines.
    """
    stream = sys.stderr if stream is None else stream
    journal = stream_is_journal(stream)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "vendor_node_handler", False)]
    if len(ours) != len(root.handlers):
        return journal
    for old in ours:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.vendor_node_handler = True
    handler.setFormatter(JournalPrefixFormatter(JOURNAL_FORMAT) if journal else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if journal:
        sys.excepthook = _log_uncaught
    return journal


def _log_uncaught(kind, value, traceback) -> None:
    """An exception nobody caught reaches the journal at priority crit, traceback included."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("vendor_node").critical("unexpected error, exiting", exc_info=(kind, value, traceback))


def print_error(text: str, stream=None) -> None:
    """A command's failure message on stderr: priority err in the journal, plain on a terminal."""
    stream = sys.stderr if stream is None else stream
    print(prefix_lines(text, PRIORITIES[logging.ERROR]) if stream_is_journal(stream) else text, file=stream)
