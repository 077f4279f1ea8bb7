"""The top-up planner as a pure function over a fixture of reefs: no database, table-driven."""
import dataclasses

import pytest

from cells.thresholds import Thresholds
from provisioning.capacity.planner import ReefKindFacts, assess, plan_top_ups

# 24 signups in a 48 h window: 0.5 per hour; lead 4 h + margin 20 h = 24 h → 12 slots wanted by the rate.
LIMITS = Thresholds(floor=5, lead_time_hours=4, margin_hours=20, window_hours=48, pool_size=10, max_pools_per_pass=2)
BASE = ReefKindFacts(
    reef_id=1, reef="eu/reef-1", region_id=1, kind="storage", provider="aws_storage_gateway",
    reef_status="active", region_status="active", max_instances=500, instance_count=100,
    free=20, used=100, coming=0, signups=24, thresholds=LIMITS,
)


def facts(**changes):
    limits = changes.pop("thresholds", {})
    return dataclasses.replace(BASE, thresholds=dataclasses.replace(LIMITS, **limits), **changes)


# (case, facts, pools ordered, shortfall slots or None, reason fragment)
CASES = [
    ("enough", facts(free=20), 0, None, ""),
    ("exactly enough", facts(free=12), 0, None, ""),
    ("low", facts(free=3), 1, None, ""),
    ("very low: two pools", facts(free=0), 2, None, ""),
    ("burst capped per pass", facts(free=0, signups=480), 2, None, ""),
    ("already coming", facts(free=3, coming=10), 0, None, ""),
    ("coming but not enough", facts(free=0, coming=10), 1, None, ""),
    ("floor without signups", facts(free=4, signups=0), 1, None, ""),
    ("floor met without signups", facts(free=5, signups=0), 0, None, ""),
    ("floor raised", facts(free=12, thresholds={"floor": 15}), 1, None, ""),
    ("longer lead time", facts(free=12, thresholds={"lead_time_hours": 8}), 1, None, ""),
    ("reef full", facts(free=3, instance_count=500), 0, 9, "instance limit (500 of 500)"),
    ("reef nearly full wants only its room", facts(free=3, instance_count=497), 0, None, ""),
    ("reef nearly full, room not covered", facts(free=1, instance_count=497), 1, None, ""),
    ("draining", facts(free=3, reef_status="draining"), 0, 9, "reef eu/reef-1 is draining"),
    ("draining with enough", facts(free=30, reef_status="draining"), 0, None, ""),
    ("broken", facts(free=0, reef_status="broken"), 0, 12, "reef eu/reef-1 is broken"),
    ("region draining", facts(free=0, region_status="draining"), 0, 12, "region of eu/reef-1 is draining"),
    ("failed top-up waits for staff", facts(free=0, failed_top_ups=("storage-2",)), 0, 12, "storage-2 failed"),
    ("automatic top-ups off", facts(free=0, thresholds={"max_pools_per_pass": 0}), 0, 12, "are off"),
    ("no new host in the region", facts(free=0, new_host_refusal="no cluster API"), 0, 12,
     "gets no new aws_storage_gateway pool: no cluster API"),
    ("no new host needed", facts(free=20, new_host_refusal="no cluster API"), 0, None, ""),
]


@pytest.mark.parametrize(("case", "reef", "pools", "short", "reason"), CASES, ids=[c[0] for c in CASES])
def test_planner_cases(case, reef, pools, short, reason):
    plan = plan_top_ups([reef])
    assert len(plan.orders) == pools
    assert all((o.reef_id, o.kind, o.provider, o.capacity) == (1, "storage", "aws_storage_gateway", 10)
               for o in plan.orders)
    if short is None:
        assert plan.shortfalls == []
    else:
        (shortfall,) = plan.shortfalls
        assert (shortfall.reef_id, shortfall.kind, shortfall.slots) == (1, "storage", short)
        assert reason in shortfall.reason
    assert len(plan.assessments) == 1


def test_rate_wanted_and_headroom():
    assessment = assess(facts(free=6, coming=10))
    assert assessment.rate_per_hour == 0.5
    assert assessment.signups_per_day == 12
    assert assessment.wanted == 12
    assert assessment.deficit == 0
    assert assessment.headroom_hours == 32  # 16 slots at 0.5 an hour
    assert assessment.headroom_days == pytest.approx(32 / 24)
    assert assessment.near_exhaustion  # 6 usable now < 12 wanted: highlighted, though a pool is coming
    assert assessment.verdict == "coming"
    assert assess(facts(free=20)).verdict == "ok" and not assess(facts(free=20)).near_exhaustion
    assert assess(facts(signups=0)).headroom_hours is None
    assert assess(facts(free=0)).verdict == "order"
    assert assess(facts(free=0, reef_status="broken")).verdict == "short"


def test_the_order_says_why():
    (order,) = plan_top_ups([facts(free=3)]).orders
    assert order.reason.startswith("3 free + 0 coming < 12 wanted")
    assert "12.0 signups/day" in order.reason


def test_a_fleet_plans_every_reef_and_kind_on_its_own():
    fleet = [
        facts(reef_id=1, kind="database", provider="sqlite", free=50),
        facts(reef_id=1, kind="storage", free=2),
        facts(reef_id=2, reef="eu/reef-2", kind="compute", provider="kubernetes", free=0, thresholds={"pool_size": 50}),
        facts(reef_id=3, reef="eu/reef-3", reef_status="draining", free=0),
    ]
    plan = plan_top_ups(fleet)
    assert [(o.reef_id, o.kind, o.capacity) for o in plan.orders] == [(1, "storage", 10), (2, "compute", 50)]
    assert [(s.reef_id, s.slots) for s in plan.shortfalls] == [(3, 12)]
    assert [a.verdict for a in plan.assessments] == ["ok", "order", "order", "short"]
