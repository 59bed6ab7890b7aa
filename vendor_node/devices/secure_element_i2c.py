"""The secure element's wire on a Pi: /dev/i2c-N with the I2C_SLAVE ioctl (the only module that touches it).

As CryptoAuthLib's Linux HAL does it (lib/hal/hal_linux_i2c_userspace.c): every transfer is a plain
read() or write() after selecting the target address; the wake pulse is a dummy write to address 0x00
(never acknowledged), which holds SDA low long enough at the Pi's default 100 kHz; a read the chip does
not acknowledge (busy computing) fails with an OSError the protocol layer polls past.
"""
from __future__ import annotations

import errno
import os
import time

from ..errors import KeyFileError

I2C_SLAVE = 0x0703  # linux/i2c-dev.h
WAKE_HIGH_S = 0.0015  # tWHI: after the wake pulse, before the chip answers
LOCK_WAIT_S = 2.0  # the unit and the nightly sync may both ask the chip: one session at a time


class I2cTransport:
    """One open /dev/i2c-N aimed at one 7-bit address; ``wake``, ``write``, ``read``, ``close``."""

    def __init__(self, bus: int, address: int, *, path: str | None = None, lock_wait_s: float = LOCK_WAIT_S):
        import fcntl

        self._ioctl, self._flock = fcntl.ioctl, fcntl.flock
        self.path, self.address, self.lock_wait_s = path or f"/dev/i2c-{bus}", address, lock_wait_s
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyFileError(f"{self.path}: no such I2C bus (enable it: dtparam=i2c_arm=on in config.txt, or set "
                               "keys.secure_element.bus)") from None
        except PermissionError:
            raise KeyFileError(f"{self.path}: permission denied; the service user needs the group i2c") from None
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot open: {exc}") from None
        self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._aim(address)

    def _lock(self, how: int) -> None:
        """Hold the bus for this session (an advisory lock another vendor-node process honours), bounded."""
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                self._flock(self._fd, how)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.close()
                    raise KeyFileError(f"{self.path}: another process has held the secure element for "
                                       f"{self.lock_wait_s:g} s") from None
                time.sleep(0.01)

    def _aim(self, address: int) -> None:
        try:
            self._ioctl(self._fd, I2C_SLAVE, address)
        except OSError as exc:
            self.close()
            if exc.errno == errno.EBUSY:
                raise KeyFileError(f"{self.path}: address 0x{address:02x} is held by a kernel driver (atmel-ecc?); "
                                   "unbind it or remove its dtoverlay") from None
            raise KeyFileError(f"{self.path}: cannot address 0x{address:02x}: {exc}") from None

    def wake(self) -> None:
        self._aim(0x00)
        try:
            os.write(self._fd, b"\x00")  # never acknowledged: only the low SDA matters
        except OSError:
            pass
        time.sleep(WAKE_HIGH_S)
        self._aim(self.address)

    def write(self, data: bytes) -> None:
        if os.write(self._fd, data) != len(data):
            raise OSError(errno.EIO, f"short I2C write to 0x{self.address:02x}")

    def read(self, count: int) -> bytes:
        data = os.read(self._fd, count)
        if len(data) != count:
            raise OSError(errno.EIO, f"short I2C read from 0x{self.address:02x}")
        return data

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
