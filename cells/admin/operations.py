"""Operations as a read-only log for staff, with a retry action for failed ones."""
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from cells.choices import OperationState
from cells.models import Operation
from cells.states import IllegalTransition
from provisioning.operations import operation_retry


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


