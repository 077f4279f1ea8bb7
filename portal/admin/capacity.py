"""The capacity page for staff: per region and reef, free / used / coming slots of each kind, the signup rate,
days of headroom, what the next top-up pass will order and what it cannot, and the pools needing attention.

One page, a constant number of queries whatever the size of the fleet: the planner's facts (seven grouped
queries), the regions, the pools needing attention and the refused signups, each one query. The chart is
inline SVG drawn here: no script, nothing fetched from elsewhere.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, Q
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from cells import selectors
from cells.choices import PoolKind, PoolStatus
from cells.models import CapacityShortfall, Pool, Region
from provisioning.capacity import gather_facts, plan_top_ups
from provisioning.capacity.thresholds import capacity_settings

KINDS = [str(kind) for kind in (PoolKind.DATABASE, PoolKind.STORAGE, PoolKind.COMPUTE)]
# A pool is nearly full when this share of its slots or fewer is free.
NEARLY_FULL = 0.1
REFUSED_SIGNUPS_DAYS = 7
COLOURS = {"used": "#5b6770", "free": "#3a9d5d", "coming": "#4f8fd6"}


def _stuck_after_hours() -> float:
    """A pool provisioning for twice the longest lead time is worth a look (its top-up may be stuck)."""
    return 2 * max(capacity_settings()["LEAD_TIME_HOURS"].values())


def _headroom(hours: float | None) -> str:
    return "no signups" if hours is None else f"{hours / 24:.1f} d"


def capacity_overview(*, region_slug: str = "") -> dict:
    """Everything the capacity page shows, read in a constant number of queries."""
    plan = plan_top_ups(gather_facts())
    regions = {region.pk: region for region in Region.objects.order_by("slug")}
    if region_slug:
        regions = {pk: region for pk, region in regions.items() if region.slug == region_slug}
    since = timezone.now() - timedelta(days=REFUSED_SIGNUPS_DAYS)
    refused = dict(
        CapacityShortfall.objects.filter(created_at__gte=since)
        .order_by()
        .values("region_id")
        .annotate(count=Count("id"))
        .values_list("region_id", "count")
    )

    reefs: dict[int, dict] = {}
    totals: dict[int, dict] = defaultdict(lambda: {kind: defaultdict(float) for kind in KINDS})
    for assessment in plan.assessments:
        facts = assessment.facts
        if facts.region_id not in regions:
            continue
        row = reefs.setdefault(
            facts.reef_id,
            {"id": facts.reef_id, "label": facts.reef, "region_id": facts.region_id, "status": facts.reef_status,
             "instances": facts.instance_count, "max_instances": facts.max_instances, "kinds": {}, "attention": False},
        )
        row["kinds"][facts.kind] = assessment
        row["attention"] |= assessment.verdict != "ok"
        total = totals[facts.region_id][facts.kind]
        for name in ("free", "used", "coming", "signups"):
            total[name] += getattr(facts, name)
        total["rate_per_hour"] += assessment.rate_per_hour

    for row in reefs.values():
        row["cells"] = [
            {"assessment": row["kinds"][kind], "headroom": _headroom(row["kinds"][kind].headroom_hours)}
            for kind in KINDS
        ]
    region_rows = []
    for pk, region in regions.items():
        region_reefs = [row for row in reefs.values() if row["region_id"] == pk]
        kinds = []
        for kind in KINDS:
            total = totals[pk][kind]
            rate = total["rate_per_hour"]
            headroom = (total["free"] + total["coming"]) / rate if rate else None
            kinds.append({"kind": kind, "free": int(total["free"]), "used": int(total["used"]),
                          "coming": int(total["coming"]), "per_day": rate * 24, "headroom": _headroom(headroom)})
        region_rows.append({
            "region": region,
            "reefs": region_reefs,
            "kinds": kinds,
            "chart": capacity_chart(kinds),
            "refused_signups": refused.get(pk, 0),
            "attention": sum(1 for row in region_reefs if row["attention"]),
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
        "kinds": KINDS,
        "attention_pools": list(attention_pools),
        "shortfalls": shortfalls,
        "orders": orders,
        "refused_days": REFUSED_SIGNUPS_DAYS,
        "colours": COLOURS,
    }


def capacity_chart(kinds: list[dict], *, width: int = 600, bar: int = 22) -> str:
    """A stacked bar per pool kind (used, free, coming slots) as inline SVG, with the numbers and headroom."""
    label_width, text_width = 80, 230
    scale_width = width - label_width - text_width
    largest = max([k["used"] + k["free"] + k["coming"] for k in kinds] + [1])
    height = 20 + len(kinds) * (bar + 10)
    rows = []
    for index, kind in enumerate(kinds):
        y = 20 + index * (bar + 10)
        x = label_width
        segments = []
        for name in ("used", "free", "coming"):
            length = scale_width * kind[name] / largest
            if length > 0:
                segments.append(format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}: {}</title></rect>',
                    f"{x:.1f}", y, f"{length:.1f}", bar, COLOURS[name], kind["kind"], name, kind[name],
                ))
            x += length
        headroom = f"{kind['headroom']} headroom" if kind["per_day"] else "no signups"
        rows.append(format_html(
            '<text x="0" y="{}" class="label">{}</text>{}<text x="{}" y="{}" class="numbers">{}/{}/{} · {}</text>',
            y + bar - 6, kind["kind"], format_html_join("", "{}", ((s,) for s in segments)),
            label_width + scale_width + 8, y + bar - 6, kind["used"], kind["free"], kind["coming"], headroom,
        ))
    legend = format_html_join(
        "",
        '<rect x="{}" y="2" width="10" height="10" fill="{}"></rect><text x="{}" y="11" class="legend">{}</text>',
        ((label_width + i * 80, COLOURS[name], label_width + i * 80 + 14, name)
         for i, name in enumerate(("used", "free", "coming"))),
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" role="img" class="capacity-chart" width="{}" height="{}" '
        'viewBox="0 0 {} {}"><title>Slots by kind: used, free, coming</title>{}{}</svg>',
        width, height, width, height, legend, format_html_join("", "{}", ((row,) for row in rows)),
    )


def capacity_view(request, admin_site):
    """The capacity page; staff who may view reefs only (the admin's login guards the rest)."""
    if not request.user.has_perm("cells.view_reef"):
        raise PermissionDenied
    context = {
        **admin_site.each_context(request),
        **capacity_overview(region_slug=request.GET.get("region", "")),
        "title": "Capacity",
        "region_slug": request.GET.get("region", ""),
        "all_regions": Region.objects.order_by("slug").values_list("slug", flat=True),
    }
    return TemplateResponse(request, "admin/capacity.html", context)
