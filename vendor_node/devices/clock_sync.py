"""Is the system clock synchronized? The kernel's answer, as systemd-time-wait-sync reads it.

Why the kernel and not timedatectl: adjtimex(2) needs no D-Bus, no privilege and no extra package,
and it is what every NTP client (systemd-timesyncd, chrony, ntpd) sets when it has synchronized:
the call returns TIME_ERROR while the clock is unsynchronized. A Pi has no battery clock, so
until then its time is the last shutdown's (fake-hwclock) or 1970. The service waits for
time-sync.target (bounded); the unit still starts when NTP never answers, and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
from dataclasses import dataclass

TIME_ERROR = 5  # adjtimex(2): "the system clock is not synchronized to a reliable server"
TIMEX_BYTES = 512  # larger than struct timex on every Linux architecture
_TIMEX_HEAD = struct.Struct("@i l l l l l i")  # modes, offset, freq, maxerror, esterror, (status after padding)


@dataclass(frozen=True)
class ClockSync:
    synchronized: bool | None  # None: the kernel could not be asked (not Linux)
    max_error_us: int | None
    detail: str


def clock_sync_state(adjtimex=None) -> ClockSync:
    """The kernel's view of the clock; ``adjtimex`` lets a test pass a stand-in for libc's."""
    if adjtimex is None:
        try:
            adjtimex = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).adjtimex
        except (OSError, AttributeError) as exc:
            return ClockSync(None, None, f"cannot ask the kernel about the clock ({exc})")
    buffer = ctypes.create_string_buffer(TIMEX_BYTES)  # modes = 0: read only
    state = adjtimex(buffer)
    if state < 0:
        return ClockSync(None, None, f"adjtimex failed (errno {ctypes.get_errno()})")
    _modes, _offset, _freq, max_error, _est, *_ = _TIMEX_HEAD.unpack_from(buffer.raw)
    if state == TIME_ERROR:
        return ClockSync(False, max_error, "clock not synchronized (no NTP server reached yet: check the network "
                                           "and `timedatectl timesync-status`)")
    return ClockSync(True, max_error, f"clock synchronized (max error {max_error / 1000:.1f} ms)")
