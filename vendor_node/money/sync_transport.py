"""How the nightly sync reaches the back office: signed HTTP(S) requests, or a folder (USB stick, share).

HTTP (the contract in docs/design.md; base ``{server}/api/v1/units/{unit_id}``): every request is
signed with the unit's Ed25519 key over ``vendor-node-request-v1\\n METHOD \\n path?query \\n timestamp
\\n nonce \\n sha256(body)``; the office knows the unit by its id and key fingerprint. A hostile or broken
server cannot hold the unit: the whole run has one time budget (``sync.max_run_s``) that every retry,
connect and read shares (a watchdog shuts the socket when it runs out, so a byte-a-second drip ends
too), and every answer is size-limited before it is read (a declared length over the limit is not read
at all; an undeclared one is cut at the limit). Plain ``http://`` only to loopback unless allowed.

Folder (units with no network): bundles come from ``<dir>/inbox/`` (``*.vnb``, or the older
``*.bundle``); uploads go to ``<dir>/outbox/<unit_id>/`` as the exact bodies the HTTP API takes
(``journal-<batch_id>.json``, ``templates-<sha256>.json``, ``heartbeat-<time>-<random>.json``), each
written atomically under a name that is never reused (an existing file is never replaced). The
office's signed receipts come back as ``<dir>/inbox/receipts/<unit_id>/*.json`` (the HTTP answers'
exact JSON); until one arrives nothing is marked uploaded.
"""
from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from base64 import b64encode
from pathlib import Path

from ..errors import SyncError
from .keys import raw_public_key
from .storage import write_new_file

log = logging.getLogger("vendor_node.sync")

API_PREFIX = "/api/v1/units/"
SIGNING_CONTEXT = "vendor-node-request-v1"
MAX_RECEIPT_BYTES = 1024 * 1024  # a receipt names ids, never data: anything bigger is not one
READ_CHUNK = 64 * 1024
RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
BUNDLE_SUFFIXES = (".vnb", ".bundle")


def request_signing_bytes(method: str, path_with_query: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The bytes a unit signs for one request (the office rebuilds them to verify)."""
    return "\n".join([SIGNING_CONTEXT, method, path_with_query, str(timestamp), nonce,
                      hashlib.sha256(body).hexdigest()]).encode("utf-8")


def signed_headers(signing_key, unit_id: str, method: str, path_with_query: str, body: bytes,
                   now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    signature = signing_key.sign(request_signing_bytes(method, path_with_query, timestamp, nonce, body))
    return {"X-VN-Unit": unit_id, "X-VN-Timestamp": str(timestamp), "X-VN-Nonce": nonce,
            "X-VN-Public-Key": b64encode(raw_public_key(signing_key.public_key())).decode("ascii"),
            "X-VN-Signature": b64encode(signature).decode("ascii")}


class RunBudget:
    """The one time budget of a sync run (monotonic clock): every step, retry and read draws on it."""

    def __init__(self, max_run_s: float):
        self.max_run_s = max_run_s
        self.deadline = time.monotonic() + max_run_s

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self, what: str) -> float:
        left = self.left()
        if left <= 0:
            raise SyncError(f"{what}: out of time (sync.max_run_s = {self.max_run_s:g} s); the rest comes next run")
        return left


def check_server_url(url: str, allow_insecure_http: bool = False) -> urllib.parse.SplitResult:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SyncError(f"sync.server_url: expected an https:// URL, got {url!r}")
    if parsed.query or parsed.fragment:
        raise SyncError(f"sync.server_url: {url!r} must not carry a query or fragment")
    if parsed.scheme == "http" and not allow_insecure_http and not is_loopback(parsed.hostname):
        raise SyncError(f"sync.server_url: plain http:// to {parsed.hostname} is refused (anyone on the way could "
                        "read and change it); use https://, or set sync.allow_insecure_http = true on a test network")
    return parsed


def is_loopback(host: str) -> bool:
    """localhost or a loopback address (where plain http and the office's demo are allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpTransport:
    """The back office's unit API; every call is signed, retried with backoff and bounded by the budget."""

    kind = "server"

    def __init__(self, server_url: str, unit_id: str, signing_key, budget: RunBudget, timeout_s: float = 30.0,
                 allow_insecure_http: bool = False, max_bundle_bytes: int = 64 * 1024 * 1024,
                 ca_file: Path | str | None = None):
        parsed = check_server_url(server_url, allow_insecure_http)
        self.tls = None
        if parsed.scheme == "https":
            try:  # the system's CAs, or only the given private CA; hostname always checked
                self.tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            except (OSError, ssl.SSLError) as exc:
                raise SyncError(f"sync.ca_file: {ca_file}: not a readable CA certificate (PEM): {exc}") from None
        self.scheme, self.host, self.port = parsed.scheme, parsed.hostname, parsed.port
        # "@" stays as is: the office verifies the signature over the path as its framework re-escapes it
        self.base_path = parsed.path.rstrip("/") + API_PREFIX + urllib.parse.quote(unit_id, safe="@")
        self.where = f"{parsed.scheme}://{parsed.netloc}"
        self.unit_id, self.signing_key, self.budget = unit_id, signing_key, budget
        self.timeout_s, self.max_bundle_bytes = timeout_s, max_bundle_bytes

    # --- the API --------------------------------------------------------------------
    def push_journal(self, batch: bytes, batch_id: str) -> dict:
        return self._json("POST", "/journal", batch)

    def push_templates(self, document: bytes) -> dict:
        return self._json("POST", "/templates", document)

    def heartbeat(self, document: bytes) -> dict:
        return self._json("POST", "/heartbeat", document)

    def receipts(self) -> list:
        return []  # over HTTP every receipt comes back as the answer

    def bundles(self, after_version: int):
        """The newest bundle for this unit newer than ``after_version`` (at most one; none when 204)."""
        status, data = self._request("GET", f"/bundle?after={after_version}", b"", self.max_bundle_bytes)
        if status == 200 and data:
            yield f"{self.where} bundle after v{after_version}", data

    # --- one request, retried ----------------------------------------------------------
    def _json(self, method: str, path: str, body: bytes) -> dict:
        _, data = self._request(method, path, body, MAX_RECEIPT_BYTES)
        try:
            answer = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SyncError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise SyncError(f"{method} {path}: the answer is not a JSON object")
        return answer

    def _request(self, method: str, path: str, body: bytes, limit: int) -> tuple[int, bytes]:
        what = f"{method} {self.where}{self.base_path}{path}"
        attempt, last = 0, None
        while True:
            left = self.budget.check(what if last is None else f"{what}: {last}")
            try:
                status, data = self._once(method, self.base_path + path, body, limit, left)
            except _Retryable as exc:
                last = str(exc)
            else:
                if status < 300:
                    return status, data
                problem = f"the office answered {status}{_error_text(data)}"
                if status not in RETRY_STATUSES:
                    raise SyncError(f"{what}: {problem}")
                last = problem
            attempt += 1
            pause = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempt - 1))
            if pause >= self.budget.left():
                raise SyncError(f"{what}: {last} (gave up after {attempt} attempts within sync.max_run_s)")
            log.warning("%s: %s; retrying in %.0f s", what, last, pause)
            time.sleep(pause)

    def _once(self, method: str, path: str, body: bytes, limit: int, left: float) -> tuple[int, bytes]:
        """One attempt; a watchdog shuts the socket when the budget runs out, whatever the server does."""
        timeout = min(self.timeout_s, left)
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        expired = threading.Event()

        def cut():
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(left, cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            headers = signed_headers(self.signing_key, self.unit_id, method, path, body)
            if method == "POST":
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body if method == "POST" else None, headers=headers)
            response = conn.getresponse()
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise SyncError(f"{method} {path}: the answer declares {int(declared)} bytes, over the {limit}-byte "
                                "limit; not read")
            data = bytearray()
            while True:
                chunk = response.read1(READ_CHUNK) if hasattr(response, "read1") else response.read(READ_CHUNK)
                if not chunk:
                    break
                data += chunk
                if len(data) > limit:
                    raise SyncError(f"{method} {path}: the answer is longer than the {limit}-byte limit; "
                                    "stopped reading")
                if expired.is_set():
                    break
            if expired.is_set():
                raise _Retryable(f"the server took longer than what was left of the run ({left:.1f} s)")
            return response.status, data  # a bytearray: no second copy of a large bundle
        except ssl.SSLCertVerificationError as exc:  # not worth a retry: the wrong server, or a missing CA
            raise SyncError(f"{method} {self.host}: the office's TLS certificate does not verify ({exc.verify_message}); "
                            "set sync.ca_file if it comes from a private CA") from None
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise _Retryable(f"the server took longer than what was left of the run ({left:.1f} s)") from None
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        finally:
            watchdog.cancel()
            conn.close()


class _Retryable(Exception):
    """A failure worth another try (network, timeout): never raised past HttpTransport."""


def _error_text(data: bytes) -> str:
    try:
        message = json.loads(data).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return ""
    if not isinstance(message, str):
        return ""
    return ": " + "".join(c if c.isprintable() else "?" for c in message[:300])


class FolderTransport:
    """A folder standing in for the back office; never replaces a file, says what it skipped."""

    kind = "folder"

    def __init__(self, folder: Path | str, unit_id: str, max_bundle_bytes: int = 64 * 1024 * 1024):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SyncError(f"{self.folder}: sync folder not found")
        self.unit_id, self.max_bundle_bytes = unit_id, max_bundle_bytes
        self.inbox = self.folder / "inbox"
        self.outbox = self.folder / "outbox" / unit_id
        self.skipped: list[str] = []

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        log.warning("sync folder: skipped %s: %s", what, why)

    def bundles(self, after_version: int):
        """Every bundle file in the inbox (name order); the caller says which it applied or skipped."""
        if not self.inbox.is_dir():
            return
        for path in sorted(self.inbox.iterdir()):
            if path.is_dir() or path.name.startswith("."):  # folders (receipts/), and files still being written
                continue
            if path.suffix not in BUNDLE_SUFFIXES:
                self.skip(str(path), f"not a bundle file name (expected {' or '.join(BUNDLE_SUFFIXES)})")
                continue
            try:
                size = path.stat().st_size
                if size > self.max_bundle_bytes:
                    self.skip(str(path), f"{size} bytes is over sync.max_bundle_bytes; not read")
                    continue
                yield str(path), path.read_bytes()
            except OSError as exc:
                self.skip(str(path), f"cannot read: {exc.strerror or exc}")

    def receipts(self) -> list[tuple[str, object]]:
        """The office's signed receipts for this unit, as (file, parsed JSON); unreadable ones are skipped."""
        folder = self.inbox / "receipts" / self.unit_id
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                if path.stat().st_size > MAX_RECEIPT_BYTES:
                    self.skip(str(path), "too large for a receipt")
                    continue
                found.append((str(path), json.loads(path.read_bytes())))
            except (OSError, ValueError) as exc:
                self.skip(str(path), f"not a readable receipt: {exc}")
        return found

    def push_journal(self, batch: bytes, batch_id: str) -> None:
        self._write_new(f"journal-{batch_id}.json", batch)

    def push_templates(self, document: bytes) -> None:
        self._write_new(f"templates-{hashlib.sha256(document).hexdigest()[:24]}.json", document)

    def heartbeat(self, document: bytes) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._write_new(f"heartbeat-{stamp}-{secrets.token_hex(4)}.json", document)

    def _write_new(self, name: str, data: bytes) -> None:
        """Write ``name`` whole (temp, fsync, link) or not at all; an existing file is never replaced."""
        target = self.outbox / name
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
            if target.exists():
                if target.read_bytes() == data:
                    log.info("sync folder: %s is already in the outbox", target)
                    return
                raise SyncError(f"{target}: exists with other content; not replaced")
            write_new_file(target, data, 0o644)  # fails if the name appeared meanwhile: never an overwrite
        except FileExistsError:
            raise SyncError(f"{target}: appeared while writing; not replaced") from None
        except OSError as exc:
            raise SyncError(f"{target}: cannot write: {exc.strerror or exc}") from None
