"""The slot counters (``Reef.placed_instances``, ``Pool.slots_held``, ``Pool.shares_available``) against the rows.

The database keeps the counters itself, in the transaction that changes an instance or a share (triggers: migration
0010 on PostgreSQL, ``cells.sqlite_triggers`` on SQLite), and refuses a change that would put a reef above
``max_instances`` or a pool above its capacity (check constraints). Placement, capacity and metrics read the
counters instead of counting the fleet. These functions recount from the rows: ``counters_drift`` reports a
counter that disagrees (the reconciler calls it), ``counters_refill`` sets every counter from the rows.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from cells.choices import SLOT_HOLDING_INSTANCE_STATES, ShareStatus

HOLDING_SQL = ", ".join(f"'{state}'" for state in sorted(str(s) for s in SLOT_HOLDING_INSTANCE_STATES))
USED_SHARES_SQL = ", ".join(
    f"'{status}'" for status in (ShareStatus.ASSIGNED, ShareStatus.ARCHIVING, ShareStatus.SCRUBBING)
)

# Every reef and pool with its counter and the count from the rows: set-based, one pass over each table.
_REEF_COUNTS = f"""
SELECT r.id, r.placed_instances, COALESCE(c.n, 0)
FROM cells_reef r LEFT JOIN (
    SELECT reef_id, COUNT(*) AS n FROM cells_instance WHERE reef_id IS NOT NULL AND state IN ({HOLDING_SQL})
    GROUP BY reef_id
) c ON c.reef_id = r.id
"""
_POOL_COUNTS = f"""
SELECT p.id, p.slots_held, p.shares_available,
       COALESCE(d.n, 0) + COALESCE(k.n, 0) + COALESCE(s.used, 0), COALESCE(s.available, 0)
FROM cells_pool p
LEFT JOIN (SELECT database_pool_id AS pool_id, COUNT(*) AS n FROM cells_instance
           WHERE database_pool_id IS NOT NULL AND state IN ({HOLDING_SQL}) GROUP BY database_pool_id) d
       ON d.pool_id = p.id
LEFT JOIN (SELECT compute_pool_id AS pool_id, COUNT(*) AS n FROM cells_instance
           WHERE compute_pool_id IS NOT NULL AND state IN ({HOLDING_SQL}) GROUP BY compute_pool_id) k
       ON k.pool_id = p.id
LEFT JOIN (SELECT pool_id, SUM(CASE WHEN status IN ({USED_SHARES_SQL}) THEN 1 ELSE 0 END) AS used,
                  SUM(CASE WHEN status = 'available' THEN 1 ELSE 0 END) AS available
           FROM cells_share GROUP BY pool_id) s
       ON s.pool_id = p.id
"""


@dataclass(frozen=True)
class Drift:
    """One counter that disagrees with the rows it counts."""

    table: str
    row_id: int
    counter: str
    kept: int
    counted: int

    def __str__(self):
        return f"{self.table} {self.row_id}: {self.counter} is {self.kept}, the rows say {self.counted}"


def counters_drift() -> list[Drift]:
    """Every slot counter that disagrees with a recount of its rows (empty when all agree). Two queries."""
    drift = []
    with connection.cursor() as cursor:
        cursor.execute(_REEF_COUNTS)
        for reef_id, kept, counted in cursor.fetchall():
            if kept != counted:
                drift.append(Drift("reef", reef_id, "placed_instances", kept, counted))
        cursor.execute(_POOL_COUNTS)
        for pool_id, held, available, counted_held, counted_available in cursor.fetchall():
            if held != counted_held:
                drift.append(Drift("pool", pool_id, "slots_held", held, counted_held))
            if available != counted_available:
                drift.append(Drift("pool", pool_id, "shares_available", available, counted_available))
    return drift


def counters_refill() -> None:
    """Set every counter from its rows (after a bulk load with the triggers off, or to repair drift).

    Refused by the database (IntegrityError) when the rows already overfill a reef or a pool."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE cells_reef SET placed_instances = c.counted FROM ({_REEF_COUNTS}) AS c(id, kept, counted) "
            "WHERE cells_reef.id = c.id AND c.kept <> c.counted"
        )
        cursor.execute(
            f"UPDATE cells_pool SET slots_held = c.held, shares_available = c.available "
            f"FROM ({_POOL_COUNTS}) AS c(id, kept_held, kept_available, held, available) "
            "WHERE cells_pool.id = c.id AND (c.kept_held <> c.held OR c.kept_available <> c.available)"
        )
