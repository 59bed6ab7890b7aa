"""sd_notify for systemd's Type=notify unit: READY, STATUS, the watchdog ping and STOPPING.

Spoken over $NOTIFY_SOCKET directly (a datagram socket), so the unit needs no
systemd library; outside systemd every call is a silent no-op.

The watchdog ping means progress, never just "the process exists": ``watchdog()`` is called only
where the loop completed a bounded step (an iteration, a board read or reopen attempt that
returned), so a call that hangs stops the pings and systemd restarts the unit within WatchdogSec.
``bounded(what, limit_s)`` adds the other half: a step that keeps returning but never finishes
(a wait loop that lost its way) stops pinging once it has run past its own limit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

log = logging.getLogger("vendor_node.unit")

# A ping at most every WatchdogSec/10 (1 s at WatchdogSec=10): a progress point then reaches systemd at most
# 1 s late, so waits of up to 9/10 of WatchdogSec between progress points never trip the watchdog.
PING_FRACTION = 10


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a datagram socket), without a dependency; silent outside systemd."""

    def __init__(self, address: str | None = None, watchdog_usec: str | None = None, clock=time.monotonic):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self.watchdog_interval_s = self.watchdog_s / PING_FRACTION if self.watchdog_s else 1.0
        self._clock = clock
        self._last_ping = float("-inf")
        self._ready = False  # systemd arms the watchdog once start-up is complete (READY=1); TimeoutStartSec before
        self._bounds: list[tuple[str, float, float]] = []  # (what, limit_s, deadline) of the steps in progress
        self._overran: str | None = None

    def notify(self, message: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8"), self._address)
            return True
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str) -> None:
        self._ready = True
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Progress: ping (at most every WatchdogSec/10), unless a step in progress overran its limit."""
        if not self._ready:
            return
        now = self._clock()
        for what, limit_s, deadline in self._bounds:
            if now > deadline:
                if self._overran != what:
                    self._overran = what
                    log.error("watchdog: %s is still running after %.0f s, its limit: no more pings, so systemd "
                              "restarts the unit", what, limit_s)
                return
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    @contextlib.contextmanager
    def bounded(self, what: str, limit_s: float):
        """Pings from inside this step count only for ``limit_s``; the step's end (outside) pings as usual."""
        self._bounds.append((what, limit_s, self._clock() + limit_s))
        try:
            yield
        finally:
            self._bounds.pop()
            if self._overran == what:
                self._overran = None

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
