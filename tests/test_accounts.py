"""The account store: atomic bundle import, floor limits, enrollment, deletion, retention, cool-down."""
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.money.accounts import AccountStore
from vendor_node.money.authorize import AbuseGuard
from vendor_node.money.bundle import (TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, JournalPosition,
                                      TemplateRecord, encode_bundle, write_bundle_file)
from vendor_node.config import Config
from vendor_node.errors import AccountsError, BundleError, ConsentError, KeyFileError
from vendor_node.money.keys import KeyStore, TemplateCipher, public_key_to_pem

NOW = time.time()
HOUR = 3600.0


class Fleet:
    """A back office in miniature: signs bundles and seals templates for transport."""

    def __init__(self, tmp_path: Path):
        self.signer = Ed25519PrivateKey.generate()
        self.template_key = os.urandom(32)
        self.transport = TemplateCipher(self.template_key, TEMPLATE_TRANSPORT_PURPOSE)
        self.dir = tmp_path / "bundles"
        self.dir.mkdir()

    def bundle(self, version, employees=(), templates=(), deletions=(), kind="snapshot", base_version=None,
               created=NOW, expires=None, policy=None, signer=None, unit_id="unit-dev", position=None) -> Path:
        bundle = Bundle(kind=kind, version=version, base_version=base_version, created=created,
                        unit_id=unit_id, journal_position=position or JournalPosition(),
                        expires=expires or created + 7 * 24 * HOUR, policy=policy or {},
                        employees=list(employees), deletions=list(deletions),
                        templates=[TemplateRecord(emp, self.transport.seal(emp, plain), "consent-1", created - 60)
                                   for emp, plain in templates])
        path = self.dir / f"v{version}-{len(os.listdir(self.dir))}.vnb"
        write_bundle_file(path, encode_bundle(bundle, signer or self.signer))
        return path


STAFF = [EmployeeRecord("E1", "Ann", funds_cents=2000),
         EmployeeRecord("E2", "Bob", funds_cents=500, per_purchase_cap_cents=200),
         EmployeeRecord("E3", "Cy", status="suspended", funds_cents=900),
         EmployeeRecord("E4", "Di", funding="payroll", funds_cents=5000, per_day_cap_cents=3000)]


@pytest.fixture
def fleet(tmp_path):
    return Fleet(tmp_path)


@pytest.fixture
def cfg(tmp_path):
    return Config().replace(unit={"state_dir": tmp_path / "state"})


@pytest.fixture
def store(cfg, fleet):
    keys = KeyStore.from_config(cfg)
    keys.pin_fleet_public_key(public_key_to_pem(fleet.signer.public_key()))
    keys.install_fleet_template_key(fleet.template_key)
    with AccountStore.open(cfg) as s:
        yield s


def snapshot_of(store) -> list[str]:
    """Every row of every table, as SQL: two equal snapshots mean nothing changed."""
    return list(store.conn.iterdump())


def buy(store, employee_id, cents, outcome="succeed"):
    journal = store.journal
    session = journal.begin_session()
    journal.approve(session, employee_id, "A1", cents)
    if outcome == "succeed":
        journal.succeed(session)
    elif outcome == "void":
        journal.void(session, "failed")
    return session


# --- import ----------------------------------------------------------------------
def test_snapshot_import_and_listing(store, fleet):
    info = store.import_bundle(fleet.bundle(5, STAFF, templates=[("E1", b"t" * 700)]))
    assert (info.version, info.kind, info.employees, info.templates) == (5, "snapshot", 4, 1)
    listed = {e.id: e for e in store.employees()}
    assert listed["E1"].has_template and listed["E1"].consent_version == "consent-1"
    assert not listed["E2"].has_template and listed["E3"].status == "suspended"
    assert store.templates() == {"E1": b"t" * 700}
    assert not hasattr(listed["E1"], "template")


def test_templates_are_stored_sealed_under_the_unit_key(store, fleet, cfg):
    secret = os.urandom(64) * 10
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", secret)]))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in cfg.state_dir.glob("unit.db*"))
    assert secret[:64] not in raw
    sealed = store.conn.execute("SELECT sealed FROM templates WHERE employee_id='E1'").fetchone()[0]
    assert sealed not in fleet.bundle(2, STAFF, templates=[("E1", secret)]).read_bytes()


def test_template_swapped_between_rows_does_not_open(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", b"a" * 300), ("E2", b"b" * 300)]))
    a, b = (store.conn.execute("SELECT sealed FROM templates WHERE employee_id=?", (e,)).fetchone()[0]
            for e in ("E1", "E2"))
    store.conn.execute("UPDATE templates SET sealed=? WHERE employee_id='E1'", (b,))
    assert store.templates() == {"E2": b"b" * 300}  # the moved one is dropped, not attributed to E1
    store.conn.execute("UPDATE templates SET sealed=? WHERE employee_id='E2'", (a,))
    with pytest.raises(KeyFileError, match="no stored template opens"):
        store.templates()


def test_snapshot_drops_who_it_leaves_out_and_delta_upserts(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E2", b"x" * 100)]))
    store.import_bundle(fleet.bundle(2, STAFF[:1] + STAFF[2:]))
    assert store.employee("E2").status == "deleted" and not store.employee("E2").has_template
    assert store.employee("E2").display_name == ""
    store.import_bundle(fleet.bundle(3, [EmployeeRecord("E5", "Ed", funds_cents=100)], deletions=["E1"],
                                     kind="delta", base_version=2))
    status = {e.id: e.status for e in store.employees()}
    assert status == {"E1": "deleted", "E2": "deleted", "E3": "suspended", "E4": "active", "E5": "active"}


def test_delta_needs_its_base(store, fleet):
    with pytest.raises(BundleError, match="this unit has none; import a snapshot first"):
        store.import_bundle(fleet.bundle(3, STAFF, kind="delta", base_version=2))
    store.import_bundle(fleet.bundle(1, STAFF))
    with pytest.raises(BundleError, match="delta on version 2 but this unit has 1"):
        store.import_bundle(fleet.bundle(3, STAFF, kind="delta", base_version=2))


def refused_without_change(store, path, fragment):
    before = snapshot_of(store)
    with pytest.raises(BundleError, match=fragment):
        store.import_bundle(path)
    assert snapshot_of(store) == before


def test_old_or_equal_version_is_refused_and_nothing_changes(store, fleet):
    store.import_bundle(fleet.bundle(7, STAFF))
    refused_without_change(store, fleet.bundle(7, STAFF[:1]), "version 7 is not newer than the installed version 7")
    refused_without_change(store, fleet.bundle(6, STAFF[:1]), "version 6 is not newer")


def test_expired_bundle_is_refused(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    refused_without_change(store, fleet.bundle(2, STAFF[:1], created=NOW - 10 * 24 * HOUR,
                                               expires=NOW - HOUR), "expired")


def test_wrong_key_bad_signature_truncated_malformed_leave_the_store_as_it_was(store, fleet, tmp_path):
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", b"z" * 50)]))
    refused_without_change(store, fleet.bundle(2, STAFF[:1], signer=Ed25519PrivateKey.generate()), "bad signature")
    good = fleet.bundle(3, STAFF[:2]).read_bytes()
    flipped = bytearray(good)
    flipped[40] ^= 0xFF
    for name, data, fragment in [("flipped", bytes(flipped), "bad signature"),
                                 ("truncated", good[:-30], "truncated"),
                                 ("tiny", good[:8], "truncated|bad magic"),
                                 ("empty", b"", "truncated|bad magic"),
                                 ("text", b'{"version": 99, "employees": []}' + b" " * 80, "bad magic")]:
        path = tmp_path / f"{name}.vnb"
        path.write_bytes(data)
        refused_without_change(store, path, fragment)
    assert store.current_bundle().version == 1 and store.templates() == {"E1": b"z" * 50}


def test_failure_inside_the_transaction_rolls_everything_back(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    # E9 is in no bundle: the template for them is found only while applying, after rows were written
    refused_without_change(store, fleet.bundle(2, STAFF[:2], templates=[("E9", b"q" * 20)]),
                           "template for 'E9', who is not an employee")


def test_templates_need_the_fleet_template_key(cfg, fleet, tmp_path):
    keys = KeyStore.from_config(cfg)
    keys.pin_fleet_public_key(public_key_to_pem(fleet.signer.public_key()))
    with AccountStore.open(cfg) as store:
        refused_without_change(store, fleet.bundle(1, STAFF, templates=[("E1", b"t")]), "no fleet template key")
    keys.install_fleet_template_key(os.urandom(32))  # not the fleet's
    with AccountStore.open(cfg) as store:
        refused_without_change(store, fleet.bundle(2, STAFF, templates=[("E1", b"t")]),
                               "does not open with the fleet template key")


def test_no_pinned_fleet_key(cfg, fleet):
    with AccountStore.open(cfg) as store:
        with pytest.raises(KeyFileError, match="no fleet public key pinned"):
            store.import_bundle(fleet.bundle(1, STAFF))


def test_missing_data_key_with_templates_stored_is_refused(store, fleet, cfg):
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", b"t" * 10)]))
    os.unlink(KeyStore.from_config(cfg).data_key_path)
    with pytest.raises(KeyFileError, match="data key is missing but 1 templates"):
        AccountStore.open(cfg)
    assert not KeyStore.from_config(cfg).has_data_key()  # no fresh key was made behind our back


# --- authorization ------------------------------------------------------------------
def test_each_refusal_has_its_reason(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, policy={"unsynced_total_cap_cents": 4000}))
    cases = [("nobody", 100, "unknown_employee", "Account not found"),
             ("E3", 100, "suspended", "Account suspended"),
             ("E1", 2100, "insufficient_funds", "Not enough funds"),
             ("E2", 250, "per_purchase_cap", "Over the per-purchase limit"),
             ("E1", 1600, "daily_limit", "Daily limit reached"),
             ("E4", 4100, "daily_limit", "Daily limit reached"),
             ("E1", 150, "ok", "Approved")]
    for employee, price, code, message in cases:
        answer = store.authorize(employee, price, now=NOW + 60)
        assert (answer.reason_code, answer.message, answer.approved) == (code, message, code == "ok"), employee
    assert store.authorize("E1", 150).display_name == "Ann"


def test_bundle_too_old_and_expired(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, created=NOW - HOUR, expires=NOW + 200 * HOUR))
    assert store.authorize("E1", 100, now=NOW).approved
    assert store.out_of_service_reason(NOW) is None
    late = NOW + 72 * HOUR
    assert store.authorize("E1", 100, now=late).reason_code == "bundle_too_old"
    assert "h old" in store.out_of_service_reason(late)


def test_no_bundle_means_out_of_service(store):
    assert store.out_of_service_reason() == "no account bundle imported"
    assert store.authorize("E1", 100).reason_code == "unknown_employee"


def test_funds_count_this_units_charges_since_the_bundle(store, fleet):
    buy(store, "E1", 300)  # before the bundle's journal position: already in the fleet's balance
    store.import_bundle(fleet.bundle(1, STAFF, created=time.time(), position=JournalPosition(*store.journal.head())))
    assert store.funds_left_cents(store.employee("E1")) == 2000
    buy(store, "E1", 500)
    buy(store, "E1", 400, outcome="void")  # a failed vend costs nothing
    assert store.funds_left_cents(store.employee("E1")) == 1500
    # the daily cap counts the whole day, before the bundle too: 15.00 - 3.00 - 5.00
    assert store.spendable_cents("E1").funds_left_cents == 700


def test_an_approval_in_flight_is_already_spent(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, created=NOW - 60))
    buy(store, "E1", 1200, outcome=None)  # approved, the board has not reported yet
    answer = store.authorize("E1", 400)
    assert answer.reason_code == "daily_limit" and answer.funds_left_cents == 300
    assert store.authorize("E1", 300).approved


def test_unit_offline_cap_counts_all_employees(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, created=NOW - 60, policy={"unsynced_total_cap_cents": 1000}))
    buy(store, "E1", 600)
    buy(store, "E4", 300, outcome=None)
    answer = store.authorize("E4", 200)
    assert answer.reason_code == "unit_offline_cap" and answer.message == "Machine offline limit reached"
    assert store.authorize("E4", 100).approved


def test_policy_from_the_config_and_from_the_bundle(cfg, fleet, tmp_path):
    strict = cfg.replace(accounts={"per_day_cap_cents": 500, "max_offline_age_h": 1.0})
    keys = KeyStore.from_config(strict)
    keys.pin_fleet_public_key(public_key_to_pem(fleet.signer.public_key()))
    with AccountStore.open(strict) as store:
        store.import_bundle(fleet.bundle(1, STAFF, created=NOW - 60))
        assert store.authorize("E1", 600).reason_code == "daily_limit"
        assert store.authorize("E1", 100, now=NOW + 2 * HOUR).reason_code == "bundle_too_old"
        store.import_bundle(fleet.bundle(2, STAFF, created=NOW - 60, policy={"per_day_cap_cents": 800}))
        assert store.authorize("E1", 700).approved
        assert store.policy()["per_day_cap_cents"] == 800


def test_price_must_be_positive_cents(store):
    for bad in (0, -5, 1.5, "100", True):
        with pytest.raises(AccountsError, match="price must be a positive number of cents"):
            store.authorize("E1", bad)


# --- enrollment, deletion, retention ----------------------------------------------------
def test_no_template_without_consent(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    for consent in ("", "   ", None):
        with pytest.raises(ConsentError):
            store.enroll("E1", b"t" * 100, consent)
    assert not store.employee("E1").has_template


def test_enroll_unknown_or_bad_template(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    with pytest.raises(AccountsError, match="unknown employee"):
        store.enroll("E9", b"t" * 10, "c1")
    with pytest.raises(AccountsError, match="1 to 1024 bytes"):
        store.enroll("E1", b"t" * 1025, "c1")


def test_enroll_stores_sealed_and_queues_only_the_transport_form(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    template = os.urandom(512)
    assert store.enroll("E2", template, "consent-7") is True
    assert store.templates()["E2"] == template
    [(emp, sealed, consent, _)] = store.pending_uploads()
    assert (emp, consent) == ("E2", "consent-7")
    assert fleet.transport.open("E2", sealed) == template and template not in sealed
    store.mark_uploaded(["E2"])
    assert store.pending_uploads() == []


def test_unenroll_deletes_template_and_queued_copy_from_the_file(store, fleet, cfg):
    store.import_bundle(fleet.bundle(1, STAFF))
    store.enroll("E1", os.urandom(600), "c1")
    sealed = store.conn.execute("SELECT sealed FROM templates").fetchone()[0]
    queued = store.pending_uploads()[0][1]
    assert store.unenroll("E1") is True
    assert not store.employee("E1").has_template and store.pending_uploads() == []
    raw = b"".join(p.read_bytes() for p in cfg.state_dir.glob("unit.db*"))
    assert sealed[20:80] not in raw and queued[20:80] not in raw
    assert store.unenroll("E1") is False


def test_a_stale_bundle_does_not_bring_an_unenrolled_template_back(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, created=NOW - 600, templates=[("E1", b"old")]))
    store.unenroll("E1")
    store.import_bundle(fleet.bundle(2, STAFF, created=NOW - 300, templates=[("E1", b"old")]))
    assert "E1" not in store.templates()
    store.enroll("E1", b"new", "c2")  # a new consent at the unit does store it again
    assert store.templates()["E1"] == b"new"


def test_a_queued_local_enrollment_wins_over_the_bundle_copy(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    store.enroll("E1", b"mine", "c1")
    store.import_bundle(fleet.bundle(2, STAFF, templates=[("E1", b"fleet")]))
    assert store.templates()["E1"] == b"mine"


def test_retention_purges_unused_templates(store, fleet, cfg):
    store.import_bundle(fleet.bundle(1, STAFF))
    store.enroll("E1", b"a" * 40, "c1", now=NOW - 400 * 24 * HOUR)
    store.enroll("E2", b"b" * 40, "c1", now=NOW - 400 * 24 * HOUR)
    store.enroll("E4", b"c" * 40, "c1", now=NOW - 10 * 24 * HOUR)
    store.note_template_used("E2", now=NOW - 5 * 24 * HOUR)
    assert store.purge_expired_templates(now=NOW) == 1
    assert set(store.templates()) == {"E2", "E4"}
    assert [p[0] for p in store.pending_uploads()] == ["E2", "E4"]
    assert store.purge_expired_templates(now=NOW) == 0


def test_last_used_is_written_at_most_hourly(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    store.enroll("E1", b"a", "c1")
    store.note_template_used("E1", now=NOW)
    store.note_template_used("E1", now=NOW + 60)
    assert store.employee("E1").last_used_at == NOW
    store.note_template_used("E1", now=NOW + 2 * HOUR)
    assert store.employee("E1").last_used_at == NOW + 2 * HOUR


# --- abuse cool-down --------------------------------------------------------------------
def guard(**settings):
    return AbuseGuard(Config().replace(abuse=settings))


def test_cool_down_after_too_many_failures_in_the_window():
    g = guard(max_failures=3, window_s=60.0, cooldown_s=120.0)
    for t in (0, 10, 20):
        assert g.cooldown_left(t) == 0.0
        g.record_failure(t)
    assert g.cooldown_left(20) == 120.0
    assert g.cooldown_left(100) == 40.0
    assert g.cooldown_left(141) == 0.0


def test_failures_spread_out_do_not_cool_down():
    g = guard(max_failures=3, window_s=60.0, cooldown_s=120.0)
    for t in (0, 50, 100, 150, 200):
        g.record_failure(t)
    assert g.cooldown_left(200) == 0.0


def test_failures_count_in_a_sliding_window_whatever_succeeds_in_between():
    """40 failed presentations in a minute interleaved with 10 successes once left no cool-down."""
    g = AbuseGuard(Config().abuse)  # the section alone works too: 5 failures in 60 s
    t = 0.0
    for i in range(50):
        t += 1.2
        if i % 5 == 4:
            continue  # a paying colleague: no call clears the count any more
        g.record_failure(t)
        if g.cooldown_left(t) > 0:
            break
    assert g.cooldown_left(t) > 0 and t < 10
    assert g.cooldown_left(t + 119) > 0 and g.cooldown_left(t + 121) == 0.0


def test_a_resent_template_keeps_its_last_use(store, fleet):
    path = fleet.bundle(1, STAFF, templates=[("E1", b"t" * 30)])
    store.import_bundle(path)
    store.note_template_used("E1", now=NOW)
    resent = Bundle(kind="snapshot", version=2, created=NOW, expires=NOW + HOUR, employees=STAFF, unit_id="unit-dev",
                    templates=[TemplateRecord("E1", fleet.transport.seal("E1", b"t" * 30), "consent-1", NOW - 60)])
    store.apply_bundle(resent)
    assert store.employee("E1").last_used_at == NOW
    renewed = Bundle(kind="snapshot", version=3, created=NOW, expires=NOW + HOUR, employees=STAFF, unit_id="unit-dev",
                     templates=[TemplateRecord("E1", fleet.transport.seal("E1", b"u" * 30), "consent-2", NOW)])
    store.apply_bundle(renewed)
    assert store.employee("E1").last_used_at is None and store.templates()["E1"] == b"u" * 30


def test_oversized_bundle_file_is_refused_before_reading(store, tmp_path, monkeypatch):
    import vendor_node.money.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "MAX_PAYLOAD_BYTES", 100)
    big = tmp_path / "big.vnb"
    big.write_bytes(b"\0" * 1000)
    refused_without_change(store, big, "larger than any account bundle")


def test_a_database_error_while_applying_changes_nothing(store, fleet, monkeypatch):
    import sqlite3

    store.import_bundle(fleet.bundle(1, STAFF))
    before = snapshot_of(store)
    real = store._apply_rows

    def half_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_apply_rows", half_then_fail)
    with pytest.raises(AccountsError, match="nothing changed: disk I/O error"):
        store.import_bundle(fleet.bundle(2, STAFF[:1], deletions=["E2"]))
    assert snapshot_of(store) == before and not store.conn.in_transaction


def test_a_running_cool_down_and_recent_failures_survive_a_restart(tmp_path):
    state = tmp_path / "abuse_state.json"
    settings = Config().replace(abuse={"max_failures": 3, "window_s": 60.0, "cooldown_s": 120.0})
    g = AbuseGuard(settings, state_file=state)
    g.record_failure()
    g.record_failure()
    again = AbuseGuard(settings, state_file=state)  # the unit restarted: two failures are remembered
    assert again.cooldown_left() == 0.0
    again.record_failure()
    assert again.cooldown_left() > 115.0
    restarted = AbuseGuard(settings, state_file=state)  # pulling the plug does not end the cool-down
    assert 100.0 < restarted.cooldown_left() <= 120.0


def test_an_unreadable_abuse_state_starts_fresh(tmp_path, caplog):
    state = tmp_path / "abuse_state.json"
    state.write_text("{not json")
    g = AbuseGuard(Config().abuse, state_file=state)
    assert g.cooldown_left() == 0.0
    assert "abuse state unreadable" in caplog.text
    g.record_failure()  # and it is rewritten cleanly
    assert AbuseGuard(Config().abuse, state_file=state).cooldown_left() == 0.0


def test_a_clock_jump_cannot_stretch_a_cool_down(tmp_path):
    import json

    state = tmp_path / "abuse_state.json"
    state.write_text(json.dumps({"failures": [], "cool_until": time.time() + 10 * 24 * HOUR}))
    g = AbuseGuard(Config().replace(abuse={"cooldown_s": 120.0}), state_file=state)
    assert g.cooldown_left() <= 120.0


# --- bundle format 2: one unit, funds as of a journal position ----------------------------
def test_another_units_bundle_is_refused_and_nothing_is_deleted(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", b"t" * 30)]))
    store.enroll("E2", b"e" * 40, "consent-1")  # queued, not uploaded yet
    refused_without_change(store, fleet.bundle(2, [EmployeeRecord("X1", "Other site")], unit_id="unit-elsewhere"),
                           "built for unit 'unit-elsewhere', but this is unit 'unit-dev'")
    assert {e.id for e in store.employees() if e.status != "deleted"} == {"E1", "E2", "E3", "E4"}
    assert [row[0] for row in store.pending_uploads()] == ["E2"]


def test_a_journal_position_this_unit_does_not_have_is_refused(store, fleet):
    store.import_bundle(fleet.bundle(1, STAFF))
    buy(store, "E1", 100)
    head_seq, head_hash = store.journal.head()
    refused_without_change(store, fleet.bundle(2, STAFF, position=JournalPosition(head_seq + 5, head_hash)),
                           "past this unit's last entry")
    refused_without_change(store, fleet.bundle(3, STAFF, position=JournalPosition(head_seq, "ab" * 32)),
                           "does not match this unit's entry")


def test_a_bundle_built_before_the_last_upload_arrived_gives_no_money_back(store, fleet):
    """The issue's case: 5.00 prepaid, 4.50 spent and uploaded; the office built the next bundle before
    that upload arrived (funds still 5.00, position before the purchase): 4.50 must not be approved again."""
    alone = [EmployeeRecord("E1", "Ann", funds_cents=500)]
    store.import_bundle(fleet.bundle(1, alone, policy={"per_day_cap_cents": 100_000}))
    buy(store, "E1", 450)
    store.journal.mark_uploaded(store.journal.head()[0])  # the unit's upload was acknowledged
    store.import_bundle(fleet.bundle(2, alone, policy={"per_day_cap_cents": 100_000}))  # stale: position 0
    assert store.funds_left_cents(store.employee("E1")) == 50
    assert store.authorize("E1", 450).reason_code == "insufficient_funds"
    # once the office has ingested the purchase its bundle says 0.50 at that position: still 0.50
    position = JournalPosition(*store.journal.head())
    store.import_bundle(fleet.bundle(3, [EmployeeRecord("E1", "Ann", funds_cents=50)], position=position,
                                     policy={"per_day_cap_cents": 100_000}))
    assert store.spendable_cents("E1").funds_left_cents == 50


def test_a_clock_stepping_back_gives_no_money_back(store, fleet):
    store.import_bundle(fleet.bundle(1, [EmployeeRecord("E1", "Ann", funds_cents=500)], created=NOW))
    buy(store, "E1", 400)
    # a bundle stamped an hour *later* than the purchase (the office's clock ahead, or the unit's behind)
    store.import_bundle(fleet.bundle(2, [EmployeeRecord("E1", "Ann", funds_cents=500)], created=NOW + HOUR))
    assert store.authorize("E1", 200, now=NOW + HOUR + 1).reason_code == "insufficient_funds"
    assert store.funds_left_cents(store.employee("E1")) == 100


def test_a_template_revoked_elsewhere_is_deleted_here_and_never_comes_back(store, fleet):
    """Unenrolled at another unit (or deleted in the office): the bundle's revocation removes this unit's copy,
    confirmed by applying it; an older copy in a later bundle is refused, a newer enrollment is welcome."""
    staff = [EmployeeRecord("E1", "Ann", funds_cents=2000)]
    store.import_bundle(fleet.bundle(1, staff, templates=[("E1", b"t" * 40)]))
    assert "E1" in store.templates()
    consented = NOW - 60  # what Fleet.bundle stamps on templates
    revoked = Bundle(kind="snapshot", version=3, created=NOW + 2, expires=NOW + HOUR, employees=staff, unit_id="unit-dev",
                     template_revocations={"E1": consented + 1})
    path = fleet.dir / "v3.vnb"
    write_bundle_file(path, encode_bundle(revoked, fleet.signer))
    store.import_bundle(path)
    assert "E1" not in store.templates()
    assert store.employee("E1").status == "active"  # the account stays: only the biometric data goes
    store.import_bundle(fleet.bundle(4, staff, templates=[("E1", b"t" * 40)]))  # the same old enrollment again
    assert "E1" not in store.templates(), "an older copy came back"
    assert store.unreported_revocations() == []  # the office sent it: nothing to report back
    store.import_bundle(fleet.bundle(5, staff, templates=[("E1", b"n" * 40)], created=NOW + 120))  # enrolled anew
    assert store.templates()["E1"] == b"n" * 40


def test_a_bundle_with_a_template_older_than_its_own_revocation_is_refused(fleet):
    from vendor_node.errors import BundleError

    bundle = Bundle(kind="snapshot", version=1, created=NOW, expires=NOW + HOUR, unit_id="unit-dev",
                    employees=[EmployeeRecord("E1", "Ann", funds_cents=1)],
                    templates=[TemplateRecord("E1", fleet.transport.seal("E1", b"t" * 40), "c1", NOW - 100)],
                    template_revocations={"E1": NOW - 50})
    with pytest.raises(BundleError, match="consented before its own revocation"):
        encode_bundle(bundle, fleet.signer)
