"""Slot counters kept by the database: a reef's placed instances, a pool's held slots and available shares.

Triggers on cells_instance and cells_share change the counters in the transaction that changes the rows, so
placement, capacity and metrics read a counter instead of counting the fleet, and check constraints refuse an
over-full reef or pool whatever code writes. The data migration fills the counters from the rows (an existing
over-full reef or pool stops the migration: raise its limit first). SQLite gets the same triggers from
``cells.sqlite_triggers`` after every migrate.
"""

import django.db.models.expressions
from django.db import migrations, models

HOLDING = "'decommissioning', 'failed', 'pending', 'provisioning', 'running', 'stopped', 'upgrading'"
USED_SHARES = "'assigned', 'archiving', 'scrubbing'"

POSTGRES_FORWARD = f"""
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
CREATE TRIGGER cells_instance_slot_counters
    AFTER INSERT OR DELETE OR UPDATE OF state, reef_id, database_pool_id, compute_pool_id ON cells_instance
    FOR EACH ROW EXECUTE FUNCTION cells_instance_slot_counters();

CREATE OR REPLACE FUNCTION cells_share_slot_counters() RETURNS trigger AS $$
DECLARE
    old_pool bigint; old_used integer := 0; old_free integer := 0;
    new_pool bigint; new_used integer := 0; new_free integer := 0;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_pool := OLD.pool_id;
        old_used := (OLD.status IN ({USED_SHARES}))::integer;
        old_free := (OLD.status = 'available')::integer;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_pool := NEW.pool_id;
        new_used := (NEW.status IN ({USED_SHARES}))::integer;
        new_free := (NEW.status = 'available')::integer;
    END IF;
    IF old_pool IS NOT DISTINCT FROM new_pool THEN
        IF old_used <> new_used OR old_free <> new_free THEN
            UPDATE cells_pool SET slots_held = slots_held + new_used - old_used,
                                  shares_available = shares_available + new_free - old_free WHERE id = new_pool;
        END IF;
        RETURN NULL;
    END IF;
    IF old_used + old_free > 0 THEN
        UPDATE cells_pool SET slots_held = slots_held - old_used, shares_available = shares_available - old_free
            WHERE id = old_pool;
    END IF;
    IF new_used + new_free > 0 THEN
        UPDATE cells_pool SET slots_held = slots_held + new_used, shares_available = shares_available + new_free
            WHERE id = new_pool;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cells_share_slot_counters
    AFTER INSERT OR DELETE OR UPDATE OF status, pool_id ON cells_share
    FOR EACH ROW EXECUTE FUNCTION cells_share_slot_counters();
"""
POSTGRES_BACKWARD = """
DROP TRIGGER IF EXISTS cells_instance_slot_counters ON cells_instance;
DROP FUNCTION IF EXISTS cells_instance_slot_counters();
DROP TRIGGER IF EXISTS cells_share_slot_counters ON cells_share;
DROP FUNCTION IF EXISTS cells_share_slot_counters();
"""
# The counters from the rows (frozen here: the states as they were when the counters came in).
FILL = [
    f"""UPDATE cells_reef SET placed_instances = (SELECT COUNT(*) FROM cells_instance i
        WHERE i.reef_id = cells_reef.id AND i.state IN ({HOLDING}))""",
    f"""UPDATE cells_pool SET
        slots_held = (SELECT COUNT(*) FROM cells_instance i WHERE i.state IN ({HOLDING})
                      AND (i.database_pool_id = cells_pool.id OR i.compute_pool_id = cells_pool.id))
                   + (SELECT COUNT(*) FROM cells_share s WHERE s.pool_id = cells_pool.id AND s.status IN ({USED_SHARES})),
        shares_available = (SELECT COUNT(*) FROM cells_share s WHERE s.pool_id = cells_pool.id
                            AND s.status = 'available')""",
]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # SQLite: cells.sqlite_triggers, after every migrate
        schema_editor.execute(POSTGRES_FORWARD, params=None)
    for statement in FILL:
        schema_editor.execute(statement, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_BACKWARD, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0008_operation_cancelled'),
    ]

    operations = [
        migrations.AddField(
            model_name='pool',
            name='shares_available',
            field=models.PositiveIntegerField(default=0, editable=False, help_text='Available shares of a storage pool (a counter).'),
        ),
        migrations.AddField(
            model_name='pool',
            name='slots_held',
            field=models.PositiveIntegerField(default=0, editable=False, help_text='Slots in use (a counter): slot-holding instances on a database or compute pool; assigned, archiving or scrubbing shares of a storage pool.'),
        ),
        migrations.AddField(
            model_name='reef',
            name='placed_instances',
            field=models.PositiveIntegerField(default=0, editable=False, help_text='Slot-holding instances placed in this reef (a counter).'),
        ),
        migrations.RunPython(forward, backward),
        migrations.AddIndex(
            model_name='instance',
            index=models.Index(models.OrderBy(models.F('created_at'), descending=True), models.OrderBy(models.F('id'), descending=True), name='instance_newest_first'),
        ),
        migrations.AddIndex(
            model_name='reef',
            index=models.Index(models.F('region'), models.OrderBy(django.db.models.expressions.CombinedExpression(models.F('max_instances'), '-', models.F('placed_instances')), descending=True), models.F('id'), condition=models.Q(('status', 'active')), name='reef_roomiest_active'),
        ),
        migrations.AddConstraint(
            model_name='pool',
            constraint=models.CheckConstraint(condition=models.Q(('slots_held__lte', models.F('capacity'))), name='pool_held_within_capacity'),
        ),
        migrations.AddConstraint(
            model_name='reef',
            constraint=models.CheckConstraint(condition=models.Q(('placed_instances__lte', models.F('max_instances'))), name='reef_placed_within_limit'),
        ),
    ]
