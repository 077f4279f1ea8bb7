"""``{% maintenance_box instance %}``: the instance's maintenance window, its pending upgrade, and the form."""
from django import template

from portal.site.maintenance import maintenance_overview

register = template.Library()


@register.inclusion_tag("site/_maintenance.html")
def maintenance_box(instance):
    return {"instance": instance, **maintenance_overview(instance)}
