"""sd_notify for systemd's Type=notify unit: READY, STATUS, the watchdog ping and STOPPING.

Spoken over $NOTIFY_SOCKET directly (a datagram socket), so the unit needs no
systemd library; outside systemd every call is a silent no-op.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("vendor_node.unit")


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a datagram socket), without a dependency; silent outside systemd."""

    def __init__(self, address: str | None = None, watchdog_usec: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 1e6 / 3 if usec.isdigit() and int(usec) > 0 else 1.0
        self._last_ping = float("-inf")

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
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Ping at most every third of WatchdogSec; called only when a loop iteration completed."""
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
