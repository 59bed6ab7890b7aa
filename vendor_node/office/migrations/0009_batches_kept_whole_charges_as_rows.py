# Each ingested batch is kept once, as the unit sent it, and only the charges are rows: a night's upload
# wrote 600 entry rows (each with its hash and session id, under a unique index) for the 200 the ledger and the
# pages read, and that COPY was the largest database cost of the unit API (scripts/bench_office.py).
# An existing office's entries move into their batches' documents (every field, the hash chain rebuilt
# from the stored hashes) and its charges into Charge rows: nothing is lost (tests/test_office_migration.py).
# The unit API's inserts (nonces, batches, issued bundles, heartbeats) no longer run a foreign-key check each:
# units are never deleted (deactivated), and Django still cascades or protects as the models say. Charges and
# nonces are keyed by what identifies them ((unit, epoch, seq), (unit, nonce)): no surrogate id, sequence or
# index of it; the nonces of the last minutes are copied, so they stay refused.

import json

import django.db.models.deletion
from django.db import migrations, models

from ._toast import cheap_to_store

MIGRATED_FORMAT = "vendor-node-office-entries"  # journal_store.MIGRATED_FORMAT
GENESIS_HASH = "0" * 64
_FIELDS = ("seq", "ts_us", "kind", "session_id", "employee_id", "item", "amount_cents", "detail", "hash",
           "charged_cents")


def _document(unit_id: str, epoch: int, entries: list[dict]) -> bytes:
    return json.dumps({"format": MIGRATED_FORMAT, "unit_id": unit_id, "epoch": epoch,
                       "note": "entries ingested before migration 0009, as the office held them (the signed "
                               "upload was not kept then); their hash chain still verifies",
                       "entries": entries}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entries_into_batches(apps, schema_editor):
    """Per unit and journal epoch: each entry into the document of the first batch covering its seq (the
    batch that brought it), or of a batch made for it when none does; every charge (charged_cents != 0, as
    the ledger counted them) a Charge row."""
    Entry = apps.get_model("office", "JournalEntry")
    Batch = apps.get_model("office", "JournalBatch")
    Charge = apps.get_model("office", "Charge")
    Unit = apps.get_model("office", "Unit")
    keys = Entry.objects.values_list("unit_id", "epoch").distinct().order_by("unit_id", "epoch")
    for unit_pk, epoch in list(keys):
        unit_id = Unit.objects.filter(pk=unit_pk).values_list("unit_id", flat=True).first() or str(unit_pk)
        rows = [dict(zip(_FIELDS, row)) for row in Entry.objects.filter(unit_id=unit_pk, epoch=epoch)
                .order_by("seq").values_list(*_FIELDS)]
        hashes = {row["seq"]: row["hash"] for row in rows}
        entries = []
        for row in rows:
            charged = row.pop("charged_cents")
            prev = GENESIS_HASH if row["seq"] == 1 else hashes.get(row["seq"] - 1)
            entries.append(({**row, "prev_hash": prev}, charged))
        Charge.objects.bulk_create([
            Charge(unit_id=unit_pk, epoch=epoch, seq=e["seq"], ts_us=e["ts_us"], kind=e["kind"],
                   employee_id=e["employee_id"], item=e["item"], charged_cents=charged)
            for e, charged in entries if charged], batch_size=2000)
        done = 0  # entries placed so far (they are in seq order; a batch's new entries follow the last placed)
        for batch in Batch.objects.filter(unit_id=unit_pk, epoch=epoch).order_by("id"):
            mine = []
            while done < len(entries) and batch.first_seq <= entries[done][0]["seq"] <= batch.last_seq:
                mine.append(entries[done][0])
                done += 1
            batch.entries = len(mine)
            batch.document = _document(unit_id, epoch, mine)
            batch.save(update_fields=["entries", "document"])
        if done < len(entries):  # entries no batch row covers (never made by an ingest): kept all the same
            rest = [e for e, _ in entries[done:]]
            Batch.objects.create(unit_id=unit_pk, epoch=epoch, batch_id=f"migrated-{rest[0]['seq']}-{rest[-1]['seq']}",
                                 first_seq=rest[0]["seq"], last_seq=rest[-1]["seq"], last_hash=rest[-1]["hash"],
                                 ingested_at=0.0, entries=len(rest), document=_document(unit_id, epoch, rest))


def copy_nonces(apps, schema_editor):
    """The nonces of the last minutes stay refused: copied into the table keyed by (unit, nonce)."""
    Old, New = apps.get_model("office", "Nonce"), apps.get_model("office", "UnitNonce")
    New.objects.bulk_create([New(unit_id=unit_pk, nonce=nonce, seen_at=seen_at) for unit_pk, nonce, seen_at in
                             Old.objects.values_list("unit_id", "nonce", "seen_at")], batch_size=2000)


class Migration(migrations.Migration):

    dependencies = [
        ('office', '0008_issued_bundles_by_digest'),
    ]

    operations = [
        migrations.AlterField(
            model_name='journalbatch',
            name='unit',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, to='office.unit'),
        ),
        migrations.AlterField(
            model_name='issuedbundle',
            name='unit',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, to='office.unit'),
        ),
        migrations.AlterField(
            model_name='heartbeatrecord',
            name='unit',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, related_name='heartbeats', to='office.unit'),
        ),
        migrations.AddField(
            model_name='journalbatch',
            name='document',
            field=models.BinaryField(null=True),
        ),
        migrations.CreateModel(
            name='Charge',
            fields=[
                ('pk', models.CompositePrimaryKey('unit', 'epoch', 'seq', blank=True, editable=False, primary_key=True, serialize=False)),
                ('epoch', models.IntegerField(default=1)),
                ('seq', models.BigIntegerField()),
                ('ts_us', models.BigIntegerField()),
                ('kind', models.CharField(max_length=32)),
                ('employee_id', models.CharField(blank=True, max_length=64, null=True)),
                ('item', models.CharField(blank=True, max_length=64, null=True)),
                ('charged_cents', models.BigIntegerField()),
                ('unit', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, to='office.unit')),
            ],
            options={
                'indexes': [models.Index(fields=['employee_id'], name='charge_by_employee')],
            },
        ),
        migrations.RunPython(entries_into_batches, migrations.RunPython.noop),
        migrations.DeleteModel(
            name='JournalEntry',
        ),
        migrations.RunPython(cheap_to_store("JournalBatch", "document"), migrations.RunPython.noop),
        migrations.CreateModel(
            name='UnitNonce',
            fields=[
                ('pk', models.CompositePrimaryKey('unit', 'nonce', blank=True, editable=False, primary_key=True, serialize=False)),
                ('nonce', models.CharField(max_length=32)),
                ('seen_at', models.DateTimeField()),
                ('unit', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, to='office.unit')),
            ],
            options={
                'indexes': [models.Index(fields=['seen_at'], name='unit_nonce_seen_at')],
            },
        ),
        migrations.RunPython(copy_nonces, migrations.RunPython.noop),
        migrations.DeleteModel(
            name='Nonce',
        ),
        migrations.AlterField(
            model_name='chargepending',
            name='charges',
            field=models.JSONField(),
        ),
    ]
