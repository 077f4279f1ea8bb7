"""The capacity page for staff: the capacity read model (``provisioning.capacity.overview``) drawn as a page.

The chart is inline SVG drawn here: no script, nothing fetched from elsewhere.
"""
from __future__ import annotations

from html import escape

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

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


VERDICTS = {"order": "top-up due", "coming": "low, pool coming"}  # and "short"


def reef_rows(reefs: list[dict]) -> str:
    """The rows of a region's reef table: a row per reef, marked when it needs attention, the reef linked to its
    change page; a cell per kind with used / free / coming slots, signups per day and headroom, the thresholds as
    its title and the verdict when not ok.

    Built here with plain string formatting, every text escaped (``html.escape``, as Django's ``escape``): the
    template language would spend more on these few thousand values than the page spends on anything else."""
    head, _, tail = reverse("admin:cells_reef_change", args=["0"]).rpartition("/0/")
    # The title depends on the thresholds and the provider only, which reefs mostly share.
    titles: dict[tuple[int, str], str] = {}
    rows = []
    for reef in reefs:
        label = escape(reef["label"])
        cells = []
        for cell in reef["cells"]:
            a = cell["assessment"]
            facts, limits, verdict = a.facts, a.facts.thresholds, a.verdict
            key = (id(limits), facts.provider)
            if key not in titles:
                titles[key] = escape(
                    f"(floor {limits.floor}, lead {localize(limits.lead_time_hours)} h + margin "
                    f"{localize(limits.margin_hours)} h); next pools: {facts.provider}, {limits.pool_size} slots"
                )
            note = ""
            if verdict != "ok":
                note = f'<br><span class="verdict">{VERDICTS.get(verdict, "short")}</span>'
                if a.cannot_grow:
                    note += f' <span class="muted">{escape(a.cannot_grow)}</span>'
            kind, shown = escape(facts.kind), escape(verdict)
            cells.append(
                f'<td class="kind verdict-{shown}" data-kind="{kind}" data-verdict="{shown}" title="wanted '
                f'{a.wanted} {titles[key]}">{facts.used} / {facts.free} / {facts.coming} · '
                f'{a.signups_per_day:.1f} · {escape(cell["headroom"])}{note}</td>'
            )
        rows.append(
            f'<tr class="{"capacity-attention" if reef["attention"] else ""}" data-reef="{label}">'
            f'<td><a href="{head}/{reef["id"]}/{tail}">{label}</a></td><td>{escape(reef["status"])}</td>'
            f'<td>{reef["instances"]} / {reef["max_instances"]}</td>{"".join(cells)}</tr>'
        )
    return mark_safe("\n".join(rows))  # noqa: S308 (every text above is escaped)


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
        region["reef_rows"] = reef_rows(region["reefs"])
    context = {
        **admin_site.each_context(request),
        **overview,
        "colours": COLOURS,
        "title": "Capacity",
        "region_slug": request.GET.get("region", ""),
        "all_regions": overview["region_slugs"],
    }
    return TemplateResponse(request, "admin/capacity.html", context)
