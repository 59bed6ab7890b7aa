"""Lines over a serial port: the transport layer under board.py's MDB protocol.

Why separate: framing bytes into lines (partial lines, CR/LF variants, noise, a vanished port) is
its own concern and is tested with scripted bytes; the protocol above it only sees text lines.
"""
from __future__ import annotations

import logging
import re
import time
from collections import deque

from ..errors import BoardLinkError

log = logging.getLogger("vendor_node.board")

MAX_LINE_BYTES = 256
LATE_READ_LIMIT = 4 * MAX_LINE_BYTES  # bytes readline() still takes in after its deadline (a flood cannot hold it)
_TERMINATOR = re.compile(rb"[\r\n]")


class LineTransport:
    """Frames a byte stream into text lines; subclasses only move bytes.

    Partial lines wait in the buffer for their end; CR, LF and CRLF all end a line; NUL bytes are
    dropped; bytes that are not UTF-8 become U+FFFD (the protocol layer then ignores the line);
    a line longer than MAX_LINE_BYTES is dropped up to its end. A lost port raises BoardLinkError.
    """

    line_end = b"\n"

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES):
        self._buffer = bytearray()
        self._lines: deque[str] = deque()
        self._discarding = False
        self._max_line_bytes = max_line_bytes
        from .board_lines import RateLimitedWarning  # the same limiter the protocol's bad lines use

        self._noise_warning = RateLimitedWarning()  # 2 MB of noise once logged ~500 warnings

    def _read_bytes(self, timeout: float) -> bytes:
        """Whatever bytes arrive within ``timeout`` (b"" for none); BoardLinkError when lost."""
        raise NotImplementedError

    def _write_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the port; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def readline(self, timeout: float) -> str | None:
        """The next complete line (without its end), or None when none came within ``timeout`` s."""
        deadline = time.monotonic() + max(0.0, timeout)
        late_bytes = 0
        while not self._lines:
            remaining = deadline - time.monotonic()
            chunk = self._read_bytes(max(0.0, remaining))
            if chunk:
                self._feed(chunk)
                if remaining <= 0:  # past the deadline only bytes already there are read, and not forever
                    late_bytes += len(chunk)
                    if late_bytes > LATE_READ_LIMIT and not self._lines:
                        return None
            elif remaining <= 0:
                return None
        return self._lines.popleft()

    def write_line(self, text: str) -> None:
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"MDB adapter lines are ASCII; refusing to send {text!r}") from None
        if _TERMINATOR.search(data):
            raise ValueError(f"a line to the MDB adapter must not contain CR or LF: {text!r}")
        self._write_bytes(data + self.line_end)

    def _feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            match = _TERMINATOR.search(self._buffer)
            if match is None:
                break
            raw = bytes(self._buffer[: match.start()])
            del self._buffer[: match.end()]
            if self._discarding:
                self._discarding = False
                continue
            if len(raw) > self._max_line_bytes:
                self._noise_warning("MDB adapter: dropped a %d-byte line (longer than %d)", len(raw),
                                    self._max_line_bytes)
                continue
            text = raw.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()
            if text:
                self._lines.append(text)
        if len(self._buffer) > self._max_line_bytes:
            self._noise_warning("MDB adapter: no line end after %d bytes; dropping up to the next one",
                                len(self._buffer))
            self._buffer.clear()
            self._discarding = True


class SerialTransport(LineTransport):
    """Lines over a serial port (pyserial, imported here only): a UART, a USB CDC device or a pty slave.

    POSIX only (it waits with select() on the port's file descriptor), like the unit itself.
    """

    def __init__(self, port: str, baudrate: int = 115200, *, write_timeout_s: float = 1.0):
        super().__init__()
        try:
            import serial  # the hardware library lives only inside its adapter
        except ImportError:
            raise BoardLinkError("pyserial is not installed (pip install pyserial)") from None
        self._errors = (serial.SerialException, OSError, ValueError, TypeError)
        self.port = str(port)
        self._serial = None
        try:
            self._serial = serial.Serial(self.port, baudrate, timeout=0, write_timeout=write_timeout_s)
            self._serial.reset_input_buffer()  # whatever was queued before we came is stale
        except self._errors as exc:
            self.close()
            raise BoardLinkError(f"serial port {self.port}: cannot open: {exc}") from None

    def _read_bytes(self, timeout: float) -> bytes:
        import select

        if self._serial is None:
            raise BoardLinkError(f"serial port {self.port} is closed")
        try:
            ready, _, _ = select.select([self._serial.fileno()], [], [], timeout)
            if not ready:
                return b""
            data = self._serial.read(max(1, self._serial.in_waiting))
        except self._errors as exc:
            raise BoardLinkError(f"serial port {self.port} lost: {exc}") from None
        if not data:  # readable but nothing to read: the other end hung up
            raise BoardLinkError(f"serial port {self.port} lost: end of file")
        return data

    def _write_bytes(self, data: bytes) -> None:
        if self._serial is None:
            raise BoardLinkError(f"serial port {self.port} is closed")
        try:
            self._serial.write(data)
        except self._errors as exc:  # includes the write timeout
            raise BoardLinkError(f"serial port {self.port}: write failed: {exc}") from None

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except self._errors:
                pass
