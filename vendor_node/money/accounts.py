"""The offline account store: employees, encrypted templates, bundles applied, floor limits.

Everything lives in the unit's one SQLite db (storage.open_db). Templates are
sealed with AES-256-GCM under the unit data key, the employee id as associated
data; they arrive only through signed bundles (sealed under the fleet template
key) or enrollment at the unit, and never without a recorded consent.
Authorization works like a card terminal's offline floor limits (see authorize.py).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag

from . import authorize as floor_limits
from .accounts_schema import STATEMENTS, BundleInfo, Employee
from .authorize import MESSAGES, AbuseGuard, Authorization
from .bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle
from .bundle_stream import read_bundle_streamed
from ..errors import AccountsError, BundleError, ConsentError, KeyFileError
from .keys import KeyStore, TemplateCipher
from .storage import HoldsConnection, open_owning, transaction

log = logging.getLogger(__name__)

TEMPLATE_STORAGE_PURPOSE = b"vendor-node template at rest v1"
MAX_TEMPLATE_BYTES = 1024
LAST_USED_RESOLUTION_S = 3600.0  # write "last used" at most hourly: retention counts days, SD cards count writes

# AbuseGuard and Authorization (offline authorization) live in authorize.py, the row types in
# accounts_schema.py; both stay importable from here.
__all__ = ["AccountStore", "AbuseGuard", "Authorization", "BundleInfo", "Employee", "MESSAGES",
           "MAX_TEMPLATE_BYTES", "TEMPLATE_STORAGE_PURPOSE"]


class AccountStore(HoldsConnection):
    """Employees, templates and floor limits on one unit; a context manager over the db."""

    def __init__(self, cfg, conn: sqlite3.Connection, journal=None, keystore: KeyStore | None = None):
        self.cfg = cfg
        self.conn = conn
        self._journal = journal
        self.keystore = keystore or KeyStore.from_config(cfg)
        conn.execute("PRAGMA secure_delete=ON")  # deleted templates are zeroed, not just unlinked
        with self._transaction():
            for statement in STATEMENTS:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(employees)")}
            if "funds_after_seq" not in columns:  # a store from before bundle format 2: count every own charge
                conn.execute("ALTER TABLE employees ADD COLUMN funds_after_seq INTEGER NOT NULL DEFAULT 0")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(template_revocations)")}
            if "reported" not in columns:
                conn.execute("ALTER TABLE template_revocations ADD COLUMN reported INTEGER NOT NULL DEFAULT 0")
        stored = conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        if not self.keystore.has_data_key() and stored:
            raise KeyFileError(f"{self.keystore.data_key_path}: the unit data key is missing but {stored} "
                               "templates are stored under it; restore the key file (a new key cannot open them)")
        self._cipher = TemplateCipher(self.keystore.ensure_data_key(), TEMPLATE_STORAGE_PURPOSE)
        self.journal  # its tables exist from the start: a bundle is checked against its position

    @classmethod
    def open(cls, cfg, journal=None, keystore: KeyStore | None = None) -> "AccountStore":
        """A store owning its own connection to <state_dir>/unit.db (closed by close())."""
        return open_owning(cfg.state_dir, lambda conn: cls(cfg, conn, journal, keystore))

    @property
    def journal(self):
        if self._journal is None:
            from .journal import Journal

            self._journal = Journal(self.conn)
        return self._journal

    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT; on any error ROLLBACK, so nothing half-written stays."""
        return transaction(self.conn, AccountsError, "cannot write the account store",
                           failed="account store write failed, nothing changed",
                           nested="the unit database is already inside a transaction")

    # --- bundles -------------------------------------------------------------------
    def current_bundle(self) -> BundleInfo | None:
        row = self.conn.execute(
            "SELECT version, kind, created, expires, applied_at, employees, templates, deletions, sha256 "
            "FROM bundle_history ORDER BY version DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return BundleInfo(version=row[0], kind=row[1], created=row[2], expires=row[3], applied_at=row[4],
                          employees=row[5], templates=row[6], deletions=row[7], sha256=row[8])

    def import_bundle(self, path: Path | str, now: float | None = None) -> BundleInfo:
        """Verify and apply a bundle in one transaction; on any BundleError the store is unchanged. Streamed
        (bundle_stream.py): signature checked before parsing, never the whole bundle in memory."""
        fleet_key = self.keystore.load_fleet_public_key()
        bundle = read_bundle_streamed(path, fleet_key)
        return self.apply_bundle(bundle, now=now, source=str(path))

    @property
    def unit_id(self) -> str:
        """This unit's id: as provisioned, else the config's."""
        return self.keystore.read_unit_id() or self.cfg.unit.unit_id

    def _check_bundle_is_ours(self, bundle: Bundle, source: str) -> None:
        """Refuse a bundle for another unit, or one whose journal position is not in this unit's journal."""
        if bundle.unit_id != self.unit_id:
            raise BundleError(f"{source}: built for unit {bundle.unit_id!r}, but this is unit {self.unit_id!r}; "
                              "refused, nothing changed")
        position = bundle.journal_position
        head_seq, _ = self.journal.head()
        if position.seq > head_seq:
            raise BundleError(f"{source}: its journal position seq {position.seq} is past this unit's last entry "
                              f"(seq {head_seq}): built from another journal; refused, nothing changed")
        if position.seq > 0:
            ours = self.journal.entries(position.seq - 1, position.seq)
            if not ours or ours[0].hash != position.hash:
                raise BundleError(f"{source}: its journal position (seq {position.seq}, hash "
                                  f"{position.hash[:16]}...) does not match this unit's entry {position.seq}: "
                                  "built from another journal; refused, nothing changed")

    def apply_bundle(self, bundle: Bundle, now: float | None = None, source: str = "bundle") -> BundleInfo:
        """Apply a checked bundle (a ``Bundle``, or a ``StreamedBundle`` whose records stream from its file)."""
        now = time.time() if now is None else now
        self._check_bundle_is_ours(bundle, source)
        if bundle.expires <= now:
            raise BundleError(f"{source}: expired at {datetime.fromtimestamp(bundle.expires):%Y-%m-%d %H:%M}")
        transport = None
        if bundle.templates:
            if not self.keystore.has_fleet_template_key():
                raise BundleError(f"{source}: carries {len(bundle.templates)} templates but this unit has no fleet "
                                  "template key (provision it with --fleet-template-key)")
            transport = TemplateCipher(self.keystore.load_fleet_template_key(), TEMPLATE_TRANSPORT_PURPOSE)
        applied_at = now
        with self._transaction():
            current = self.current_bundle()
            if current is not None and bundle.version <= current.version:
                raise BundleError(f"{source}: version {bundle.version} is not newer than the installed "
                                  f"version {current.version}; refused")
            if bundle.kind == "delta" and (current is None or current.version < bundle.base_version):
                have = "none" if current is None else current.version
                raise BundleError(f"{source}: delta on version {bundle.base_version} but this unit has {have}; "
                                  "import a snapshot first")
            self._apply_rows(bundle, transport, min(bundle.created, applied_at), now, source)
            self.conn.execute(
                "INSERT INTO bundle_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (bundle.version, bundle.kind, bundle.created, bundle.expires, applied_at, bundle.sha256,
                 len(bundle.employees), len(bundle.templates), len(bundle.deletions)))
        log.info("account bundle %s v%d applied: %d employees, %d templates, %d deletions", bundle.kind,
                 bundle.version, len(bundle.employees), len(bundle.templates), len(bundle.deletions))
        if bundle.deletions or bundle.template_revocations:
            self._scrub()  # deleted templates leave no copy in the WAL either
        return self.current_bundle()

    def _apply_rows(self, bundle: Bundle, transport: TemplateCipher | None, funds_as_of: float, now: float,
                    source: str):
        c = self.conn
        c.executemany(  # rows from a generator: sqlite takes them one by one (a streamed bundle stays streamed)
            "INSERT INTO employees (id, display_name, status, funding, funds_cents, per_purchase_cap_cents, "
            "per_day_cap_cents, funds_as_of, bundle_version, funds_after_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET "
            "display_name=excluded.display_name, status=excluded.status, funding=excluded.funding, "
            "funds_cents=excluded.funds_cents, per_purchase_cap_cents=excluded.per_purchase_cap_cents, "
            "per_day_cap_cents=excluded.per_day_cap_cents, funds_as_of=excluded.funds_as_of, "
            "bundle_version=excluded.bundle_version, funds_after_seq=excluded.funds_after_seq",
            ((e.id, e.display_name, e.status, e.funding, e.funds_cents, e.per_purchase_cap_cents,
              e.per_day_cap_cents, funds_as_of, bundle.version, bundle.journal_position.seq)
             for e in bundle.employees))
        c.executemany("UPDATE employees SET status='deleted', display_name='', funds_cents=0, bundle_version=? "
                      "WHERE id=?", [(bundle.version, d) for d in bundle.deletions])
        if bundle.kind == "snapshot":  # whoever the snapshot leaves out is gone
            c.execute("UPDATE employees SET status='deleted', display_name='', funds_cents=0 "
                      "WHERE bundle_version < ? AND status != 'deleted'", (bundle.version,))
            c.execute("DELETE FROM account_policy")
        c.executemany("INSERT OR REPLACE INTO account_policy VALUES (?, ?)", sorted(bundle.policy.items()))
        gone = "SELECT id FROM employees WHERE status='deleted'"
        c.execute(f"DELETE FROM templates WHERE employee_id IN ({gone})")
        c.execute(f"DELETE FROM upload_queue WHERE employee_id IN ({gone})")
        for emp_id, revoked_at in bundle.template_revocations.items():  # revoked at another unit or the office
            c.execute("DELETE FROM templates WHERE employee_id = ? AND consented_at <= ?", (emp_id, revoked_at))
            c.execute("DELETE FROM upload_queue WHERE employee_id = ? AND consented_at <= ?", (emp_id, revoked_at))
            c.execute("INSERT INTO template_revocations (employee_id, revoked_at, reported) VALUES (?, ?, 1) "
                      "ON CONFLICT(employee_id) DO UPDATE SET reported = CASE WHEN excluded.revoked_at >= revoked_at "
                      "THEN 1 ELSE reported END, revoked_at = MAX(revoked_at, excluded.revoked_at)",
                      (emp_id, revoked_at))
        known = {r[0] for r in c.execute("SELECT id FROM employees WHERE status != 'deleted'")}
        queued = {r[0] for r in c.execute("SELECT employee_id FROM upload_queue")}
        revoked = dict(c.execute("SELECT employee_id, revoked_at FROM template_revocations"))
        held = dict(c.execute("SELECT employee_id, consented_at FROM templates"))

        def rows():  # one at a time: a streamed bundle of 50,000 never has all its templates in memory
            for i, item in enumerate(bundle.templates if transport else ()):
                emp_id, consented_at = item.employee_id, item.consented_at
                try:
                    template = transport.open(emp_id, item.sealed)
                except InvalidTag:
                    raise BundleError(f"{source}: templates[{i}] for {emp_id!r} does not open with the fleet "
                                      "template key") from None
                if not template or len(template) > MAX_TEMPLATE_BYTES:
                    raise BundleError(f"{source}: templates[{i}] is {len(template)} bytes (1 to {MAX_TEMPLATE_BYTES})")
                if emp_id not in known:
                    raise BundleError(f"{source}: template for {emp_id!r}, who is not an employee on this unit")
                if emp_id in queued:  # a newer enrollment here the fleet has not seen yet wins
                    continue
                if held.get(emp_id) == consented_at:
                    continue  # the same enrollment again: keep its row (and its last-used time for retention)
                if emp_id in revoked and consented_at <= revoked[emp_id]:
                    continue  # unenrolled here after that consent: never bring it back
                yield (emp_id, self._cipher.seal(emp_id, template), item.consent_version, consented_at, now, None,
                       "bundle")

        c.executemany("INSERT OR REPLACE INTO templates VALUES (?, ?, ?, ?, ?, ?, ?)", rows())

    # --- reading -------------------------------------------------------------------
    _EMPLOYEE_SQL = (
        "SELECT e.id, e.display_name, e.status, e.funding, e.funds_cents, e.per_purchase_cap_cents, "
        "e.per_day_cap_cents, e.funds_as_of, t.employee_id IS NOT NULL, t.consent_version, t.last_used_at, "
        "e.funds_after_seq FROM employees e LEFT JOIN templates t ON t.employee_id = e.id")

    def employees(self) -> list[Employee]:
        rows = self.conn.execute(self._EMPLOYEE_SQL + " ORDER BY e.id")
        return [Employee(*r[:8], bool(r[8]), r[9], r[10], r[11]) for r in rows]

    def employee(self, employee_id: str) -> Employee | None:
        r = self.conn.execute(self._EMPLOYEE_SQL + " WHERE e.id = ?", (employee_id,)).fetchone()
        return None if r is None else Employee(*r[:8], bool(r[8]), r[9], r[10], r[11])

    def templates_revision(self) -> tuple:
        """Changes whenever the gallery must be rebuilt: a new bundle, or a template stored, replaced or deleted
        (here or by another process); read every second, so one row, never a count of the templates."""
        bundle = self.current_bundle()
        changes = self.conn.execute("SELECT n FROM template_changes WHERE id = 1").fetchone()[0]
        return ((bundle.version, bundle.applied_at) if bundle else None, changes)

    def templates(self) -> dict[str, bytes]:
        """Decrypted templates for the matcher's gallery (memory only), suspended employees included:
        a suspended hand must be recognised as itself, so the display says why it is refused and it can
        never land on a colleague's account as the nearest other template."""
        rows = self.conn.execute("SELECT t.employee_id, t.sealed FROM templates t JOIN employees e "
                                 "ON e.id = t.employee_id WHERE e.status != 'deleted'").fetchall()
        out, bad = {}, []
        for emp_id, sealed in rows:
            try:
                out[emp_id] = self._cipher.open(emp_id, sealed)
            except InvalidTag:
                bad.append(emp_id)
        if bad:
            log.error("%d templates do not open with this unit's data key (tampered or moved rows): %s",
                      len(bad), ", ".join(bad[:5]))
            if not out:
                raise KeyFileError(f"{self.keystore.data_key_path}: no stored template opens with this data key")
        return out

    def policy(self) -> dict:
        """The floor limits in force: the newest bundle's policy over the unit's config."""
        acc = self.cfg.accounts
        values = {"max_offline_age_h": acc.max_offline_age_h, "per_day_cap_cents": acc.per_day_cap_cents,
                  "unsynced_total_cap_cents": acc.unsynced_total_cap_cents}
        for key, value in self.conn.execute("SELECT key, value FROM account_policy"):
            values[key] = float(value) if key == "max_offline_age_h" else int(value)
        return values

    # --- offline authorization ---------------------------------------------------------
    def out_of_service_reason(self, now: float | None = None) -> str | None:
        """Why no purchase can be approved at all right now, or None."""
        return floor_limits.out_of_service_reason(self, now)

    def authorize(self, employee_id: str, price_cents: int, now: float | None = None) -> Authorization:
        """Approve ``price_cents`` only within every floor limit; a refusal names the limit hit."""
        if isinstance(price_cents, bool) or not isinstance(price_cents, int) or price_cents <= 0:
            raise AccountsError(f"price must be a positive number of cents, got {price_cents!r}")
        return floor_limits.decide(self, employee_id, price_cents, now)

    def spendable_cents(self, employee_id: str, now: float | None = None) -> Authorization:
        """The most this employee may spend now (for the MDB session's funds), or why nothing."""
        return floor_limits.decide(self, employee_id, None, now)

    def funds_left_cents(self, employee: Employee) -> int:
        """Funds after this unit's charges the bundle's office had not seen yet (for `accounts list`)."""
        return employee.funds_cents - floor_limits.committed_after_seq(self.journal, employee.id,
                                                                      employee.funds_after_seq)

    # --- enrollment, deletion, retention ------------------------------------------------
    def enroll(self, employee_id: str, template: bytes, consent_version: str,
               now: float | None = None, consented_at: float | None = None) -> bool:
        """Store the template sealed; queue it (sealed for transport) for upload. True if queued."""
        now = time.time() if now is None else now
        consented_at = now if consented_at is None else consented_at
        if not isinstance(consent_version, str) or not consent_version.strip():
            raise ConsentError(f"no consent version recorded for {employee_id!r}; a template is never stored "
                               "without one")
        if not isinstance(template, (bytes, bytearray)) or not 0 < len(template) <= MAX_TEMPLATE_BYTES:
            raise AccountsError(f"a template must be 1 to {MAX_TEMPLATE_BYTES} bytes")
        emp = self.employee(employee_id)
        if emp is None or emp.status == "deleted":
            raise AccountsError(f"unknown employee {employee_id!r}: import a bundle that lists them first")
        transport = None
        if self.keystore.has_fleet_template_key():
            cipher = TemplateCipher(self.keystore.load_fleet_template_key(), TEMPLATE_TRANSPORT_PURPOSE)
            transport = cipher.seal(employee_id, bytes(template))
        sealed = self._cipher.seal(employee_id, bytes(template))
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO templates VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (employee_id, sealed, consent_version, consented_at, now, None, "enrolled"))
            self.conn.execute("DELETE FROM template_revocations WHERE employee_id = ?", (employee_id,))
            if transport is not None:
                self.conn.execute("INSERT OR REPLACE INTO upload_queue VALUES (?, ?, ?, ?, ?)",
                                  (employee_id, transport, consent_version, consented_at, now))
        return transport is not None

    def refresh_template(self, employee_id: str, make) -> bytes:
        """``make(stored template) -> bytes`` (a model change, hand/recognition.py) stored in its place with the same
        consent and consent time (a revocation from before still removes it), queued as enrolled; what it stored."""
        row = self.conn.execute("SELECT sealed, consent_version, consented_at FROM templates WHERE employee_id = ?",
                                (employee_id,)).fetchone()
        if row is None:
            raise AccountsError(f"{employee_id!r} has no template to refresh")
        self.enroll(employee_id, template := make(self._cipher.open(employee_id, row[0])), row[1], consented_at=row[2])
        return template

    def pending_uploads(self) -> list[tuple[str, bytes, str, float]]:
        """(employee id, template sealed for transport, consent version, consented at) for the sync."""
        return self.conn.execute("SELECT employee_id, sealed, consent_version, consented_at FROM upload_queue "
                                 "ORDER BY queued_at").fetchall()

    def mark_uploaded(self, employee_ids) -> None:
        with self._transaction():
            self.conn.executemany("DELETE FROM upload_queue WHERE employee_id = ?", [(i,) for i in employee_ids])

    def mark_uploaded_as_sent(self, sent: dict[str, float]) -> int:
        """Drop queued templates the office confirmed, only if still the enrollment sent (id -> consented_at):
        a re-enrollment since then stays queued. Returns how many left the queue."""
        with self._transaction():
            return sum(self.conn.execute("DELETE FROM upload_queue WHERE employee_id = ? AND consented_at = ?",
                                         (employee_id, at)).rowcount for employee_id, at in sent.items())

    def unreported_revocations(self) -> list[tuple[str, float]]:
        """(employee id, revoked at) of unenrollments here the office has not confirmed yet."""
        return self.conn.execute("SELECT employee_id, revoked_at FROM template_revocations WHERE reported = 0 "
                                 "ORDER BY revoked_at").fetchall()

    def mark_revocations_reported(self, sent: dict[str, float]) -> None:
        """The office confirmed these revocations (id -> revoked_at as sent): never send them again, so an old
        revocation cannot delete a later enrollment at another unit. The rows stay: older copies stay refused."""
        with self._transaction():
            self.conn.executemany("UPDATE template_revocations SET reported = 1 WHERE employee_id = ? AND revoked_at = ?",
                                  list(sent.items()))

    def unenroll(self, employee_id: str, now: float | None = None) -> bool:
        """Delete the template and any queued copy at once, and scrub them from the file. True if one existed."""
        now = time.time() if now is None else now
        with self._transaction():
            had = self.conn.execute("DELETE FROM templates WHERE employee_id = ?", (employee_id,)).rowcount
            had += self.conn.execute("DELETE FROM upload_queue WHERE employee_id = ?", (employee_id,)).rowcount
            known = self.conn.execute("SELECT 1 FROM employees WHERE id = ? AND status != 'deleted'",
                                      (employee_id,)).fetchone()
            if not had and not known:  # a typo must not send the fleet a revocation for somebody else's id
                raise AccountsError(f"no employee {employee_id!r} on this unit and no template of theirs: "
                                    "nothing deleted, no revocation queued")
            self.conn.execute("INSERT OR REPLACE INTO template_revocations (employee_id, revoked_at) VALUES (?, ?)",
                              (employee_id, now))
        self._scrub()
        return had > 0

    def retransform_templates(self, transform, requeue_enrolled: bool = False) -> int:
        """Every stored template and queued upload rewritten by ``transform(list[bytes]) -> list[bytes]`` in one
        transaction, old forms scrubbed (template guard renewal: no image needed). ``requeue_enrolled`` also
        queues the new form of every template enrolled here, so the office relays it to the other units (only
        this unit's own enrollments: a bundle copy may be older than the office's). How many were rewritten."""
        rows = self.conn.execute("SELECT employee_id, sealed, source, consent_version, consented_at "
                                 "FROM templates").fetchall()
        queued = self.conn.execute("SELECT employee_id, sealed FROM upload_queue").fetchall()
        transport = (TemplateCipher(self.keystore.load_fleet_template_key(), TEMPLATE_TRANSPORT_PURPOSE)
                     if queued or (requeue_enrolled and self.keystore.has_fleet_template_key()) else None)
        try:
            stored = [self._cipher.open(row[0], row[1]) for row in rows]
            pending = [transport.open(emp_id, sealed) for emp_id, sealed in queued]
        except InvalidTag:
            raise AccountsError("a stored template does not open with this unit's keys; nothing was changed") from None
        new_stored, new_pending, now = transform(stored), transform(pending), time.time()
        with self._transaction():
            self.conn.executemany("UPDATE templates SET sealed = ? WHERE employee_id = ?",
                                  [(self._cipher.seal(row[0], t), row[0]) for row, t in zip(rows, new_stored)])
            self.conn.executemany("UPDATE upload_queue SET sealed = ? WHERE employee_id = ?",
                                  [(transport.seal(e, t), e) for (e, _), t in zip(queued, new_pending)])
            if transport is not None and requeue_enrolled:
                self.conn.executemany("INSERT OR REPLACE INTO upload_queue VALUES (?, ?, ?, ?, ?)",
                                      [(row[0], transport.seal(row[0], t), row[3], row[4], now)
                                       for row, t in zip(rows, new_stored) if row[2] == "enrolled"])
        self._scrub()
        return len(rows)

    def _scrub(self) -> None:
        """secure_delete zeroed the freed cells; checkpoint and truncate the WAL so no old copy lingers there."""
        busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("another reader kept the WAL open; deleted templates leave it at the next checkpoint")

    def note_template_used(self, employee_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.conn.execute("UPDATE templates SET last_used_at = ? WHERE employee_id = ? AND "
                          "(last_used_at IS NULL OR last_used_at < ?)",
                          (now, employee_id, now - LAST_USED_RESOLUTION_S))

    def purge_expired_templates(self, now: float | None = None) -> int:
        """Delete templates unused for template_retention_days (BIPA: destroy when no longer needed)."""
        now = time.time() if now is None else now
        cutoff = now - self.cfg.accounts.template_retention_days * 86400.0
        with self._transaction():
            stale = [r[0] for r in self.conn.execute(
                "SELECT employee_id FROM templates WHERE MAX(stored_at, COALESCE(last_used_at, 0)) < ?", (cutoff,))]
            self.conn.executemany("DELETE FROM templates WHERE employee_id = ?", [(i,) for i in stale])
            self.conn.executemany("DELETE FROM upload_queue WHERE employee_id = ?", [(i,) for i in stale])
        if stale:
            self._scrub()
            log.info("deleted %d templates unused for %d days", len(stale), self.cfg.accounts.template_retention_days)
        return len(stale)
