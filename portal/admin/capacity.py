"""The capacity page for staff: the capacity read model (``provisioning.capacity.overview``) drawn as a page.

The chart is inline SVG drawn here: no script, nothing fetched from elsewhere.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from cells.models import Region
from provisioning.capacity.overview import capacity_overview

COLOURS = {"used": "#5b6770", "free": "#3a9d5d", "coming": "#4f8fd6"}


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
    try:
        page = int(request.GET.get("page", "1"))
    except ValueError:
        page = 1
    overview = capacity_overview(region_slug=request.GET.get("region", ""), page=page)
    for region in overview["regions"]:
        region["chart"] = capacity_chart(region["kinds"])
    context = {
        **admin_site.each_context(request),
        **overview,
        "colours": COLOURS,
        "title": "Capacity",
        "region_slug": request.GET.get("region", ""),
        "all_regions": Region.objects.order_by("slug").values_list("slug", flat=True),
    }
    return TemplateResponse(request, "admin/capacity.html", context)
