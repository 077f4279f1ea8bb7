"""Placement's server-side function walks the region's reefs one at a time, roomiest first, instead of asking for the
roomiest reef that fits in one statement.

Migration 0014's single statement left the plan to PostgreSQL, which sorted every reef of the region whenever the
region was small enough for a sort to look cheap (a hundred reefs): each reef's three pool checks ran before the
sort, and placement cost 1.7 ms at 10,000 instances against 1.1 ms at 1,000 and at 100,000 (bench/fleet.py). Now one
statement takes the next candidate along index reef_roomiest_active (``LIMIT 1``: no sort, whatever the region's
size) and a second locks it (``FOR UPDATE SKIP LOCKED``) only if it still has room and a free slot of every kind;
a reef held by another placement or without room is passed and the next one taken. The common case is one of each.

The rules are those of 0014, unchanged: an active reef not dedicated to an instance, below its limit, in a region
taking signups; available shared pools with room, the roomiest; the reef with the most free instance slots first;
the first free share by pool and slot; the same outcomes (``placed``, ``not here``, ``stale``, ``none``).
"""
import importlib

from django.db import migrations

POSTGRES_FORWARD = r"""
CREATE OR REPLACE FUNCTION cells_place_shared(
    p_region bigint, p_instance bigint, p_tried bigint[],
    OUT placed_reef bigint, OUT placed_database_pool bigint, OUT placed_compute_pool bigint, OUT outcome text
) AS $$
DECLARE
    v_candidate bigint;
    v_passed bigint[] := p_tried;
    v_pool bigint;
    v_share bigint;
    v_constraint text;
BEGIN
    outcome := 'none';
    BEGIN
        -- Walk the region's reefs roomiest first, one per statement along index reef_roomiest_active (LIMIT 1: the
        -- planner never sorts the region), and lock the first that nobody holds and that has a free slot of every kind.
        LOOP
            SELECT r.id INTO v_candidate FROM cells_reef r
            WHERE r.region_id = p_region AND r.status = 'active' AND r.max_instances - r.placed_instances > 0
              AND r.dedicated_to_id IS NULL AND r.id <> ALL (v_passed)
              AND EXISTS (SELECT 1 FROM cells_region g WHERE g.id = r.region_id AND g.status IN ('active'))
            ORDER BY r.max_instances - r.placed_instances DESC, r.id LIMIT 1;
            EXIT WHEN v_candidate IS NULL;
            v_passed := v_passed || v_candidate;
            SELECT r.id,
                (SELECT p.id FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'database'
                 AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity
                 ORDER BY p.capacity - p.slots_held DESC, p.id LIMIT 1),
                (SELECT p.id FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'compute'
                 AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity
                 ORDER BY p.capacity - p.slots_held DESC, p.id LIMIT 1)
            INTO placed_reef, placed_database_pool, placed_compute_pool
            FROM cells_reef r
            WHERE r.id = v_candidate AND r.status = 'active' AND r.dedicated_to_id IS NULL
              AND r.placed_instances < r.max_instances
              AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'database'
                          AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity)
              AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'compute'
                          AND p.status = 'available' AND NOT p.dedicated AND p.slots_held < p.capacity)
              AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = 'storage'
                          AND p.status = 'available' AND NOT p.dedicated AND p.shares_available > 0)
            FOR UPDATE OF r SKIP LOCKED;
            EXIT WHEN placed_reef IS NOT NULL;
        END LOOP;
        IF placed_reef IS NULL THEN
            RETURN;  -- no reef with room that nobody holds: nothing locked, nothing taken
        END IF;
        -- Its first free share nobody else holds, by pool then slot (available -> assigned), pool by pool.
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
-- Generic plans, made once per session (as in 0014: planning each call afresh cost more than the work).
SET plan_cache_mode = force_generic_plan;
"""
# 0014's function, as it was.
POSTGRES_BACKWARD = importlib.import_module("cells.migrations.0014_path_placement").POSTGRES_FORWARD


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_BACKWARD, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("cells", "0016_lean_placement_writes"),
    ]

    operations = [
        migrations.RunPython(forward, backward),
    ]
