"""Migration 0009 moves an existing office's journal entries into their batches' documents and its charges
into Charge rows: every entry kept with every field (the chain verifies again from the stored batches),
every charge counted as before, an overlapping batch and a reinstalled unit's second journal included; the
recent nonces kept (a replay stays refused)."""
from __future__ import annotations

import datetime as dt

import pytest

from test_office_support import FakeUnit, office  # noqa: F401

pytest.importorskip("django")

BEFORE, AFTER = ("office", "0008_issued_bundles_by_digest"), ("office", "0009_batches_kept_whole_charges_as_rows")


def _old_rows(unit: FakeUnit, last: int) -> list[dict]:
    """The unit's entries 1..last as the office stored them before 0009 (no prev_hash; charged_cents)."""
    from vendor_node.money.journal_schema import REVIEW_SETTLED, VEND_SUCCEEDED

    rows = []
    for e in unit.journal.entries(0, last):
        d = e.as_dict()
        d.pop("prev_hash")
        charged = (d["amount_cents"] or 0) if d["kind"] == VEND_SUCCEEDED or (
            d["kind"] == REVIEW_SETTLED and (d["amount_cents"] or 0) > 0) else 0
        rows.append({**d, "charged_cents": charged})
    return rows


def test_entries_move_into_batches_and_charges_without_loss(office, tmp_path):  # noqa: F811
    from django.core.management import call_command
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    call_command("migrate", *BEFORE, verbosity=0)
    try:
        old = MigrationExecutor(connection).loader.project_state(BEFORE).apps
        Unit, Batch, Entry = (old.get_model("office", name) for name in ("Unit", "JournalBatch", "JournalEntry"))
        first, second = FakeUnit(tmp_path / "a", "unit-a"), FakeUnit(tmp_path / "b", "unit-b")
        for i in range(4):
            first.buy(f"E{i % 2}", 100 + i, item=str(i))
        first.buy("E1", 999, succeed=False)  # no charge
        second.buy("E0", 55)
        a = Unit.objects.create(unit_id="unit-a", fingerprint=first.fingerprint, last_seq=15, journal_epoch=1)
        b = Unit.objects.create(unit_id="unit-b", fingerprint=second.fingerprint, last_seq=3, journal_epoch=2)
        rows_a, rows_b = _old_rows(first, 15), _old_rows(second, 3)
        # unit-a: a batch of 1..6, one of 1..12 overlapping it (brought 7..12), then 13..15; unit-b: its
        # second journal (epoch 2) after a reinstall, and entries of epoch 1 with no batch row at all
        for batch_id, lo, hi, new in (("a1", 1, 6, 6), ("a2", 1, 12, 6), ("a3", 13, 15, 3)):
            Batch.objects.create(unit=a, epoch=1, batch_id=batch_id, first_seq=lo, last_seq=hi,
                                 last_hash=rows_a[hi - 1]["hash"], ingested_at=1.0, entries=new)
        Batch.objects.create(unit=b, epoch=2, batch_id="b1", first_seq=1, last_seq=3, last_hash=rows_b[2]["hash"],
                             ingested_at=1.0, entries=3)
        Entry.objects.bulk_create([Entry(unit=a, epoch=1, **row) for row in rows_a]
                                  + [Entry(unit=b, epoch=2, **row) for row in rows_b]
                                  + [Entry(unit=b, epoch=1, **row) for row in rows_b[:2]])
        old.get_model("office", "Nonce").objects.create(unit=a, nonce="f" * 32, seen_at=dt.datetime.now(dt.timezone.utc))
        charged_before = sorted((e.unit_id, e.epoch, e.seq, e.employee_id, e.charged_cents)
                                for e in Entry.objects.exclude(charged_cents=0))
    finally:
        call_command("migrate", "office", verbosity=0)  # the latest schema again, whatever happened

    from vendor_node.office.journal_store import stored_entries, verify_stored
    from vendor_node.office.models import Charge, JournalBatch, Unit as NewUnit, UnitNonce

    a, b = NewUnit.objects.get(unit_id="unit-a"), NewUnit.objects.get(unit_id="unit-b")
    assert sorted(Charge.objects.values_list("unit_id", "epoch", "seq", "employee_id", "charged_cents")) == \
        charged_before and len(charged_before) == 4 + 1
    expected_a = [e.as_dict() for e in first.journal.entries(0, 15)]
    assert stored_entries(a.pk, 1) == expected_a  # every field, prev_hash rebuilt
    assert verify_stored(a.pk, 1) == (15, None) and verify_stored(b.pk, 2) == (3, None)
    assert stored_entries(b.pk, 1) == [e.as_dict() for e in second.journal.entries(0, 2)]
    assert [(x.batch_id, x.entries) for x in JournalBatch.objects.filter(unit=a).order_by("id")] == \
        [("a1", 6), ("a2", 6), ("a3", 3)]
    assert JournalBatch.objects.get(unit=b, epoch=1).batch_id == "migrated-1-2"
    assert stored_entries(a.pk, 1, 5, 8) == expected_a[4:8]
    assert list(UnitNonce.objects.values_list("unit__unit_id", "nonce")) == [("unit-a", "f" * 32)]  # still refused
    first.close()
    second.close()
