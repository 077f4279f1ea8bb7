"""The share/pool rules as SQLite triggers, for the embedded default database.

On PostgreSQL migration 0002 installs them for good. SQLite rebuilds a table to alter it, and a trigger
that names the table being rebuilt breaks that rebuild, so on SQLite the triggers are dropped before
every ``migrate`` and created again after it (``cells.apps``); between migrations they always hold.
"""
from django.db import connections

_SHARE_BODY = """
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: share_in_storage_pool')
        WHERE (SELECT kind FROM cells_pool WHERE id = NEW.pool_id) IS NOT 'storage';
    SELECT RAISE(ABORT, 'CHECK constraint failed: share_slot_below_capacity')
        WHERE NEW.slot >= (SELECT capacity FROM cells_pool WHERE id = NEW.pool_id);
END;
"""
CREATE = [
    "CREATE TRIGGER IF NOT EXISTS cells_share_slot_check_insert BEFORE INSERT ON cells_share FOR EACH ROW"
    + _SHARE_BODY,
    "CREATE TRIGGER IF NOT EXISTS cells_share_slot_check_update BEFORE UPDATE OF slot, pool_id ON cells_share "
    "FOR EACH ROW" + _SHARE_BODY,
    """CREATE TRIGGER IF NOT EXISTS cells_pool_capacity_check BEFORE UPDATE OF capacity ON cells_pool FOR EACH ROW
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: pool_capacity_covers_shares')
        WHERE EXISTS (SELECT 1 FROM cells_share WHERE pool_id = NEW.id AND slot >= NEW.capacity);
END;""",
    """CREATE TRIGGER IF NOT EXISTS cells_pool_capacity_covers_instances BEFORE UPDATE OF capacity, kind ON cells_pool
FOR EACH ROW
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: pool_capacity_covers_instances')
        WHERE (NEW.kind = 'database' AND (SELECT count(*) FROM cells_instance
                 WHERE database_pool_id = NEW.id AND state <> 'decommissioned') > NEW.capacity)
           OR (NEW.kind = 'compute' AND (SELECT count(*) FROM cells_instance
                 WHERE compute_pool_id = NEW.id AND state <> 'decommissioned') > NEW.capacity);
END;""",
]
DROP = [
    "DROP TRIGGER IF EXISTS cells_share_slot_check_insert",
    "DROP TRIGGER IF EXISTS cells_share_slot_check_update",
    "DROP TRIGGER IF EXISTS cells_pool_capacity_check",
    "DROP TRIGGER IF EXISTS cells_pool_capacity_covers_instances",
]


def _sqlite(using: str):
    connection = connections[using]
    return connection if connection.vendor == "sqlite" else None


def drop_before_migrate(sender, using="default", **kwargs):
    connection = _sqlite(using)
    if connection is None:
        return
    with connection.cursor() as cursor:
        for statement in DROP:
            cursor.execute(statement)


def create_after_migrate(sender, using="default", **kwargs):
    connection = _sqlite(using)
    if connection is None:
        return
    tables = set(connection.introspection.table_names())
    if {"cells_pool", "cells_share", "cells_instance"} <= tables:
        with connection.cursor() as cursor:
            for statement in CREATE:
                cursor.execute(statement)
