"""Capacity: pools kept ahead of demand, draining, and failed storage pools replaced with no data lost.

- ``planner``: the pure planner (facts in, pools to order and shortfalls out);
- ``facts``: the facts, read from the fleet in a constant number of queries;
- ``thresholds``: the capacity settings in effect (``cells.thresholds`` defaults and validation, the drivers'
  lead times, ``CELLHUB["CAPACITY"]``), which each reef's ``capacity_overrides`` adjust;
- ``services``: the writes staff, the API and the scheduler call.
"""
from cells.thresholds import Thresholds
from provisioning.capacity.facts import gather_facts
from provisioning.capacity.planner import Assessment, Order, ReefKindFacts, Shortfall, TopUpPlan, plan_top_ups
from provisioning.capacity.services import (
    capacity_top_up_pass,
    pool_activate,
    pool_drain,
    pool_instances,
    pool_mark_failed,
    pool_replace,
    pool_retire,
    pool_retire_blockers,
    pool_retire_summary,
    reef_activate,
    reef_capacity,
    reef_drain,
    reef_top_up,
)

__all__ = [
    "Assessment", "Order", "ReefKindFacts", "Shortfall", "Thresholds", "TopUpPlan",
    "capacity_top_up_pass", "gather_facts", "plan_top_ups", "pool_activate", "pool_drain", "pool_instances",
    "pool_mark_failed", "pool_replace", "pool_retire", "pool_retire_blockers", "pool_retire_summary",
    "reef_activate", "reef_capacity", "reef_drain", "reef_top_up",
]
