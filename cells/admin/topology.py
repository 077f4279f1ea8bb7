"""Admin of the topology: regions, reefs, pools, shares, and the capacity shortfalls staff must fix.

List pages cost a constant number of queries: related rows come from ``list_select_related`` and
capacity from the annotations of ``cells.selectors``.
"""
from django.contrib import admin

from cells import selectors
from cells.models import CapacityShortfall, Pool, Reef, Region, Share


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "cloud", "location", "status", "reef_count", "instance_count", "free_slots"]
    list_filter = ["status", "cloud"]
    search_fields = ["slug", "name", "location"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return selectors.regions_with_capacity(super().get_queryset(request))

    @admin.display(description="reefs", ordering="reef_count")
    def reef_count(self, region):
        return region.reef_count

    @admin.display(description="instances", ordering="instance_count")
    def instance_count(self, region):
        return region.instance_count

    @admin.display(description="free instance slots", ordering="free_instance_slots")
    def free_slots(self, region):
        return region.free_instance_slots


class PoolInline(admin.TabularInline):
    model = Pool
    extra = 0
    fields = ["name", "kind", "provider", "capacity", "status", "dedicated"]
    show_change_link = True


@admin.register(Reef)
class ReefAdmin(admin.ModelAdmin):
    list_display = [
        "slug", "region", "status", "rollout_ring", "used", "max_instances",
        "free_database", "free_storage", "free_compute", "placeable",
    ]
    list_filter = ["status", "region", "rollout_ring"]
    search_fields = ["slug", "region__slug", "ingress_address"]
    list_select_related = ["region"]
    inlines = [PoolInline]

    def get_queryset(self, request):
        return selectors.reefs_with_capacity(super().get_queryset(request))

    @admin.display(description="instances", ordering="instance_count")
    def used(self, reef):
        return reef.instance_count

    @admin.display(description="free db", ordering="free_database_slots")
    def free_database(self, reef):
        return reef.free_database_slots

    @admin.display(description="free shares", ordering="free_storage_slots")
    def free_storage(self, reef):
        return reef.free_storage_slots

    @admin.display(description="free compute", ordering="free_compute_slots")
    def free_compute(self, reef):
        return reef.free_compute_slots

    @admin.display(description="can place", ordering="placeable_slots")
    def placeable(self, reef):
        return reef.placeable_slots


class ShareInline(admin.TabularInline):
    model = Share
    extra = 0
    fields = ["slot", "name", "endpoint", "status", "instance", "firewall_address"]
    raw_id_fields = ["instance"]


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ["name", "reef", "kind", "provider", "status", "dedicated", "capacity", "used", "free"]
    list_filter = ["status", "kind", "provider", "dedicated", "reef__region"]
    search_fields = ["name", "external_id", "reef__slug"]
    list_select_related = ["reef__region"]
    inlines = [ShareInline]

    def get_queryset(self, request):
        return selectors.pools_with_usage(super().get_queryset(request))

    @admin.display(description="used", ordering="used_slots")
    def used(self, pool):
        return pool.used_slots

    @admin.display(description="free", ordering="free_slots")
    def free(self, pool):
        return pool.free_slots


@admin.register(Share)
class ShareAdmin(admin.ModelAdmin):
    list_display = ["name", "pool", "slot", "status", "instance", "firewall_address", "endpoint"]
    list_filter = ["status", "pool__reef__region"]
    search_fields = ["name", "endpoint", "instance__name", "pool__name"]
    list_select_related = ["pool", "instance"]
    raw_id_fields = ["instance"]


@admin.register(CapacityShortfall)
class CapacityShortfallAdmin(admin.ModelAdmin):
    """Signups refused for want of capacity: where staff must add pools or reefs."""

    list_display = ["created_at", "region", "instance_name", "reason"]
    list_filter = ["region"]
    list_select_related = ["region"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "region", "instance_name", "reason"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
