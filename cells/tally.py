"""Fleet counts kept by the database, so ``/metrics`` reads a few hundred rows whatever the fleet's size.

Triggers on ``cells_instance`` and ``cells_operation`` (migration 0013 on PostgreSQL, ``cells.sqlite_triggers`` on
SQLite) append signed deltas to ``cells_tally`` in the transaction that changes a row: an instance's state and
region (family ``instances``), an operation's kind and state (``operations``), and a finished operation's duration
bucket and seconds (``durations``: the buckets of ``DURATION_BUCKETS``, -1 past the last). Appending never waits
for another writer — no hot counter row serialises signups or workers. ``tally_read`` folds the deltas into one
row per key (a ``DELETE … RETURNING`` and one ``INSERT``, exact under concurrent writers and folds) and returns the
sums; ``tally_drift`` compares them with a recount of the rows (the reconciler's check), ``tally_refill`` resets
them from the rows.
"""
from __future__ import annotations

from collections import defaultdict

from django.db import connection, transaction

from cells.choices import OPERATION_FINAL_STATES

# Upper bounds of the operation duration histogram's buckets, in seconds: a stop takes seconds, a gateway hours.
# Migration 0013 keeps its own copy in the triggers: change both together (a test compares them).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600)
FINAL_SQL = ", ".join(f"'{state}'" for state in sorted(str(s) for s in OPERATION_FINAL_STATES))


def bucket_sql(seconds: str) -> str:
    """SQL for the index of the first bucket holding ``seconds`` (an SQL expression), -1 past the last."""
    whens = " ".join(f"WHEN {seconds} <= {bound} THEN {index}" for index, bound in enumerate(DURATION_BUCKETS))
    return f"CASE {whens} ELSE -1 END"


def seconds_sql(vendor: str, row: str) -> str:
    """SQL for ``row``'s duration in seconds (finished_at − started_at)."""
    if vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({row}.finished_at - {row}.started_at))"
    return f"((julianday({row}.finished_at) - julianday({row}.started_at)) * 86400.0)"


def recount_sql(vendor: str) -> str:
    """The tallies recounted from the rows (family, a, b, bucket, n, seconds): what the deltas must sum to."""
    seconds = seconds_sql(vendor, "o")
    return (
        "SELECT 'instances', CAST(region_id AS TEXT), state, -1, COUNT(*), 0.0 FROM cells_instance "
        "GROUP BY region_id, state "
        "UNION ALL SELECT 'operations', kind, state, -1, COUNT(*), 0.0 FROM cells_operation GROUP BY kind, state "
        f"UNION ALL SELECT 'durations', o.kind, o.state, {bucket_sql(seconds)}, COUNT(*), SUM({seconds}) "
        f"FROM cells_operation o WHERE o.state IN ({FINAL_SQL}) AND o.started_at IS NOT NULL "
        f"AND o.finished_at IS NOT NULL GROUP BY o.kind, o.state, {bucket_sql(seconds)}"
    )


def tally_read() -> dict[tuple[str, str, str, int], tuple[int, float]]:
    """Every tally, folded: ``{(family, a, b, bucket): (count, seconds)}``, keys whose count is 0 left out.

    Folds as it reads: the deltas this call deletes are summed and written back as one row per key, in one
    transaction, so the table stays as small as the number of keys plus the changes since the last read."""
    sums: dict = defaultdict(lambda: [0, 0.0])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM cells_tally RETURNING family, a, b, bucket, n, seconds")
        for family, a, b, bucket, n, seconds in cursor.fetchall():
            entry = sums[(family, a, b, bucket)]
            entry[0] += n
            entry[1] += seconds
        kept = [(*key, n, seconds) for key, (n, seconds) in sums.items() if n]
        if kept:
            cursor.execute(
                "INSERT INTO cells_tally (family, a, b, bucket, n, seconds) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(kept)),
                [value for row in kept for value in row],
            )
    return {key: (n, seconds) for key, (n, seconds) in sums.items() if n}


def tally_drift() -> list[str]:
    """Each tally that disagrees with a recount of its rows, described (empty when all agree)."""
    kept = tally_read()
    with connection.cursor() as cursor:
        cursor.execute(recount_sql(connection.vendor))
        counted = {(family, a, b, bucket): (n, seconds) for family, a, b, bucket, n, seconds in cursor.fetchall()}
    drift = []
    for key in sorted(set(kept) | set(counted), key=str):
        (n, seconds), (m, recounted) = kept.get(key, (0, 0.0)), counted.get(key, (0, 0.0))
        recounted = float(recounted or 0.0)
        if n != m or abs(seconds - recounted) > 0.01 * max(n, 1):
            drift.append(f"tally {'/'.join(map(str, key))}: kept {n} ({seconds:.1f}s), the rows say {m}")
    return drift


def tally_refill() -> None:
    """Set every tally from its rows (after a bulk load with the triggers off, or to repair drift): one transaction,
    so a concurrent writer's delta lands before or after it, never lost."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE cells_tally IN EXCLUSIVE MODE")
        cursor.execute("DELETE FROM cells_tally")
        cursor.execute(f"INSERT INTO cells_tally (family, a, b, bucket, n, seconds) {recount_sql(connection.vendor)}")
