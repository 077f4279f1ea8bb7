"""The share/pool rules and the slot counters as SQLite triggers, for the embedded default database.

On PostgreSQL migrations 0002 and 0010 install them for good. SQLite rebuilds a table to alter it, and a trigger
that names the table being rebuilt breaks that rebuild, so on SQLite the triggers are dropped before
every ``migrate`` and created again after it (``cells.apps``); between migrations they always hold.
"""
from django.db import connections

from cells.counters import HOLDING_SQL, USED_SHARES_SQL

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
]

# The slot counters (see cells.counters): the old row's slots are given back before the new row's are taken.
def _instance_slots(sign: str, row: str) -> str:
    return (
        f"UPDATE cells_reef SET placed_instances = placed_instances {sign} 1 "
        f"WHERE {row}.state IN ({HOLDING_SQL}) AND id = {row}.reef_id; "
        f"UPDATE cells_pool SET slots_held = slots_held {sign} 1 "
        f"WHERE {row}.state IN ({HOLDING_SQL}) AND id IN ({row}.database_pool_id, {row}.compute_pool_id);"
    )


def _share_slots(sign: str, row: str) -> str:
    return (
        f"UPDATE cells_pool SET slots_held = slots_held {sign} ({row}.status IN ({USED_SHARES_SQL})), "
        f"shares_available = shares_available {sign} ({row}.status = 'available') WHERE id = {row}.pool_id;"
    )


CREATE += [
    "CREATE TRIGGER IF NOT EXISTS cells_instance_counters_insert AFTER INSERT ON cells_instance FOR EACH ROW "
    f"BEGIN {_instance_slots('+', 'NEW')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_instance_counters_delete AFTER DELETE ON cells_instance FOR EACH ROW "
    f"BEGIN {_instance_slots('-', 'OLD')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_instance_counters_update AFTER UPDATE OF state, reef_id, database_pool_id, "
    f"compute_pool_id ON cells_instance FOR EACH ROW BEGIN {_instance_slots('-', 'OLD')} "
    f"{_instance_slots('+', 'NEW')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_share_counters_insert AFTER INSERT ON cells_share FOR EACH ROW "
    f"BEGIN {_share_slots('+', 'NEW')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_share_counters_delete AFTER DELETE ON cells_share FOR EACH ROW "
    f"BEGIN {_share_slots('-', 'OLD')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_share_counters_update AFTER UPDATE OF status, pool_id ON cells_share "
    f"FOR EACH ROW BEGIN {_share_slots('-', 'OLD')} {_share_slots('+', 'NEW')} END;",
]
DROP = [
    "DROP TRIGGER IF EXISTS cells_instance_counters_insert",
    "DROP TRIGGER IF EXISTS cells_instance_counters_delete",
    "DROP TRIGGER IF EXISTS cells_instance_counters_update",
    "DROP TRIGGER IF EXISTS cells_share_counters_insert",
    "DROP TRIGGER IF EXISTS cells_share_counters_delete",
    "DROP TRIGGER IF EXISTS cells_share_counters_update",
    "DROP TRIGGER IF EXISTS cells_share_slot_check_insert",
    "DROP TRIGGER IF EXISTS cells_share_slot_check_update",
    "DROP TRIGGER IF EXISTS cells_pool_capacity_check",
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
    if {"cells_pool", "cells_share", "cells_instance", "cells_reef"} <= tables:
        with connection.cursor() as cursor:
            for statement in CREATE:
                cursor.execute(statement)
