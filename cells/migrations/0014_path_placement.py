"""Placement's common case as one server-side function (PostgreSQL only; SQLite keeps placement's Python path):
``cells_place_shared(region, instance, tried reefs)`` locks the roomiest reef of the region that nobody holds and that
has a free slot of every kind (read from the slot counters), takes its first free share and points the instance at
the reef and its roomiest pools — one round trip for the caller, no statement planned per call (planning the old
single statement cost more than running it), and its savepoint inside the server: the work runs in a block that is
rolled back when the reef cannot take the instance after all (its row lock goes with it, so a placement never holds
a reef it gave up on) or when a check constraint refuses an over-full reef or pool counted from a stale snapshot.

Returns one row (reef, database pool, compute pool, outcome): ``placed``; ``not here`` (that reef, nothing taken);
``stale`` (nothing taken: read again); ``none`` (no reef with room that nobody holds; nothing locked).

The rules are frozen here as they were (cells.placement keeps the same ones for the other paths; its tests cover
both): an active reef not dedicated to an instance, below its limit, in a region taking signups; available shared
pools with room, the roomiest; a reef with the most free instance slots first; the first free share by pool and slot.
A change of these rules needs a migration that replaces the function.

Also drops the single-column indexes on Instance.reef / database_pool / compute_pool (see there).
"""

import django.db.models.deletion
from django.db import migrations, models

POSTGRES_FORWARD = r"""
CREATE OR REPLACE FUNCTION cells_place_shared(
    p_region bigint, p_instance bigint, p_tried bigint[],
    OUT placed_reef bigint, OUT placed_database_pool bigint, OUT placed_compute_pool bigint, OUT outcome text
) AS $$
DECLARE
    v_pool bigint;
    v_share bigint;
    v_constraint text;
BEGIN
    outcome := 'none';
    BEGIN
        -- The roomiest reef nobody holds with a free slot of every kind, and its roomiest pools.
        SELECT r.id,
            (SELECT p.id FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'database'
             AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity
             ORDER BY p.capacity - p.slots_held DESC, p.id LIMIT 1),
            (SELECT p.id FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'compute'
             AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity
             ORDER BY p.capacity - p.slots_held DESC, p.id LIMIT 1)
        INTO placed_reef, placed_database_pool, placed_compute_pool
        FROM cells_reef r
        WHERE r.region_id = p_region AND r.status = 'active' AND r.dedicated_to_id IS NULL
          AND r.placed_instances < r.max_instances AND r.id <> ALL (p_tried)
          AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'database'
                      AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity)
          AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'compute'
                      AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity)
          AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'storage'
                      AND p.status = 'available' AND NOT p.dedicated AND p.shares_available > 0)
          AND EXISTS (SELECT 1 FROM cells_region g WHERE g.id = r.region_id AND g.status IN ('active'))
        ORDER BY r.max_instances - r.placed_instances DESC, r.id
        LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
        IF placed_reef IS NULL THEN
            RETURN;  -- no reef with room that nobody holds: nothing locked, nothing taken
        END IF;
        -- Its first free share nobody else holds, by pool then slot (available -> assigned: the share state
        -- machine's legal change), pool by pool so each look-up is one walk of index share_available_queue (only
        -- storage pools hold shares: trigger cells_share_slot_check).
        FOR v_pool IN SELECT p.id FROM cells_pool p
                      WHERE p.reef_id = placed_reef AND p.kind = 'storage' AND p.status = 'available'
                        AND NOT p.dedicated ORDER BY p.id LOOP
            UPDATE cells_share SET status = 'assigned', instance_id = p_instance
            WHERE status = 'available' AND id = (
                SELECT s.id FROM cells_share s WHERE s.pool_id = v_pool AND s.status = 'available'
                ORDER BY s.slot LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING id INTO v_share;
            EXIT WHEN v_share IS NOT NULL;
        END LOOP;
        IF v_share IS NULL THEN
            RAISE EXCEPTION 'reef % has no free share for instance %', placed_reef, p_instance USING ERRCODE = 'CH409';
        END IF;
        UPDATE cells_instance SET reef_id = placed_reef, database_pool_id = placed_database_pool,
            compute_pool_id = placed_compute_pool
        WHERE id = p_instance;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'instance % is gone', p_instance USING ERRCODE = 'CH409';
        END IF;
        outcome := 'placed';
    EXCEPTION
        WHEN SQLSTATE 'CH409' THEN
            outcome := 'not here';  -- the block is rolled back: the reef's lock goes with it
        WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
            IF v_constraint NOT IN ('reef_placed_within_limit', 'pool_held_within_capacity') THEN
                RAISE;
            END IF;
            placed_reef := NULL; placed_database_pool := NULL; placed_compute_pool := NULL;
            outcome := 'stale';
    END;
END $$ LANGUAGE plpgsql
-- Generic plans, made once per session: left to choose, the plan cache kept planning each call afresh (a custom
-- plan looked cheaper), which cost ten times the work itself; the generic plans walk the same indexes.
SET plan_cache_mode = force_generic_plan;
"""
POSTGRES_BACKWARD = "DROP FUNCTION IF EXISTS cells_place_shared(bigint, bigint, bigint[]);"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_BACKWARD, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0013_tally'),
    ]

    operations = [
        migrations.RunPython(forward, backward),
        # The (reef|database_pool|compute_pool, state) indexes lead with these columns: the single-column ones only
        # cost placement three more index writes.
        migrations.AlterField(
            model_name='instance',
            name='compute_pool',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='compute_instances', to='cells.pool'),
        ),
        migrations.AlterField(
            model_name='instance',
            name='database_pool',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='database_instances', to='cells.pool'),
        ),
        migrations.AlterField(
            model_name='instance',
            name='reef',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='instances', to='cells.reef'),
        ),
    ]
