"""The nightly sync: push the journal, templates and a heartbeat, then pull this unit's newest bundle.

Run unattended by `vendor-node-sync.timer` (`vendor-node sync`). Push before pull, so the bundle the
office builds already counts what was just uploaded. Nothing is marked uploaded on the server's word
alone: the upload mark moves only on a receipt signed by the pinned fleet key that names this unit,
the batch id and the batch's last seq and hash; templates leave the queue only as the signed receipt
names them (and only the enrollment that was sent). Every step is safe to retry; a failed step does
not stop the others; the exit code says whether all went. The transports (signed HTTP with one time
budget and size limits, or a folder that never overwrites) are in sync_transport.py.

Nothing here ever sees a template in the clear: templates travel sealed under the fleet template key
(see bundle.py), journal batches are signed by the unit's own key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from ..assets import active_manifest_path
from ..errors import BundleError, ModelError, SyncError, VendorNodeError
from .storage import write_file_atomically
from .sync_transport import FolderTransport, HttpTransport, RunBudget

log = logging.getLogger("vendor_node.sync")

CLOCK_FAULT_S = 300.0  # a wall clock this far behind the journal's own time is reported as a fault
TEMPLATES_SENT_FILE = "templates-sent.json"  # folder transport: which enrollment each queued id was sent as
RECEIPTS_APPLIED_FILE = "receipts-applied.json"  # folder transport: receipt files already acted on


def canonical_json(obj) -> bytes:
    """The bytes a receipt's fleet signature covers (the office signs exactly these)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify_receipt(answer, fleet_key, kind: str, unit_id: str, source: str) -> dict:
    """The receipt inside ``answer`` after checking the fleet signature, its kind and its unit."""
    if not isinstance(answer, dict) or not isinstance(answer.get("receipt"), dict) \
            or not isinstance(answer.get("signature"), str):
        raise SyncError(f"{source}: the answer is not a signed receipt; nothing marked uploaded")
    try:
        fleet_key.verify(base64.b64decode(answer["signature"], validate=True), canonical_json(answer["receipt"]))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SyncError(f"{source}: the receipt is not signed by the pinned fleet key; nothing marked "
                        "uploaded") from None
    receipt = answer["receipt"]
    if receipt.get("kind") != kind:
        raise SyncError(f"{source}: a {receipt.get('kind')!r} receipt where a {kind!r} one was due")
    if receipt.get("unit_id") != unit_id:
        raise SyncError(f"{source}: the receipt is for unit {receipt.get('unit_id')!r}, not {unit_id!r}; "
                        "nothing marked uploaded")
    return receipt


@dataclass
class SyncReport:
    bundles_applied: list[int] = field(default_factory=list)
    bundles_skipped: int = 0
    journal_entries_uploaded: int = 0  # acknowledged by a verified fleet-signed receipt
    journal_entries_delivered: int = 0  # written to a sync folder, awaiting the office's receipt
    templates_uploaded: int = 0
    templates_delivered: int = 0
    revocations_sent: int = 0
    heartbeat_sent: bool = False
    templates_purged: int = 0
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        applied = ", ".join(f"v{v}" for v in self.bundles_applied) or "none"
        text = (f"bundles applied: {applied} ({self.bundles_skipped} skipped); journal entries uploaded: "
                f"{self.journal_entries_uploaded}")
        if self.journal_entries_delivered:
            text += f" (+{self.journal_entries_delivered} written to the folder, awaiting the office's receipt)"
        text += f"; templates uploaded: {self.templates_uploaded}"
        if self.templates_delivered:
            text += f" (+{self.templates_delivered} written, awaiting a receipt)"
        text += (f"; revocations sent: {self.revocations_sent}; heartbeat: {'sent' if self.heartbeat_sent else 'no'}"
                 f"; templates purged: {self.templates_purged}")
        text += "".join(f"\nskipped {line}" for line in self.skipped)
        if self.errors:
            text += "\nFAILED: " + "\nFAILED: ".join(self.errors)
        return text


class _Run:
    """One sync pass over one store and one transport."""

    def __init__(self, cfg, store, transport, report: SyncReport):
        self.cfg, self.store, self.transport, self.report = cfg, store, transport, report
        self.journal = store.journal
        self.unit_id = store.unit_id
        self.fleet_key = store.keystore.load_fleet_public_key()
        self.signing_key = store.keystore.ensure_signing_key()
        self.workdir = Path(cfg.state_dir) / "sync"
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.batch_path = self.workdir / "journal-batch.json"
        self.receipts = self._new_folder_receipts()

    # --- folder receipts (over HTTP they come back as answers) --------------------------
    def _new_folder_receipts(self) -> list[tuple[str, object, str]]:
        applied = set(self._read_state(RECEIPTS_APPLIED_FILE, []))
        return [(source, answer, digest) for source, answer in self.transport.receipts()
                if (digest := hashlib.sha256(canonical_json(answer)).hexdigest()) not in applied]

    def _folder_receipts(self, kind: str):
        for source, answer, digest in self.receipts:
            if isinstance(answer, dict) and isinstance(answer.get("receipt"), dict) \
                    and answer["receipt"].get("kind") == kind:
                yield source, answer, digest

    def _remember_receipt(self, digest: str) -> None:
        applied = self._read_state(RECEIPTS_APPLIED_FILE, [])
        self._write_state(RECEIPTS_APPLIED_FILE, (applied + [digest])[-1000:])

    def _read_state(self, name: str, default):
        try:
            return json.loads((self.workdir / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); starting it afresh", self.workdir / name, exc)
            return default

    def _write_state(self, name: str, value) -> None:
        write_file_atomically(self.workdir / name, json.dumps(value).encode())

    # --- journal -------------------------------------------------------------------
    def push_journal(self) -> None:
        from .journal_export import read_batch

        info = self.journal.export(self.batch_path, self.signing_key, self.unit_id)
        for source, answer, digest in list(self._folder_receipts("journal")):
            try:
                if info.entries and self._accept_journal_receipt(answer, source, read_batch(
                        self.batch_path, self.signing_key.public_key())):
                    info = self.journal.export(self.batch_path, self.signing_key, self.unit_id)
            except SyncError as exc:  # a bad receipt file is reported every run, and never blocks the upload
                self.report.errors.append(f"push journal: {exc}")
                continue
            self._remember_receipt(digest)
        if info.entries == 0:
            return
        answer = self.transport.push_journal(self.batch_path.read_bytes(), info.batch_id)
        if answer is None:
            self.report.journal_entries_delivered += info.entries
            log.info("journal batch %s (%d entries) written; the mark moves when the office's receipt comes",
                     info.batch_id, info.entries)
            return
        body = read_batch(self.batch_path, self.signing_key.public_key())
        if not self._accept_journal_receipt(answer, "journal upload", body):
            raise SyncError(f"journal upload: the receipt is not for batch {info.batch_id}; nothing marked uploaded")

    def _accept_journal_receipt(self, answer, source: str, body: dict) -> bool:
        """Move the upload mark past ``body`` if ``answer`` is the fleet's receipt for exactly that batch."""
        from .journal_export import acknowledge_batch

        receipt = verify_receipt(answer, self.fleet_key, "journal", self.unit_id, source)
        named = (receipt.get("batch_id"), receipt.get("last_seq"), receipt.get("last_hash"))
        if named != (body["batch_id"], body["last_seq"], body["last_hash"]):
            if isinstance(named[1], int) and named[1] <= self.journal.uploaded_upto_seq():
                return False  # an older batch's receipt: already acknowledged
            raise SyncError(f"{source}: the receipt names batch {named[0]} (last seq {named[1]}), not the batch "
                            f"sent, {body['batch_id']} (last seq {body['last_seq']}); nothing marked uploaded")
        acknowledge_batch(self.journal, self.batch_path, self.signing_key.public_key())
        self.report.journal_entries_uploaded += len(body["entries"])
        log.info("journal batch %s acknowledged by the office: uploaded up to seq %d", body["batch_id"],
                 body["last_seq"])
        return True

    # --- templates -------------------------------------------------------------------
    def push_templates(self) -> None:
        from .bundle import TemplateRecord, templates_to_json

        for source, answer, digest in list(self._folder_receipts("templates")):
            try:
                receipt = verify_receipt(answer, self.fleet_key, "templates", self.unit_id, source)
                sent = self._read_state(TEMPLATES_SENT_FILE, {})
                self._mark_accepted(receipt, sent.get("templates", {}))
                self._mark_revocations(receipt, sent.get("revocations", {}))
            except SyncError as exc:
                self.report.errors.append(f"push templates: {exc}")
                continue
            self._remember_receipt(digest)
        pending = self.store.pending_uploads()
        revoked = self.store.unreported_revocations()
        if not pending and not revoked:
            return
        document = {
            "templates": json.loads(templates_to_json([TemplateRecord(*row) for row in pending])),
            "revocations": [{"employee_id": employee_id, "revoked_at": at} for employee_id, at in revoked],
        }
        sent = {"templates": {row[0]: row[3] for row in pending}, "revocations": dict(revoked)}
        answer = self.transport.push_templates(json.dumps(document, sort_keys=True).encode())
        self.report.revocations_sent += len(revoked)
        if answer is None:  # the folder: the receipt comes later, naming ids; remember which copy each was
            before = self._read_state(TEMPLATES_SENT_FILE, {})
            self._write_state(TEMPLATES_SENT_FILE, {kind: {**before.get(kind, {}), **sent[kind]} for kind in sent})
            self.report.templates_delivered += len(pending)
            return
        receipt = verify_receipt(answer, self.fleet_key, "templates", self.unit_id, "templates upload")
        self._mark_accepted(receipt, sent["templates"])
        self._mark_revocations(receipt, sent["revocations"])

    def _mark_revocations(self, receipt: dict, sent: dict) -> None:
        confirmed = receipt.get("revocations")
        if not isinstance(confirmed, list):
            raise SyncError("templates receipt: 'revocations' is not a list; nothing marked reported")
        self.store.mark_revocations_reported({i: sent[i] for i in confirmed if isinstance(i, str) and i in sent})

    def _mark_accepted(self, receipt: dict, sent: dict) -> None:
        accepted = receipt.get("accepted")
        if not isinstance(accepted, list):
            raise SyncError("templates receipt: 'accepted' is not a list; nothing marked uploaded")
        marked = self.store.mark_uploaded_as_sent({i: sent[i] for i in accepted if isinstance(i, str) and i in sent})
        self.report.templates_uploaded += marked

    # --- heartbeat -------------------------------------------------------------------
    def heartbeat(self) -> None:
        answer = self.transport.heartbeat(json.dumps(heartbeat_document(self.cfg, self.store, self.journal)).encode())
        if answer is not None and answer.get("ok") is not True:
            raise SyncError("heartbeat: the office did not answer ok")
        self.report.heartbeat_sent = True

    # --- bundles ---------------------------------------------------------------------
    def pull_bundles(self) -> None:
        if isinstance(self.transport, FolderTransport):
            return self._pull_from_folder()
        current = self.store.current_bundle()
        version = current.version if current else 0
        for source, data in self.transport.bundles(version):  # the office sends only its newest
            bundle = self._decode(data, source)
            if bundle.version <= version:
                raise SyncError(f"{source}: the office sent v{bundle.version}, not newer than v{version}")
            self._apply(bundle, source)

    def _pull_from_folder(self) -> None:
        current = self.store.current_bundle()
        version = current.version if current else 0
        newer = []
        for source, data in self.transport.bundles(version):
            try:
                bundle = self._decode(data, source)
            except BundleError as exc:
                self.report.errors.append(f"pull bundles: {exc}")
                continue
            if bundle.unit_id != self.unit_id:
                self.transport.skip(source, f"built for unit {bundle.unit_id!r}, this is unit {self.unit_id!r}")
            elif bundle.version <= version:
                self.report.bundles_skipped += 1
                self.transport.skip(source, f"v{bundle.version} is not newer than v{version} (already applied)")
            else:
                newer.append((bundle.version, source))
            del bundle, data  # one decoded bundle in memory at a time
        for _, source in sorted(newer):  # deltas need their base first
            self._apply(self._decode(Path(source).read_bytes(), source), source)

    def _decode(self, data: bytes, source: str):
        from .bundle import decode_bundle

        return decode_bundle(data, self.fleet_key, source=source)

    def _apply(self, bundle, source: str) -> None:
        info = self.store.apply_bundle(bundle, source=source)
        self.report.bundles_applied.append(info.version)
        log.info("applied %s bundle v%d (%d employees)", info.kind, info.version, info.employees)


def heartbeat_document(cfg, store, journal) -> dict:
    """What the office's units page shows about this unit (the contract's heartbeat body)."""
    from .journal_guard import verify_for_heartbeat
    from .journal_schema import VEND_SUCCEEDED

    firmware = getattr(sys.modules.get(__name__.split(".")[0]), "__version__", "unknown")

    bundle = store.current_bundle()
    last = journal.conn.execute("SELECT MAX(ts_us) FROM journal WHERE kind = ?", (VEND_SUCCEEDED,)).fetchone()[0]
    journal_ok, journal_check = verify_for_heartbeat(journal)  # incremental: not the whole chain every night
    faults = [] if journal_ok else [f"journal: {journal_check}"]
    unknown = len(journal.unknown_outcomes())
    if unknown:
        faults.append(f"{unknown} vend outcomes await a technician's review")
    behind = journal.clock_behind_s()
    if behind > CLOCK_FAULT_S:  # the office sees the offset too; this says the unit noticed it itself
        faults.append(f"clock: {behind:.0f} s behind the journal's newest entry")
    try:
        free = shutil.disk_usage(cfg.state_dir).free
    except OSError:
        free = 0
    return {"firmware": firmware, "model": _model_name(cfg), "bundle_version": bundle.version if bundle else 0,
            "last_purchase_at": last / 1e6 if last is not None else None,
            "out_of_service": store.out_of_service_reason(), "faults": faults, "free_disk_bytes": free,
            "journal_ok": journal_ok, "journal_head_seq": journal.head()[0], "clock": time.time(),
            "key_mode": store.keystore.key_mode}


def _model_name(cfg) -> str:
    try:
        manifest = json.loads(active_manifest_path(cfg.unit.assets_dir).read_text(encoding="utf-8"))
        return f"{manifest.get('model_file', 'model')}@{str(manifest.get('sha256', ''))[:12]}"
    except (OSError, ValueError, AttributeError, ModelError):
        return "unknown"


def run_sync(cfg, transport, keystore=None) -> SyncReport:
    """One sync pass: push journal, push templates, heartbeat, then pull; each step tried on its own.
    ``keystore``: the unit's keys opened by the CLI (otp mode needs the board's key source)."""
    from .accounts import AccountStore

    report = SyncReport()
    with AccountStore.open(cfg, keystore=keystore) as store:
        run = _Run(cfg, store, transport, report)
        for name, step in (("push journal", run.push_journal), ("push templates", run.push_templates),
                           ("heartbeat", run.heartbeat), ("pull bundles", run.pull_bundles)):
            try:
                step()
            except (SyncError, BundleError, VendorNodeError) as exc:
                log.error("sync: %s failed: %s", name, exc)
                report.errors.append(f"{name}: {exc}")
        try:
            report.templates_purged = store.purge_expired_templates()
        except VendorNodeError as exc:
            report.errors.append(f"purge templates: {exc}")
    report.skipped.extend(getattr(transport, "skipped", []))
    return report


def transport_from(cfg, folder: Path | None = None, server_url: str | None = None, budget: RunBudget | None = None,
                   keystore=None):
    """The transport a sync run uses: a folder if given, else the server URL; None when there is no target."""
    sync = cfg.sync
    if folder is not None:
        return FolderTransport(folder, cfg.unit.unit_id, sync.max_bundle_bytes)
    url = server_url or sync.server_url
    if not url:
        return None
    from .keys import KeyStore

    signing_key = (keystore or KeyStore.from_config(cfg)).load_signing_key()
    return HttpTransport(url, cfg.unit.unit_id, signing_key, budget or RunBudget(sync.max_run_s), sync.timeout_s,
                         sync.allow_insecure_http, sync.max_bundle_bytes, sync.ca_file)
