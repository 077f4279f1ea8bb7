"""A database or compute pool's capacity cannot shrink below the instances placed on it.

Migration 0002 guards storage pools (a share's slot is below the capacity); this guards the other two kinds: an
update of ``capacity`` (or ``kind``) fails when more slot-holding instances (every state but decommissioned) sit
on the pool than the new capacity. PostgreSQL gets it here; SQLite from ``cells.sqlite_triggers``.
"""
from django.db import migrations

POSTGRES_FORWARD = """
CREATE OR REPLACE FUNCTION cells_pool_capacity_covers_instances() RETURNS trigger AS $$
DECLARE
    holding integer;
BEGIN
    IF NEW.kind = 'database' THEN
        SELECT count(*) INTO holding FROM cells_instance
            WHERE database_pool_id = NEW.id AND state <> 'decommissioned';
    ELSIF NEW.kind = 'compute' THEN
        SELECT count(*) INTO holding FROM cells_instance
            WHERE compute_pool_id = NEW.id AND state <> 'decommissioned';
    ELSE
        RETURN NEW;
    END IF;
    IF holding > NEW.capacity THEN
        RAISE EXCEPTION 'pool_capacity_covers_instances: pool % holds % instances, more than capacity %',
            NEW.id, holding, NEW.capacity USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cells_pool_capacity_covers_instances BEFORE UPDATE OF capacity, kind ON cells_pool
    FOR EACH ROW EXECUTE FUNCTION cells_pool_capacity_covers_instances();
"""
POSTGRES_BACKWARD = """
DROP TRIGGER IF EXISTS cells_pool_capacity_covers_instances ON cells_pool;
DROP FUNCTION IF EXISTS cells_pool_capacity_covers_instances();
"""


def _run(sql):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":  # SQLite: cells.sqlite_triggers
            schema_editor.execute(sql, params=None)

    return apply


class Migration(migrations.Migration):
    dependencies = [("cells", "0010_validated_text_and_config")]

    operations = [migrations.RunPython(_run(POSTGRES_FORWARD), _run(POSTGRES_BACKWARD))]
