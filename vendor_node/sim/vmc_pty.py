"""A serial line on a pty, served by one thread: the wire under the vending-machine simulator.

Why separate: the pty pair, its stable path, the select loop, timers and the cut-and-replug fault
are plumbing; vmc_sim.py keeps only the machine's behaviour. All callbacks run on the line's
thread, so the simulator needs no locks of its own.
"""
from __future__ import annotations

import errno
import heapq
import itertools
import os
import re
import select
import shutil
import tempfile
import threading
import time
import tty
from collections import deque
from pathlib import Path
from typing import Callable


class PtyLine:
    """The master end of a pty; the unit opens ``port_path`` (a symlink, like /dev/serial/by-id)."""

    def __init__(self, on_line: Callable[[str], None], on_error: Callable[[str], None], *,
                 link_dir: str | os.PathLike | None = None, name: str = "vmc-sim"):
        self._on_line, self._on_error, self._name = on_line, on_error, name
        self._own_dir = link_dir is None
        self._dir = Path(link_dir) if link_dir else Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.port_path = str(self._dir / "ttyMDB")
        self.connections = 0  # how many times the port appeared (1 + reconnects)
        self._master: int | None = None
        self._slave: int | None = None
        self._rx = bytearray()
        self._timers: list = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._actions: deque = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending_timers(self) -> int:
        """Timers still due (cancelled ones excluded): stays small however long the run."""
        return sum(1 for timer in list(self._timers) if timer[2] is not None)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._open()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    # --- from any thread ---
    def call(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the line's thread, soon."""
        with self._lock:
            self._actions.append(action)
        self._wake()

    # --- on the line's thread only ---
    def after(self, delay_s: float, action: Callable[[], object]) -> list:
        """Run ``action`` in ``delay_s``; returns a handle for cancel()."""
        timer = [time.monotonic() + delay_s, next(self._seq), action]
        heapq.heappush(self._timers, timer)
        return timer

    def cancel(self, timer: list) -> None:
        """Forget a timer (and whatever its action holds); the heap is compacted when mostly dead."""
        if timer[2] is not None:
            timer[2] = None
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._timers):
                self._timers = [t for t in self._timers if t[2] is not None]
                heapq.heapify(self._timers)
                self._cancelled = 0

    def write(self, data: bytes) -> None:
        """Bytes towards the unit; lost while the line is cut or nobody drains it."""
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EIO):
                raise
            self._on_error(f"output lost ({exc.strerror})")

    def cut(self, down_s: float) -> None:
        """Close the pty now (the unit's port hangs up); recreate it under the same path later."""
        self._close()
        self._rx.clear()
        self.after(down_s, self._open)

    # --- internals ---
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = 0.2
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            fds = [self._wake_r] + ([self._master] if self._master is not None else [])
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            actions = []
            if self._master is not None and self._master in ready:
                actions.append(self._read)
            with self._lock:
                actions.extend(self._actions)
                self._actions.clear()
            while self._timers and self._timers[0][0] <= time.monotonic():
                timer = heapq.heappop(self._timers)
                action, timer[2] = timer[2], None  # fired: a later cancel() is a no-op
                if action is None:
                    self._cancelled = max(0, self._cancelled - 1)
                else:
                    actions.append(action)
            for action in actions:
                try:
                    action()
                except Exception as exc:  # a simulator bug: visible to tests, the line keeps running
                    self._on_error(f"simulator error: {exc!r}")

    def _open(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a serial line, not a terminal
        os.set_blocking(self._master, False)
        # the slave stays open here too: the tty keeps its settings and the master never sees EIO
        # while the unit reconnects
        tmp_link = self.port_path + ".new"
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(os.ttyname(self._slave), tmp_link)
        os.replace(tmp_link, self.port_path)
        self.connections += 1

    def _close(self) -> None:
        for name in ("_master", "_slave"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if os.path.lexists(self.port_path):
            os.unlink(self.port_path)

    def _read(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return
            raise
        self._rx += data
        while (match := re.search(rb"[\r\n]", self._rx)) is not None:
            raw = bytes(self._rx[: match.start()])
            del self._rx[: match.end()]
            if raw.strip():
                self._on_line(raw.decode("ascii", errors="replace").strip())
