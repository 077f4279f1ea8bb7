"""The top-up planner: a pure function from facts about each reef's slots to pools to order and shortfalls.

No database here: ``gather_facts`` (``provisioning.capacity.facts``) reads the fleet, this decides. For one
reef and one pool kind:

- the signup rate is the signups of the window divided by its length;
- the slots wanted are ``max(floor, ceil(rate × (lead time + margin)))``, but never more than the reef could
  still place (``max_instances`` less the instances it holds): a pool beyond that would stay empty;
- free slots plus coming ones (pools being provisioned) below that → order enough pools of ``pool_size``
  slots to cover it (at most ``max_pools_per_pass``); a pool already coming counts, so a second pass
  orders nothing for the same need;
- a reef that cannot grow (not active, in a region that is not active, at its instance limit, whose last
  top-up of the kind failed and waits for staff, or whose provider cannot make a new host in its region — a
  top-up never lands on an existing host) gets no order: the slots it lacks become a ``Shortfall`` with the
  reason, for the capacity page.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from cells.thresholds import Thresholds

ACTIVE = "active"


@dataclass(frozen=True)
class ReefKindFacts:
    """What is known of one reef's slots of one kind, and the thresholds that apply to them."""

    reef_id: int
    reef: str  # "<region>/<reef>", for messages
    region_id: int
    kind: str
    provider: str  # of the reef's next pool of this kind
    reef_status: str
    region_status: str
    max_instances: int
    instance_count: int  # instances holding slots in the reef
    free: int  # slots a signup could take now (shared, available pools)
    used: int  # slots held by instances
    coming: int  # slots of pools being provisioned
    signups: int  # instances created in the reef during the window
    thresholds: Thresholds
    failed_top_ups: tuple[str, ...] = ()  # pools whose top-up failed and waits for staff
    dedicated_to: str = ""  # the instance a dedicated reef holds alone ("" for a shared reef)
    new_host_refusal: str = ""  # why the provider cannot give a new pool a host of its own in the region ("": it can)


@dataclass(frozen=True)
class Order:
    """Provision one pool."""

    reef_id: int
    kind: str
    provider: str
    capacity: int
    reason: str


@dataclass(frozen=True)
class Shortfall:
    """Slots a reef lacks and will not get automatically, and why."""

    reef_id: int
    reef: str
    kind: str
    slots: int
    reason: str


@dataclass(frozen=True)
class Assessment:
    """The planner's reading of one reef and kind, for the pass and the capacity page."""

    facts: ReefKindFacts
    rate_per_hour: float
    wanted: int  # slots wanted now (floor or rate × (lead time + margin)), capped by the reef's room
    deficit: int  # wanted less free and coming, never below 0
    headroom_hours: float | None  # until free and coming slots run out at the current rate; None: no signups
    cannot_grow: str  # why the reef gets no new pools ("" when it may)
    orders: tuple[Order, ...] = ()
    shortfall: Shortfall | None = None

    @property
    def signups_per_day(self) -> float:
        return self.rate_per_hour * 24

    @property
    def headroom_days(self) -> float | None:
        return None if self.headroom_hours is None else self.headroom_hours / 24

    @property
    def near_exhaustion(self) -> bool:
        """The slots usable now will not last the lead time and margin (or are under the floor)."""
        return self.facts.free < self.wanted

    @property
    def verdict(self) -> str:
        """``ok``, ``coming`` (low now, pools on the way cover it), ``order`` (pools to order), ``short``."""
        if self.shortfall is not None:
            return "short"
        if self.orders:
            return "order"
        return "coming" if self.near_exhaustion else "ok"


@dataclass
class TopUpPlan:
    orders: list[Order] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)
    assessments: list[Assessment] = field(default_factory=list)


def reef_cannot_grow(facts: ReefKindFacts) -> str:
    """Why the reef gets no new pools of any kind (its region's or its own state, its instance limit), or ``""``."""
    if facts.region_status != ACTIVE:
        return f"the region of {facts.reef} is {facts.region_status}"
    if facts.reef_status != ACTIVE:
        return f"reef {facts.reef} is {facts.reef_status}"
    if facts.dedicated_to:
        return f"reef {facts.reef} is dedicated to instance {facts.dedicated_to}: it takes no other"
    if facts.instance_count >= facts.max_instances:
        limit = f"{facts.instance_count} of {facts.max_instances}"
        return f"reef {facts.reef} is at its instance limit ({limit}): add a reef"
    return ""


def cannot_grow(facts: ReefKindFacts) -> str:
    """Why the reef gets no new pools of this kind, or ``""``."""
    if reason := reef_cannot_grow(facts):
        return reason
    if facts.new_host_refusal:
        return f"reef {facts.reef} gets no new {facts.provider} pool: {facts.new_host_refusal}"
    if facts.failed_top_ups:
        pools = ", ".join(facts.failed_top_ups)
        return f"the top-up of {facts.kind} pool {pools} failed: retry it or retire the pool"
    if facts.thresholds.max_pools_per_pass == 0:
        return f"automatic top-ups are off for reef {facts.reef} (MAX_POOLS_PER_PASS is 0)"
    return ""


def assess(facts: ReefKindFacts) -> Assessment:
    """Read one reef and kind: what it wants, what it lacks, and the pools to order or the shortfall."""
    limits = facts.thresholds
    rate = facts.signups / limits.window_hours if limits.window_hours > 0 else 0.0
    by_rate = math.ceil(rate * (limits.lead_time_hours + limits.margin_hours) - 1e-9)
    needed = max(limits.floor, by_rate)
    room = max(facts.max_instances - facts.instance_count, 0)
    have = facts.free + facts.coming
    reason = cannot_grow(facts)
    # A reef that cannot grow reports what it would need were it open; one that can is capped by its room.
    wanted = needed if reason else min(needed, room)
    deficit = max(wanted - have, 0)
    headroom = None if rate == 0 else min(have, room) / rate
    if deficit == 0:
        return Assessment(facts, rate, wanted, 0, headroom, reason)
    if reason:
        shortfall = Shortfall(facts.reef_id, facts.reef, facts.kind, deficit, reason)
        return Assessment(facts, rate, wanted, deficit, headroom, reason, shortfall=shortfall)
    pools = min(math.ceil(deficit / limits.pool_size), limits.max_pools_per_pass)
    why = (
        f"{facts.free} free + {facts.coming} coming < {wanted} wanted "
        f"(floor {limits.floor}, {rate * 24:.1f} signups/day over {limits.lead_time_hours:g} h lead time "
        f"+ {limits.margin_hours:g} h margin)"
    )
    orders = tuple(Order(facts.reef_id, facts.kind, facts.provider, limits.pool_size, why) for _ in range(pools))
    return Assessment(facts, rate, wanted, deficit, headroom, reason, orders=orders)


def plan_top_ups(facts: Iterable[ReefKindFacts]) -> TopUpPlan:
    """Assess every reef and kind; the orders and shortfalls of all of them, in the order of ``facts``."""
    plan = TopUpPlan()
    for item in facts:
        assessment = assess(item)
        plan.assessments.append(assessment)
        plan.orders.extend(assessment.orders)
        if assessment.shortfall is not None:
            plan.shortfalls.append(assessment.shortfall)
    return plan
