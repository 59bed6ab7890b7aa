"""The nightly sync: pull signed account bundles, push the journal and sealed templates.

Run unattended by `vendor-node-sync.timer` (`vendor-node sync`). Every step is
safe to retry: a bundle already applied is skipped, a journal batch keeps its
id until the back office has acknowledged it (then the upload watermark moves),
a template leaves the upload queue only after the server accepted it. One
failed step does not stop the others; the exit code says whether all went.

Two transports, one interface:
- ``HttpTransport``: the back office over HTTPS (stdlib urllib, no extra dependency)
    GET  {url}/v1/units/{unit}/bundles?after={version}   200 one bundle (the next), 204 none
    POST {url}/v1/units/{unit}/journal                   body: the signed batch JSON; 200 = stored
    POST {url}/v1/units/{unit}/templates                 body: sealed templates + revocations JSON
- ``FolderTransport``: a technician's USB stick or a mounted share, for units with no network:
    <dir>/inbox/*.bundle in, <dir>/outbox/<unit>/... out.

Nothing here ever sees a template in the clear: templates travel sealed under the
fleet template key (see bundle.py), journals are signed by the unit's own key.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError, SyncError, VendorNodeError
from .storage import write_file_atomically

log = logging.getLogger("vendor_node.sync")

MAX_BUNDLES_PER_RUN = 50  # a runaway server cannot keep the unit busy forever


class HttpTransport:
    """The back office over HTTP(S); every call has a timeout and raises SyncError on failure."""

    def __init__(self, server_url: str, unit_id: str, timeout_s: float = 30.0):
        parsed = urllib.parse.urlparse(server_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SyncError(f"sync.server_url: expected an http(s) URL, got {server_url!r}")
        self.base = server_url.rstrip("/") + f"/v1/units/{urllib.parse.quote(unit_id, safe='')}"
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise SyncError(f"{method} {self.base + path}: server answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SyncError(f"{method} {self.base + path}: {reason}") from None

    def next_bundle(self, after_version: int) -> bytes | None:
        status, data = self._request("GET", f"/bundles?after={after_version}")
        return data if status == 200 and data else None

    def push_journal(self, batch: bytes, batch_id: str) -> None:
        self._request("POST", "/journal", batch)

    def push_templates(self, document: bytes) -> None:
        self._request("POST", "/templates", document)


class FolderTransport:
    """A folder standing in for the back office: bundles in ``inbox/``, uploads out to ``outbox/<unit>/``."""

    def __init__(self, folder: Path | str, unit_id: str):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SyncError(f"{self.folder}: sync folder not found")
        self.outbox = self.folder / "outbox" / unit_id
        self._seen: set[Path] = set()

    def next_bundle(self, after_version: int) -> bytes | None:
        """The inbox's bundles in name order; the store refuses the ones it already has."""
        for path in sorted((self.folder / "inbox").glob("*.bundle")):
            if path not in self._seen:
                self._seen.add(path)
                try:
                    return path.read_bytes()
                except OSError as exc:
                    raise SyncError(f"{path}: cannot read: {exc}") from None
        return None

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
            write_file_atomically(self.outbox / name, data, 0o644)
        except OSError as exc:
            raise SyncError(f"{self.outbox / name}: cannot write: {exc}") from None

    def push_journal(self, batch: bytes, batch_id: str) -> None:
        self._write(f"journal-{batch_id}.json", batch)

    def push_templates(self, document: bytes) -> None:
        self._write(f"templates-{int(time.time())}.json", document)


@dataclass
class SyncReport:
    bundles_applied: list[int] = field(default_factory=list)
    bundles_skipped: int = 0
    journal_entries_uploaded: int = 0
    templates_uploaded: int = 0
    revocations_sent: int = 0
    templates_purged: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        applied = ", ".join(f"v{v}" for v in self.bundles_applied) or "none"
        text = (f"bundles applied: {applied} ({self.bundles_skipped} skipped); journal entries uploaded: "
                f"{self.journal_entries_uploaded}; templates uploaded: {self.templates_uploaded}; "
                f"revocations sent: {self.revocations_sent}; templates purged: {self.templates_purged}")
        if self.errors:
            text += "\nFAILED: " + "\nFAILED: ".join(self.errors)
        return text


def _pull_bundles(store, transport, report: SyncReport) -> None:
    from .bundle import decode_bundle

    fleet_key = store.keystore.load_fleet_public_key()
    for _ in range(MAX_BUNDLES_PER_RUN):
        current = store.current_bundle()
        version = current.version if current else 0
        data = transport.next_bundle(version)
        if data is None:
            return
        bundle = decode_bundle(data, fleet_key, source="sync")
        if bundle.version <= version:
            report.bundles_skipped += 1  # already applied: retrying a sync is harmless
            continue
        info = store.apply_bundle(bundle, source="sync")
        report.bundles_applied.append(info.version)
        log.info("applied %s bundle v%d (%d employees)", info.kind, info.version, info.employees)
    log.warning("stopped after %d bundles in one run; the rest comes next time", MAX_BUNDLES_PER_RUN)


def _push_journal(cfg, journal, keystore, transport, report: SyncReport, workdir: Path) -> None:
    from .journal_export import acknowledge_batch

    signing_key = keystore.ensure_signing_key()
    batch_path = workdir / "journal-batch.json"
    info = journal.export(batch_path, signing_key, cfg.unit.unit_id)
    if info.entries == 0:
        return
    transport.push_journal(batch_path.read_bytes(), info.batch_id)
    acknowledge_batch(journal, batch_path, signing_key.public_key())
    report.journal_entries_uploaded += info.entries
    log.info("uploaded journal batch %s: %d entries, %d cents charged", info.batch_id, info.entries,
             info.charged_cents)


def _push_templates(store, transport, report: SyncReport) -> None:
    from .bundle import TemplateRecord, templates_to_json

    pending = store.pending_uploads()
    revoked = store.conn.execute("SELECT employee_id, revoked_at FROM template_revocations").fetchall()
    if not pending and not revoked:
        return
    document = {
        "templates": json.loads(templates_to_json([TemplateRecord(*row) for row in pending])),
        "revocations": [{"employee_id": employee_id, "revoked_at": at} for employee_id, at in revoked],
    }
    transport.push_templates(json.dumps(document, sort_keys=True).encode())
    store.mark_uploaded([row[0] for row in pending])
    report.templates_uploaded += len(pending)
    report.revocations_sent += len(revoked)


def run_sync(cfg, transport) -> SyncReport:
    """One sync pass; each step is attempted even when an earlier one failed."""
    from .accounts import AccountStore
    from .journal import Journal

    report = SyncReport()
    workdir = cfg.state_dir / "sync"
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with AccountStore.open(cfg) as store:
        journal = Journal(store.conn)
        steps = [
            ("pull bundles", lambda: _pull_bundles(store, transport, report)),
            ("push journal", lambda: _push_journal(cfg, journal, store.keystore, transport, report, workdir)),
            ("push templates", lambda: _push_templates(store, transport, report)),
        ]
        for name, step in steps:
            try:
                step()
            except (SyncError, BundleError, VendorNodeError) as exc:
                log.error("sync: %s failed: %s", name, exc)
                report.errors.append(f"{name}: {exc}")
        try:
            report.templates_purged = store.purge_expired_templates()
        except VendorNodeError as exc:
            report.errors.append(f"purge templates: {exc}")
    return report


def transport_from(cfg, folder: Path | None = None, server_url: str | None = None):
    """The transport a sync run uses: a folder if given, else the configured server URL."""
    if folder is not None:
        return FolderTransport(folder, cfg.unit.unit_id)
    url = server_url or cfg.sync.server_url
    if not url:
        raise SyncError("no sync target: set sync.server_url in the config or pass --server URL or --folder DIR")
    return HttpTransport(url, cfg.unit.unit_id, cfg.sync.timeout_s)
