"""The share/pool rules and the slot counters as SQLite triggers, for the embedded default database.

On PostgreSQL migrations 0002 and 0010 install them for good. SQLite rebuilds a table to alter it, and a trigger
that names the table being rebuilt breaks that rebuild, so on SQLite the triggers are dropped before
every ``migrate`` and created again after it (``cells.apps``); between migrations they always hold.
"""
from django.db import connections

from cells.counters import HOLDING_SQL, USED_SHARES_SQL
from cells.tally import FINAL_SQL, bucket_sql, seconds_sql

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


# The fleet tallies (see cells.tally): signed deltas appended in the changing transaction.
def _instance_tally(sign: str, row: str) -> str:
    return (
        "INSERT INTO cells_tally (family, a, b, bucket, n, seconds) "
        f"VALUES ('instances', CAST({row}.region_id AS TEXT), {row}.state, -1, {sign}1, 0);"
    )


def _operation_tally(sign: str, row: str, only_if_changed: bool = False) -> str:
    changed = " WHERE OLD.kind IS NOT NEW.kind OR OLD.state IS NOT NEW.state" if only_if_changed else ""
    seconds = seconds_sql("sqlite", row)
    return (
        "INSERT INTO cells_tally (family, a, b, bucket, n, seconds) "
        f"SELECT 'operations', {row}.kind, {row}.state, -1, {sign}1, 0{changed}; "
        "INSERT INTO cells_tally (family, a, b, bucket, n, seconds) "
        f"SELECT 'durations', {row}.kind, {row}.state, {bucket_sql(seconds)}, {sign}1, {sign}{seconds} "
        f"WHERE {row}.state IN ({FINAL_SQL}) AND {row}.started_at IS NOT NULL AND {row}.finished_at IS NOT NULL;"
    )


CREATE += [
    "CREATE TRIGGER IF NOT EXISTS cells_instance_tally_insert AFTER INSERT ON cells_instance FOR EACH ROW "
    f"BEGIN {_instance_tally('+', 'NEW')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_instance_tally_delete AFTER DELETE ON cells_instance FOR EACH ROW "
    f"BEGIN {_instance_tally('-', 'OLD')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_instance_tally_update AFTER UPDATE OF state, region_id ON cells_instance "
    "FOR EACH ROW WHEN OLD.state IS NOT NEW.state OR OLD.region_id IS NOT NEW.region_id "
    f"BEGIN {_instance_tally('-', 'OLD')} {_instance_tally('+', 'NEW')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_operation_tally_insert AFTER INSERT ON cells_operation FOR EACH ROW "
    f"BEGIN {_operation_tally('+', 'NEW')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_operation_tally_delete AFTER DELETE ON cells_operation FOR EACH ROW "
    f"BEGIN {_operation_tally('-', 'OLD')} END;",
    "CREATE TRIGGER IF NOT EXISTS cells_operation_tally_update AFTER UPDATE OF kind, state, started_at, finished_at "
    f"ON cells_operation FOR EACH ROW BEGIN {_operation_tally('-', 'OLD', True)} "
    f"{_operation_tally('+', 'NEW', True)} END;",
]
DROP = [
    "DROP TRIGGER IF EXISTS cells_instance_tally_insert",
    "DROP TRIGGER IF EXISTS cells_instance_tally_delete",
    "DROP TRIGGER IF EXISTS cells_instance_tally_update",
    "DROP TRIGGER IF EXISTS cells_operation_tally_insert",
    "DROP TRIGGER IF EXISTS cells_operation_tally_delete",
    "DROP TRIGGER IF EXISTS cells_operation_tally_update",
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
    if {"cells_pool", "cells_share", "cells_instance", "cells_reef", "cells_operation", "cells_tally"} <= tables:
        with connection.cursor() as cursor:
            for statement in CREATE:
                cursor.execute(statement)
