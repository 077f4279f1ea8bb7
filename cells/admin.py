"""The support staff's admin: every model, capacity at a glance, operations as a log.

List pages cost a constant number of queries: related rows come from ``list_select_related`` and
capacity from the annotations of ``cells.selectors``.
"""
from django.contrib import admin, messages
from django.db import IntegrityError
from django.utils.html import format_html, format_html_join

from cells import selectors
from cells.choices import OperationKind, OperationState
from cells.models import CapacityShortfall, Instance, Operation, Pool, Reef, Region, Share
from cells.states import IllegalTransition
from provisioning.operations import operation_retry


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


class OperationInline(admin.TabularInline):
    model = Operation
    fk_name = "instance"
    extra = 0
    can_delete = False
    fields = ["kind", "state", "attempts", "created_at", "finished_at", "error"]
    readonly_fields = fields
    show_change_link = True
    ordering = ["-created_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "region", "reef", "state", "server_version", "tier", "hostname", "created_at"]
    list_filter = ["state", "tier", "region", "server_version"]
    search_fields = ["name", "hostname", "owner__email", "owner__username"]
    list_select_related = ["owner", "region", "reef__region"]
    raw_id_fields = ["owner", "reef", "database_pool", "compute_pool"]
    readonly_fields = ["state", "created_at", "updated_at"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # a second COUNT(*) over the whole table buys nothing
    inlines = [OperationInline]
    actions = ["retry_provision"]

    @admin.action(description="Retry the failed provision of the selected instances")
    def retry_provision(self, request, queryset):
        failed = Operation.objects.filter(
            instance__in=queryset, kind=OperationKind.PROVISION, state=OperationState.FAILED
        ).select_related("instance")
        retried = []
        for operation in failed:
            try:
                operation_retry(operation=operation, requested_by=request.user)
                retried.append(operation.instance.name)
            except (IllegalTransition, IntegrityError) as refusal:
                self.message_user(request, f"{operation.instance}: {refusal}", messages.WARNING)
        if retried:
            self.message_user(request, f"Provision queued again for {', '.join(retried)}.", messages.SUCCESS)
        else:
            self.message_user(request, "None of the selected instances has a failed provision.", messages.WARNING)


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    """Operations are a log: readable by staff, changed only by the hub's services."""

    list_display = ["id", "kind", "target_name", "state", "attempts", "requested_by", "created_at", "finished_at"]
    list_filter = ["state", "kind"]
    search_fields = ["instance__name", "pool__name", "reef__slug", "share__name", "error", "task_id"]
    list_select_related = ["instance", "pool", "reef", "share", "requested_by"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = [
        "kind", "state", "target_name", "requested_by", "params", "task_id", "attempts",
        "step_log", "error", "created_at", "started_at", "finished_at", "updated_at",
    ]
    readonly_fields = fields
    actions = ["retry"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_retry_permission(self, request):
        return request.user.is_active and request.user.is_staff and request.user.has_perm("cells.change_instance")

    @admin.action(description="Retry the selected failed operations", permissions=["retry"])
    def retry(self, request, queryset):
        retried = 0
        for operation in queryset.filter(state=OperationState.FAILED):
            try:
                operation_retry(operation=operation, requested_by=request.user)
                retried += 1
            except IllegalTransition as refusal:
                self.message_user(request, str(refusal), messages.WARNING)
        skipped = queryset.exclude(state=OperationState.FAILED).count()
        self.message_user(request, f"Queued {retried} operation(s) again.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"Skipped {skipped} operation(s) that are not failed.", messages.WARNING)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="target")
    def target_name(self, operation):
        target = operation.target
        return f"{target._meta.model_name} {target}" if target is not None else "—"

    @admin.display(description="steps")
    def step_log(self, operation):
        if not operation.steps:
            return "no step finished yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s.get("name"), s.get("started_at", ""), s.get("finished_at", "")) for s in operation.steps),
        )
        return format_html("<table><tr><th>step</th><th>started</th><th>finished</th></tr>{}</table>", rows)


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
