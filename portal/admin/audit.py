"""The audit log for staff: read-only, filterable by who, what, outcome and target; and the admin's way to write it.

Every admin action of the hub records itself through ``admin_audit`` (outcome, and the refusal's text as the
reason when it was refused). Every change made through an admin form — add, change, delete, on any model — is
audited by ``AuditedModelAdmin``, the base of every ModelAdmin the hub registers (``portal/admin/__init__.py``
checks it at start-up).
"""
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _

from cells.audit import REFUSED, SUCCEEDED, audit_record, request_fields
from cells.choices import ActorKind
from cells.models import AuditEvent

# Where an audit row's target opens in the admin, by target type.
TARGET_ADMIN = {
    "instance": "admin:cells_instance_change",
    "operation": "admin:cells_operation_change",
    "pool": "admin:cells_pool_change",
    "reef": "admin:cells_reef_change",
    "orphan": "admin:provisioning_orphan_change",
}


def admin_audit(request, action: str, target=None, outcome: str = SUCCEEDED, reason: str = "", **details):
    """Record a staff action taken in the admin, with what was sent (no secrets) and the client address."""
    return audit_record(
        action=action, outcome=outcome, target=target, reason=reason, request=request,
        details={"via": "admin", **request_fields(request.POST), **details},
    )


def admin_refusal(request, action: str, target, refusal: Exception, **details):
    return admin_audit(request, action, target, REFUSED, reason=str(refusal), **details)


class AuditedModelAdmin(admin.ModelAdmin):
    """A ModelAdmin whose every add, change and delete through its forms writes an audit row, in the same transaction
    as the change (Django calls these hooks inside its atomic block): ``<model>.add``, ``<model>.change`` with the
    fields changed, ``<model>.delete`` before the row goes."""

    def action_checkbox(self, obj):
        """The row's checkbox for actions: Django's markup exactly (the name, value, class and label its actions
        script reads), written with ``format_html`` rather than rendered as a form widget through the template
        engine, which cost a third of a 100-row list page."""
        label = format_html(_("Select this object for an action - {}"), str(obj))
        return format_html('<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
                           helpers.ACTION_CHECKBOX_NAME, str(obj.pk), label)

    def log_addition(self, request, obj, message):
        entry = super().log_addition(request, obj, message)
        admin_audit(request, f"{obj._meta.model_name}.add", obj, changes=message)
        return entry

    def log_change(self, request, obj, message):
        entry = super().log_change(request, obj, message)
        admin_audit(request, f"{obj._meta.model_name}.change", obj, changes=message)
        return entry

    def log_deletions(self, request, queryset):
        entries = super().log_deletions(request, queryset)
        for obj in queryset:
            admin_audit(request, f"{obj._meta.model_name}.delete", obj)
        return entries


class ActorKindFilter(admin.SimpleListFilter):
    title = "who acted"
    parameter_name = "actor_kind"

    def lookups(self, request, model_admin):
        return ActorKind.choices

    def queryset(self, request, queryset):
        return queryset.filter(actor_kind=self.value()) if self.value() else queryset


class ActionFilter(admin.SimpleListFilter):
    """The actions found in the log (the list grows with the hub; no fixed choices to keep in step)."""

    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        actions = AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
        return [(action, action) for action in actions]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


class TargetTypeFilter(ActionFilter):
    title = "target type"
    parameter_name = "target_type"

    def lookups(self, request, model_admin):
        types = AuditEvent.objects.exclude(target_type="").order_by("target_type").values_list(
            "target_type", flat=True
        ).distinct()
        return [(value, value) for value in types]

    def queryset(self, request, queryset):
        return queryset.filter(target_type=self.value()) if self.value() else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(AuditedModelAdmin):
    """Read-only: the log is written by the hub's layers, never edited (the database refuses it too)."""

    list_display = ["at", "actor_display", "actor_kind", "action", "target_link", "outcome", "short_reason", "address"]
    list_filter = [ActorKindFilter, ActionFilter, "outcome", TargetTypeFilter]
    search_fields = ["actor_label", "action", "target_label", "target_id", "reason", "address"]
    date_hierarchy = "at"
    show_full_result_count = False
    list_select_related = ["actor"]
    fields = [
        "at", "actor", "actor_label", "actor_kind", "action", "target_type", "target_id", "target_label", "outcome",
        "reason", "details", "address",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="who", ordering="actor_label")
    def actor_display(self, event):
        return event.actor_label or event.get_actor_kind_display()

    @admin.display(description="target")
    def target_link(self, event):
        label = f"{event.target_type} {event.target_label or event.target_id}".strip()
        view = TARGET_ADMIN.get(event.target_type)
        if view and event.target_id.isdigit():
            return format_html('<a href="{}">{}</a>', reverse(view, args=[event.target_id]), label)
        return label or "—"

    @admin.display(description="reason")
    def short_reason(self, event):
        return event.reason if len(event.reason) <= 120 else event.reason[:117] + "…"


def run_for_each(modeladmin, request, queryset, service, done: str, refusals: tuple) -> None:
    """An admin action's body: call ``service`` on each selected row, tell staff the outcome row by row (a
    refusal names the current state), and audit each as ``<model>.<action>`` with its outcome."""
    action = f"{queryset.model._meta.model_name}.{request.POST.get('action', 'action')}"
    for obj in queryset:
        try:
            service(obj)
        except refusals as refusal:
            admin_refusal(request, action, obj, refusal)
            modeladmin.message_user(request, f"{obj}: {refusal}", messages.WARNING)
        else:
            admin_audit(request, action, obj)
            modeladmin.message_user(request, f"{obj}: {done}", messages.SUCCESS)
