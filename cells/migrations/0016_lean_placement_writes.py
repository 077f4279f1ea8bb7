"""Fewer writes per placement, the same rules.

A placement changes one instance, one share, its reef and two pools; every change that moves an indexed column
writes an entry in every index of that table. This migration drops the single-column indexes nothing needs (reef
slug and status, share status and pool — the composite and partial indexes serve those look-ups — and the LIKE twin
of instance state, which nothing matches by prefix: the state index becomes a plain one), and has the instance
counter trigger give back and take pool slots in one UPDATE instead of one per pool, skipping the statements that
would touch no row (a NULL reef or pool). The counters, the check constraints that refuse an over-full reef or pool,
and the order of give-back before take are unchanged (cells.counters; the SQLite triggers already took both pool
slots in one statement).
"""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

HOLDING = "'decommissioning', 'failed', 'pending', 'provisioning', 'running', 'stopped', 'upgrading'"

POSTGRES_FORWARD = f"""
CREATE OR REPLACE FUNCTION cells_instance_slot_counters() RETURNS trigger AS $$
DECLARE
    old_reef bigint; old_database bigint; old_compute bigint;
    new_reef bigint; new_database bigint; new_compute bigint;
    give bigint[] := '{{}}'; take bigint[] := '{{}}';
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state IN ({HOLDING}) THEN
        old_reef := OLD.reef_id; old_database := OLD.database_pool_id; old_compute := OLD.compute_pool_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state IN ({HOLDING}) THEN
        new_reef := NEW.reef_id; new_database := NEW.database_pool_id; new_compute := NEW.compute_pool_id;
    END IF;
    IF old_reef IS DISTINCT FROM new_reef THEN
        IF old_reef IS NOT NULL THEN
            UPDATE cells_reef SET placed_instances = placed_instances - 1 WHERE id = old_reef;
        END IF;
        IF new_reef IS NOT NULL THEN
            UPDATE cells_reef SET placed_instances = placed_instances + 1 WHERE id = new_reef;
        END IF;
    END IF;
    IF old_database IS DISTINCT FROM new_database THEN
        IF old_database IS NOT NULL THEN give := give || old_database; END IF;
        IF new_database IS NOT NULL THEN take := take || new_database; END IF;
    END IF;
    IF old_compute IS DISTINCT FROM new_compute THEN
        IF old_compute IS NOT NULL THEN give := give || old_compute; END IF;
        IF new_compute IS NOT NULL THEN take := take || new_compute; END IF;
    END IF;
    -- Every pool slot given back or taken, in one statement (a pool in both gives and takes: no change).
    IF cardinality(give) + cardinality(take) > 0 THEN
        UPDATE cells_pool SET slots_held = slots_held + (id = ANY (take))::integer - (id = ANY (give))::integer
        WHERE id = ANY (give || take);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
"""
# Migration 0009's function, as it was.
POSTGRES_BACKWARD = f"""
CREATE OR REPLACE FUNCTION cells_instance_slot_counters() RETURNS trigger AS $$
DECLARE
    old_reef bigint; old_database bigint; old_compute bigint;
    new_reef bigint; new_database bigint; new_compute bigint;
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state IN ({HOLDING}) THEN
        old_reef := OLD.reef_id; old_database := OLD.database_pool_id; old_compute := OLD.compute_pool_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state IN ({HOLDING}) THEN
        new_reef := NEW.reef_id; new_database := NEW.database_pool_id; new_compute := NEW.compute_pool_id;
    END IF;
    IF old_reef IS DISTINCT FROM new_reef THEN
        UPDATE cells_reef SET placed_instances = placed_instances - 1 WHERE id = old_reef;
        UPDATE cells_reef SET placed_instances = placed_instances + 1 WHERE id = new_reef;
    END IF;
    IF old_database IS DISTINCT FROM new_database THEN
        UPDATE cells_pool SET slots_held = slots_held - 1 WHERE id = old_database;
        UPDATE cells_pool SET slots_held = slots_held + 1 WHERE id = new_database;
    END IF;
    IF old_compute IS DISTINCT FROM new_compute THEN
        UPDATE cells_pool SET slots_held = slots_held - 1 WHERE id = old_compute;
        UPDATE cells_pool SET slots_held = slots_held + 1 WHERE id = new_compute;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_BACKWARD, params=None)



class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0015_retire_operation_kind'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(forward, backward),
        migrations.AlterField(
            model_name='instance',
            name='state',
            field=models.CharField(choices=[('pending', 'Pending'), ('provisioning', 'Provisioning'), ('running', 'Running'), ('upgrading', 'Upgrading'), ('stopped', 'Stopped'), ('decommissioning', 'Decommissioning'), ('decommissioned', 'Decommissioned'), ('failed', 'Failed')], default='pending', max_length=16),
        ),
        migrations.AlterField(
            model_name='reef',
            name='slug',
            field=models.SlugField(db_index=False),
        ),
        migrations.AlterField(
            model_name='reef',
            name='status',
            field=models.CharField(choices=[('provisioning', 'Provisioning'), ('active', 'Active'), ('draining', 'Draining'), ('broken', 'Broken'), ('retired', 'Retired')], default='provisioning', max_length=12),
        ),
        migrations.AlterField(
            model_name='share',
            name='pool',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='shares', to='cells.pool'),
        ),
        migrations.AlterField(
            model_name='share',
            name='status',
            field=models.CharField(choices=[('available', 'Available'), ('assigned', 'Assigned'), ('archiving', 'Archiving'), ('scrubbing', 'Scrubbing'), ('failed', 'Failed'), ('retired', 'Retired')], default='available', max_length=10),
        ),
        migrations.AddIndex(
            model_name='instance',
            index=models.Index(fields=['state'], name='instance_state'),
        ),
    ]
