# An issued bundle is made again from its version, digest and the ledger when asked for: its bytes (~100 KB
# for 500 employees, megabytes for 10,000, sealed templates among them) are no longer stored on every sync.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('office', '0007_lighter_entries_bundle_storage'),
    ]

    operations = [
        migrations.RemoveField(
            model_name='issuedbundle',
            name='data',
        ),
    ]
