"""Helpers for the office tests (no tests here): one Django set-up per process on a SQLite file (or PostgreSQL),
a clean database per test, and real unit journals whose signed batches the office ingests."""
from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("django", reason="the office extra (Django) is not installed")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

_STATE: dict = {}


def office_keys_dir() -> Path:
    """Configure Django once for this test process and migrate: SQLite in a temp folder, or PostgreSQL when
    VENDOR_NODE_OFFICE_TEST_DB says so (``postgresql``: a throwaway server started here and stopped at exit;
    or a ``postgresql://`` URL of an empty database), so the same tests run on both."""
    if "keys" not in _STATE:
        from vendor_node.office.server import prepare
        from vendor_node.money.keys import generate_fleet_keys

        root = Path(tempfile.mkdtemp(prefix="office-test-"))
        generate_fleet_keys(root / "keys")
        wanted = os.environ.get("VENDOR_NODE_OFFICE_TEST_DB", "")
        if wanted == "postgresql":
            import atexit

            from vendor_node.office import pgtemp

            server = pgtemp.ThrowawayPostgres().start()
            atexit.register(server.stop)
            wanted = server.url
        _STATE["db_url"] = wanted or f"sqlite:///{root / 'office.db'}"
        prepare(_STATE["db_url"], root / "keys")
        _STATE["keys"] = root / "keys"
    return _STATE["keys"]


def office_db_url() -> str:
    """The URL of the tests' office database (for a command run in another process)."""
    office_keys_dir()
    return _STATE["db_url"]


@pytest.fixture
def office(request):
    """A freshly emptied office database (roles kept); yields the fleet keys folder."""
    keys = office_keys_dir()
    from django.core.management import call_command
    from vendor_node.office.server import ensure_roles

    call_command("flush", interactive=False, verbosity=0)
    ensure_roles()
    yield keys


def ingested_entries() -> list[dict]:
    """Every journal entry the office holds, of every unit and journal epoch, read back from the stored
    batches (each (unit, epoch, seq) once, as `journal_store.stored_entries` gives them)."""
    from vendor_node.office.journal_store import stored_entries
    from vendor_node.office.models import JournalBatch

    found = []
    for unit_pk, epoch in JournalBatch.objects.values_list("unit_id", "epoch").distinct().order_by("unit_id", "epoch"):
        found.extend(stored_entries(unit_pk, epoch))
    return found


def fleet_public_key(keys: Path):
    from vendor_node.money.keys import load_public_key_file

    return load_public_key_file(keys / "fleet_public_key.pem")


class FakeUnit:
    """A unit's real journal and signing key; exports signed batches exactly as the unit does."""

    def __init__(self, state_dir: Path, unit_id: str):
        from vendor_node.money.journal import Journal

        state_dir.mkdir(parents=True, exist_ok=True)
        self.unit_id = unit_id
        self.key = Ed25519PrivateKey.generate()
        self.journal = Journal.open(state_dir)

    @property
    def fingerprint(self) -> str:
        from vendor_node.office.unit_client import fingerprint

        return fingerprint(self.key)

    def buy(self, employee_id: str, cents: int, item: str = "12", succeed: bool = True):
        session = self.journal.begin_session()
        self.journal.approve(session, employee_id, item, cents)
        if succeed:
            self.journal.succeed(session)
        else:
            self.journal.void(session, "cancelled")

    def batch(self) -> bytes:
        from vendor_node.money.journal_export import _canonical, build_batch

        return _canonical(build_batch(self.journal, self.key, self.unit_id)) + b"\n"

    def ack(self, last_seq: int) -> None:
        self.journal.mark_uploaded(last_seq)

    def close(self):
        self.journal.close()


def call(client, unit: FakeUnit, method: str, what: str, body: bytes = b"", query: str = "", key=None,
         unit_header: str | None = None, url_unit: str | None = None, timestamp=None, nonce=None, headers=None):
    """A signed API request through Django's test client; returns the response."""
    from vendor_node.office.unit_client import signed_headers

    path = f"/api/v1/units/{url_unit or unit.unit_id}/{what}" + (f"?{query}" if query else "")
    signed = signed_headers(key or unit.key, unit_header or unit.unit_id, method, path, body,
                            timestamp=timestamp, nonce=nonce)
    signed.update(headers or {})
    if method == "GET":
        return client.get(path, headers=signed)
    return client.post(path, data=body, content_type="application/json", headers=signed)


def verify_receipt(keys: Path, answer: dict) -> dict:
    from vendor_node.office.unit_api import canonical_json

    fleet_public_key(keys).verify(base64.b64decode(answer["signature"]), canonical_json(answer["receipt"]))
    return answer["receipt"]


def heartbeat_body(**changes) -> bytes:
    import time

    body = {"firmware": "0.1.0", "model": "palm-int8", "bundle_version": 0, "last_purchase_at": None,
            "out_of_service": None, "faults": [], "free_disk_bytes": 10 ** 9, "journal_ok": True,
            "journal_head_seq": 0, "clock": time.time(), "key_mode": "file"}
    body.update(changes)
    return json.dumps(body).encode()


class OfficeProcess:
    """`vendor-node office serve` in its own process group, on a free loopback port."""

    def __init__(self, db_url: str, keys_dir: Path | None, demo: bool = False, env: dict | None = None):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_url, self.keys_dir, self.demo, self.env = db_url, keys_dir, demo, env or {}
        self.proc = None
        self.log = Path(tempfile.mkdtemp(prefix="office-log-")) / "office.log"

    def command(self, *args: str) -> str:
        """Run another `vendor-node office ...` command against the same database; its stdout."""
        import subprocess
        import sys

        extra = ["--fleet-keys", str(self.keys_dir)] if self.keys_dir else []
        done = subprocess.run([sys.executable, "-m", "vendor_node", "office", *args, "--db", self.db_url, *extra],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self) -> "OfficeProcess":
        import os
        import subprocess
        import sys

        args = [sys.executable, "-m", "vendor_node", "office", "serve", "--db", self.db_url,
                "--bind", f"127.0.0.1:{self.port}", "--workers", "2"]
        if self.keys_dir:
            args += ["--fleet-keys", str(self.keys_dir)]
        if self.demo:
            args.append("--demo")
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **self.env})
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll /healthz until it answers (the server migrates first), or fail with its log."""
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"office exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as answer:
                    if json.loads(answer.read()).get("ok"):
                        return
            except OSError:
                pass
            time.sleep(0.1)  # polling a condition in another process, bounded by the deadline
        raise AssertionError(f"office not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        import os
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def check_request_refusals(send, unit_id: str, key, other_unit_id: str, deactivate) -> None:
    """The unit API's authentication, as a unit and an attacker meet it, through ``send(claimed, key, url_unit,
    nonce, tamper=False) -> (status, error text)`` on any database: the refusal that names the unit comes
    first, a nonce is spent only by a request of the registered key that got that far, and a replay is refused."""
    import secrets

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as Key

    stranger, nonce = Key.generate(), secrets.token_hex(16)
    assert send(unit_id, stranger, unit_id, nonce)[0] == 401
    assert "fingerprint is not the one registered" in send(unit_id, stranger, unit_id, nonce)[1]
    assert "not registered" in send("nobody-here", stranger, "nobody-here", nonce)[1]
    assert "not registered" in send("nobody-here", stranger, "nobody-here", nonce, tamper=True)[1]
    assert "not registered" in send("nobody-here", stranger, unit_id, nonce)[1]  # before the URL's 403
    assert "does not verify" in send(unit_id, key, unit_id, nonce, tamper=True)[1]
    status, text = send(unit_id, key, other_unit_id, nonce)
    assert status == 403 and "may not use the URL" in text
    assert send(unit_id, key, unit_id, nonce) == (200, "")  # none of the refused requests spent the nonce
    status, text = send(unit_id, key, unit_id, nonce)
    assert status == 401 and "already used" in text
    assert send(unit_id, key, unit_id, secrets.token_hex(16)) == (200, "")
    deactivate()
    status, text = send(unit_id, key, unit_id, secrets.token_hex(16))
    assert status == 401 and "not registered (or not active)" in text


def signed_heartbeat(claimed: str, key, url_unit: str, nonce: str, tamper: bool) -> tuple[str, bytes, dict]:
    """A heartbeat's path, body and signed headers; ``tamper``: the body changed after signing."""
    from vendor_node.office.unit_client import signed_headers

    path, body = f"/api/v1/units/{url_unit}/heartbeat", heartbeat_body()
    headers = signed_headers(key, claimed, "POST", path, body, nonce=nonce)
    return path, heartbeat_body(firmware="changed") if tamper else body, headers
