"""Cross-table rules the database enforces with triggers (a CHECK cannot look at another table).

- a share belongs to a storage pool, and its slot is below that pool's capacity;
- a pool's capacity cannot shrink below a slot one of its shares uses.
PostgreSQL (production) gets them here. SQLite (the embedded default) gets the same rules from
``cells.sqlite_triggers`` after every migrate (a SQLite table rebuild breaks on triggers that name it).
A violation is an IntegrityError, like any other constraint.
"""
from django.db import migrations

POSTGRES_FORWARD = """
CREATE OR REPLACE FUNCTION cells_share_slot_check() RETURNS trigger AS $$
DECLARE
    pool_capacity integer;
    pool_kind varchar;
BEGIN
    SELECT capacity, kind INTO pool_capacity, pool_kind FROM cells_pool WHERE id = NEW.pool_id;
    IF pool_kind IS DISTINCT FROM 'storage' THEN
        RAISE EXCEPTION 'share_in_storage_pool: pool % is a % pool', NEW.pool_id, pool_kind
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.slot >= pool_capacity THEN
        RAISE EXCEPTION 'share_slot_below_capacity: slot % is not below capacity %', NEW.slot, pool_capacity
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cells_share_slot_check BEFORE INSERT OR UPDATE OF slot, pool_id ON cells_share
    FOR EACH ROW EXECUTE FUNCTION cells_share_slot_check();

CREATE OR REPLACE FUNCTION cells_pool_capacity_check() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM cells_share WHERE pool_id = NEW.id AND slot >= NEW.capacity) THEN
        RAISE EXCEPTION 'pool_capacity_covers_shares: a share of pool % uses a slot >= %', NEW.id, NEW.capacity
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cells_pool_capacity_check BEFORE UPDATE OF capacity ON cells_pool
    FOR EACH ROW EXECUTE FUNCTION cells_pool_capacity_check();
"""
POSTGRES_BACKWARD = """
DROP TRIGGER IF EXISTS cells_share_slot_check ON cells_share;
DROP FUNCTION IF EXISTS cells_share_slot_check();
DROP TRIGGER IF EXISTS cells_pool_capacity_check ON cells_pool;
DROP FUNCTION IF EXISTS cells_pool_capacity_check();
"""

def _run(statements_by_vendor):
    def apply(apps, schema_editor):
        statements = statements_by_vendor.get(schema_editor.connection.vendor)
        if statements is None:  # SQLite: cells.sqlite_triggers installs them around every migrate
            return
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement, params=None)

    return apply


class Migration(migrations.Migration):
    dependencies = [("cells", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES_FORWARD}),
            _run({"postgresql": POSTGRES_BACKWARD}),
        )
    ]
