"""Admin of instances: state, placement, version, their operations; actions that start work."""
from django.contrib import admin, messages
from django.db import IntegrityError

from cells.choices import OperationKind, OperationState
from cells.models import Instance, Operation
from cells.states import IllegalTransition
from provisioning.operations import operation_retry


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


