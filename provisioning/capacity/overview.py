"""The capacity read model: per region and reef, free / used / coming slots of each kind, the signup rate, days
of headroom, what the next top-up pass will order and what it cannot, and the pools needing attention.

Read in a constant number of queries whatever the size of the fleet: the planner's facts (four), the regions with
their refused signups, and the pools needing attention.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.db.models import Count, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from cells import selectors
from cells.choices import PoolKind, PoolStatus
from cells.models import CapacityShortfall, Pool, Region
from provisioning.capacity.facts import gather_facts
from provisioning.capacity.planner import plan_top_ups
from provisioning.capacity.thresholds import capacity_settings

KINDS = [str(kind) for kind in (PoolKind.DATABASE, PoolKind.STORAGE, PoolKind.COMPUTE)]
# A pool is nearly full when this share of its slots or fewer is free.
NEARLY_FULL = 0.1
REFUSED_SIGNUPS_DAYS = 7
# Reefs listed per region and page besides those needing attention (listed first, up to as many again): the page's
# size does not grow with the fleet.
REEFS_PER_PAGE = 25


def _stuck_after_hours() -> float:
    """A pool provisioning for twice the longest lead time is worth a look (its top-up may be stuck)."""
    return 2 * max(capacity_settings()["LEAD_TIME_HOURS"].values())


def _headroom(hours: float | None) -> str:
    return "no signups" if hours is None else f"{hours / 24:.1f} d"


def capacity_overview(*, region_slug: str = "", page: int = 1) -> dict:
    """Everything the capacity page shows, read in a constant number of queries.

    Per region: totals of every reef, then the reefs needing attention (at most ``REEFS_PER_PAGE``) and page ``page``
    of the others (``REEFS_PER_PAGE`` each); ``reef_count``, ``pages`` and ``page`` tell what is left out.
    ``region_slugs``: every region's, for a filter."""
    plan = plan_top_ups(gather_facts())
    # The regions with their refused signups of the last days, one query: each region's count reads only its recent
    # shortfalls (a join would read every shortfall ever recorded, and they are kept).
    since = timezone.now() - timedelta(days=REFUSED_SIGNUPS_DAYS)
    recent = (CapacityShortfall.objects.filter(region=OuterRef("pk"), created_at__gte=since).order_by()
              .values("region").annotate(n=Count("id")).values("n"))
    all_regions = list(Region.objects.order_by("slug").annotate(
        refused_signups=Coalesce(Subquery(recent), 0)
    ))
    regions = {region.pk: region for region in all_regions if not region_slug or region.slug == region_slug}

    reefs: dict[int, dict] = {}
    by_region: dict[int, list[dict]] = defaultdict(list)
    totals: dict[int, dict] = defaultdict(lambda: {kind: defaultdict(float) for kind in KINDS})
    for assessment in plan.assessments:
        facts = assessment.facts
        if facts.region_id not in regions:
            continue
        row = reefs.get(facts.reef_id)
        if row is None:
            row = reefs[facts.reef_id] = {
                "id": facts.reef_id, "label": facts.reef, "region_id": facts.region_id, "status": facts.reef_status,
                "instances": facts.instance_count, "max_instances": facts.max_instances, "kinds": {},
                "attention": False,
            }
            by_region[facts.region_id].append(row)
        row["kinds"][facts.kind] = assessment
        row["attention"] |= assessment.verdict != "ok"
        total = totals[facts.region_id][facts.kind]
        total["free"] += facts.free
        total["used"] += facts.used
        total["coming"] += facts.coming
        total["signups"] += facts.signups
        total["rate_per_hour"] += assessment.rate_per_hour

    region_rows = []
    for pk, region in regions.items():
        region_reefs = by_region[pk]
        needing = [row for row in region_reefs if row["attention"]]
        others = [row for row in region_reefs if not row["attention"]]
        pages = max(1, -(-len(others) // REEFS_PER_PAGE))
        shown_page = min(max(page, 1), pages)
        start = (shown_page - 1) * REEFS_PER_PAGE
        shown = needing[:REEFS_PER_PAGE] + others[start:start + REEFS_PER_PAGE]
        for row in shown:  # the reefs shown only: the others are summed, never drawn
            row["cells"] = [
                {"assessment": row["kinds"][kind], "headroom": _headroom(row["kinds"][kind].headroom_hours)}
                for kind in KINDS
            ]
        kinds = []
        for kind in KINDS:
            total = totals[pk][kind]
            rate = total["rate_per_hour"]
            headroom = (total["free"] + total["coming"]) / rate if rate else None
            kinds.append({"kind": kind, "free": int(total["free"]), "used": int(total["used"]),
                          "coming": int(total["coming"]), "per_day": rate * 24, "headroom": _headroom(headroom)})
        region_rows.append({
            "region": region,
            "reefs": shown,
            "reef_count": len(region_reefs),
            "page": shown_page,
            "pages": pages,
            "kinds": kinds,
            "refused_signups": region.refused_signups,
            "attention": len(needing),
        })

    stuck_before = timezone.now() - timedelta(hours=_stuck_after_hours())
    attention_pools = (
        selectors.pools_with_usage(Pool.objects.select_related("reef__region"))
        .filter(
            Q(status=PoolStatus.FAILED)
            | Q(status=PoolStatus.AVAILABLE, free_slots__lte=F("capacity") * NEARLY_FULL)
            | Q(status=PoolStatus.PROVISIONING, created_at__lt=stuck_before)
        )
        .order_by("status", "reef__region__slug", "reef__slug", "kind", "name")
    )
    if region_slug:
        attention_pools = attention_pools.filter(reef__region__slug=region_slug)
    shortfalls = [s for s in plan.shortfalls if s.reef_id in reefs]
    orders = [{"reef": reefs[o.reef_id]["label"], "order": o} for o in plan.orders if o.reef_id in reefs]
    return {
        "regions": region_rows,
        "region_slugs": [region.slug for region in all_regions],
        "kinds": KINDS,
        "attention_pools": list(attention_pools),
        "shortfalls": shortfalls,
        "orders": orders,
        "refused_days": REFUSED_SIGNUPS_DAYS,
    }
