"""Operations as a read-only log for staff, with retry (failed or cancelled ones) and cancel (queued or running
ones) actions.

Both actions are audited with who acted; a cancel asks for the reason on an intermediate page.
"""
from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from cells.choices import OPERATION_RETRYABLE_STATES, CleanupState
from cells.errors import Refused
from cells.models import Operation
from portal.admin.audit import AuditedModelAdmin, admin_audit, admin_refusal
from provisioning.models import OperationWatch
from provisioning.operations import operation_cancel, operation_retry


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label="Why", max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded on the operation and in the audit log.",
    )


@admin.register(Operation)
class OperationAdmin(AuditedModelAdmin):
    """Operations are a log: readable by staff, changed only by the hub's services."""

    list_display = ["id", "kind", "target_name", "state", "attempts", "requested_by", "created_at", "finished_at"]
    list_filter = ["state", "kind", "cleanup_state"]
    search_fields = ["instance__name", "pool__name", "reef__slug", "share__name", "error", "task_id"]
    list_select_related = ["instance", "pool", "reef", "share", "requested_by"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = [
        "kind", "state", "target_name", "requested_by", "params", "task_id", "attempts", "claim",
        "step_log", "error", "cleanup", "created_at", "started_at", "finished_at", "updated_at",
    ]
    readonly_fields = fields
    actions = ["retry", "cancel"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_retry_permission(self, request):
        return request.user.is_active and request.user.is_staff and request.user.has_perm("cells.change_instance")

    has_cancel_permission = has_retry_permission

    @admin.action(description="Retry the selected failed or cancelled operations", permissions=["retry"])
    def retry(self, request, queryset):
        """Queue each selected failed or cancelled operation again. The selection is read once, before anything
        changes, so an operation this action just queued is never also reported (or audited) as skipped; each
        operation gets one audit row and staff one message per outcome."""
        retryable = {str(state) for state in OPERATION_RETRYABLE_STATES}
        selected = list(queryset.select_related("instance", "pool", "reef", "share"))
        retried, refused = [], []
        for operation in selected:
            if operation.state not in retryable:
                reason = f"operation #{operation.pk} is {operation.state}, neither failed nor cancelled"
                admin_audit(request, "operation.retry", operation, "refused", reason=reason)
                refused.append(reason)
                continue
            try:
                operation_retry(operation=operation, requested_by=request.user)
            except Refused as refusal:
                admin_refusal(request, "operation.retry", operation, refusal)
                refused.append(f"#{operation.pk}: {refusal}")
            else:
                admin_audit(request, "operation.retry", operation)
                retried.append(f"#{operation.pk}")
        if retried:
            self.message_user(request, f"Queued again: {', '.join(retried)}.", messages.SUCCESS)
        if refused:
            self.message_user(request, f"Not retried: {'; '.join(refused)}.", messages.WARNING)

    @admin.action(description="Cancel the selected queued or running operations…", permissions=["cancel"])
    def cancel(self, request, queryset):
        """Ask why, then end each selected queued or running operation cancelled; audited one by one."""
        selected = list(queryset.select_related("instance", "pool", "reef", "share"))
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return TemplateResponse(request, "admin/operation_cancel.html", {
                **self.admin_site.each_context(request),
                "opts": self.model._meta, "objects": selected, "form": form, "action": "cancel",
                "title": "Cancel operations",
            })
        cancelled = []
        for operation in selected:
            try:
                operation_cancel(operation=operation, reason=form.cleaned_data["reason"], cancelled_by=request.user)
            except Refused as refusal:
                admin_refusal(request, "operation.cancel", operation, refusal)
                self.message_user(request, f"#{operation.pk}: {refusal}", messages.WARNING)
            else:
                admin_audit(request, "operation.cancel", operation, reason=form.cleaned_data["reason"],
                            seen_state=str(operation.state))
                cancelled.append(f"#{operation.pk}")
        if cancelled:
            self.message_user(request, f"Cancelled {', '.join(cancelled)}.", messages.SUCCESS)
        return None

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="target")
    def target_name(self, operation):
        target = operation.target
        return f"{target._meta.model_name} {target}" if target is not None else "—"

    @admin.display(description="current claim")
    def claim(self, operation):
        watch = OperationWatch.objects.filter(operation_id=operation.pk).first()
        if watch is None:
            return "never claimed"
        parts = [f"attempt {operation.attempts} claimed {watch.claimed_at:%Y-%m-%d %H:%M:%S} UTC by {watch.worker}"
                 if watch.claimed_at else "not claimed yet"]
        if watch.requeues:
            parts.append(f"requeued by the watchdog {watch.requeues} time(s), last: {watch.last_reason}")
        return "; ".join(parts)

    @admin.display(description="clean-up owed")
    def cleanup(self, operation):
        """What the plan's release still owes after the operation was cancelled or failed by the watchdog."""
        if operation.cleanup_state == CleanupState.NONE:
            return "nothing owed"
        if operation.cleanup_state == CleanupState.OWED:
            return "its clean-up (the plan's release) is still to run"
        if operation.cleanup_state == CleanupState.RUNNING:
            return f"its clean-up is running since {operation.cleanup_claimed_at:%Y-%m-%d %H:%M:%S} UTC"
        if operation.cleanup_state == CleanupState.FAILED:
            return f"its clean-up failed: {operation.cleanup_error}; retry the operation to run it again"
        return "its clean-up ran"

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
