"""A throwaway PostgreSQL server for tests and the load bench: initdb in a temp folder, a free
loopback port, run as an unprivileged user when we are root (postgres refuses root), stopped and
removed after. Uses Debian's `postgresql` binaries; ``available()`` says whether they are there."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import OfficeError


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found and Path(found).resolve().with_name("pg_ctl").exists():
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def available() -> bool:
    return _bin_dir() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """``with ThrowawayPostgres() as pg: pg.url`` -> postgresql://office@127.0.0.1:PORT/office"""

    def __init__(self, database: str = "office", settings: dict[str, str] | None = None):
        self.bin = _bin_dir()
        if self.bin is None:
            raise OfficeError("PostgreSQL binaries not found (apt-get install postgresql)")
        self.database, self.settings = database, dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix="vn-pg-"))
        self.data, self.port = self.root / "data", _free_port()
        self.url = f"postgresql://office@127.0.0.1:{self.port}/{database}"
        self.user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args, check=True):
        kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        # output to a file, never a pipe: the server pg_ctl starts would hold a pipe open for ever
        out = self.root / "commands.log"
        with open(out, "ab") as log:
            done = subprocess.run([str(a) for a in args], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                  cwd=self.root, env={**os.environ, "LC_ALL": "C"}, timeout=120, **kwargs)
        if check and done.returncode != 0:
            tail = out.read_text(errors="replace")[-1500:] if out.exists() else ""
            raise OfficeError(f"{Path(str(args[0])).name} failed ({done.returncode}): {tail}")
        return done

    def start(self) -> "ThrowawayPostgres":
        self._run(self.bin / "initdb", "-D", self.data, "-U", "office", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
                   + "".join(f" -c {name}={value}" for name, value in self.settings.items()))
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.root / "server.log", "-w",
                  "-t", "60", "start")
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "office", self.database)
        return self

    def restart(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-m", "fast", "-w",
                  "-t", "60", "restart")

    def stop(self) -> None:
        if self.data.exists():
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
