"""Fleet health for staff: instances' health and flags, the check history, and the reconciler's findings.

Health rows and checks are written by the health pass: read-only here, except clearing a flag. Findings are written
by the reconciler; staff dismiss them, or — for a resource no instance has — confirm its clean-up on an
intermediate page, after which it is deleted through its driver. Every decision is audited.
"""
from django import forms
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from cells.errors import Refused
from portal.admin.audit import AuditedModelAdmin, admin_audit, admin_refusal
from provisioning.drivers.base import DriverError
from provisioning.health import instance_health_flag_clear
from provisioning.models import HealthCheck, InstanceHealth, Orphan, OrphanDirection, OrphanState
from provisioning.reconcile import orphan_clean, orphan_dismiss, reconcile_pass


class ReadOnly(AuditedModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_act_permission(self, request):
        return request.user.is_active and request.user.is_staff and request.user.has_perm("cells.change_instance")

    def _page(self, request, template, objects, action, form, title):
        return TemplateResponse(request, template, {
            **self.admin_site.each_context(request),
            "opts": self.model._meta, "objects": objects, "form": form, "action": action, "title": title,
        })


class ConfirmForm(forms.Form):
    confirm = forms.BooleanField(
        label="I checked these resources belong to nobody and want them deleted", required=True,
    )


class ReasonForm(forms.Form):
    reason = forms.CharField(label="Why", max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))


class FlaggedFilter(admin.SimpleListFilter):
    title = "flagged for staff"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [("yes", "Flagged"), ("no", "Not flagged")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(flagged_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(flagged_at__isnull=True)
        return queryset


@admin.register(InstanceHealth)
class InstanceHealthAdmin(ReadOnly):
    list_display = [
        "instance", "status", "since", "checked_at", "action", "restart_attempts", "last_restart_at", "flagged_at",
        "flag_reason",
    ]
    list_filter = [FlaggedFilter, "status"]
    search_fields = ["instance__name", "detail", "flag_reason"]
    list_select_related = ["instance"]
    fields = [
        "instance", "status", "since", "checked_at", "action", "detail", "unhealthy_since", "restart_attempts",
        "last_restart_at", "flagged_at", "flag_reason", "history",
    ]
    readonly_fields = fields
    actions = ["clear_flag"]

    @admin.display(description="history")
    def history(self, health):
        url = reverse("admin:provisioning_healthcheck_changelist") + f"?instance__id__exact={health.instance_id}"
        return format_html('<a href="{}">every change of the health of {}</a>', url, health.instance)

    @admin.action(description="Clear the flag (gives the automatic restarts back)…", permissions=["act"])
    def clear_flag(self, request, queryset):
        selected = list(queryset.select_related("instance"))
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self._page(request, "admin/health_clear_flag.html", selected, "clear_flag", form, "Clear flags")
        for health in selected:
            if instance_health_flag_clear(instance=health.instance):
                admin_audit(request, "instance.health_flag_clear", health.instance, reason=form.cleaned_data["reason"])
                self.message_user(request, f"{health.instance}: flag cleared.", messages.SUCCESS)
            else:
                admin_audit(request, "instance.health_flag_clear", health.instance, "refused", reason="not flagged")
                self.message_user(request, f"{health.instance} was not flagged.", messages.WARNING)
        return None


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnly):
    list_display = ["checked_at", "instance", "status", "action", "detail"]
    list_filter = ["status", "action"]
    search_fields = ["instance__name", "detail"]
    list_select_related = ["instance"]
    date_hierarchy = "checked_at"
    show_full_result_count = False
    fields = ["instance", "checked_at", "status", "action", "detail", "details"]
    readonly_fields = fields


@admin.register(Orphan)
class OrphanAdmin(ReadOnly):
    """Findings of the reconciler; ``Reconcile now`` above the list runs a pass at once."""

    list_display = ["resource_name", "kind", "direction", "state", "pool", "region", "instance", "found_at",
                    "last_seen_at", "confirmed_by"]
    list_filter = ["state", "direction", "kind", "region"]
    search_fields = ["resource_name", "detail", "instance__name", "pool__name"]
    list_select_related = ["pool", "region", "instance", "confirmed_by"]
    date_hierarchy = "found_at"
    fields = [
        "kind", "direction", "state", "resource_name", "pool", "region", "instance", "detail", "found_at",
        "last_seen_at", "confirmed_by", "confirmed_at", "closed_at", "note", "error",
    ]
    readonly_fields = fields
    actions = ["clean_up", "dismiss"]
    change_list_template = "admin/orphan_change_list.html"

    def get_urls(self):
        return [
            path("reconcile/", self.admin_site.admin_view(require_POST(self.reconcile_now)),
                 name="provisioning_orphan_reconcile"),
            *super().get_urls(),
        ]

    def reconcile_now(self, request):
        if not self.has_act_permission(request):
            admin_audit(request, "reconcile.run", None, "refused", reason="read-only staff")
            self.message_user(request, "Only staff who act may run the reconciler.", messages.ERROR)
        else:
            summary = reconcile_pass()
            admin_audit(request, "reconcile.run", None, found=summary["found"], errors=summary["errors"])
            found = ", ".join(f"{count} {what}" for what, count in sorted(summary["found"].items())) or "nothing"
            self.message_user(request, f"Reconciled: found {found}; {summary['resolved']} resolved.", messages.SUCCESS)
            for error in summary["errors"]:
                self.message_user(request, f"Not judged: {error}", messages.WARNING)
        return redirect("admin:provisioning_orphan_changelist")

    @admin.action(description="Clean up the selected unclaimed resources (delete them)…", permissions=["act"])
    def clean_up(self, request, queryset):
        """Delete, through their drivers, the resources of the selected findings — only after an explicit
        confirmation on an intermediate page; findings about missing resources are refused."""
        selected = list(queryset.select_related("pool", "region", "instance"))
        form = ConfirmForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            cleanable = [o for o in selected if o.direction == OrphanDirection.UNCLAIMED and o.state in {
                OrphanState.OPEN, OrphanState.CONFIRMED}]
            return self._page(request, "admin/orphan_clean.html", cleanable or selected, "clean_up", form,
                              "Delete unclaimed resources")
        for orphan in selected:
            try:
                note = orphan_clean(orphan=orphan, confirmed_by=request.user)
            except Refused as refusal:
                admin_refusal(request, "orphan.clean", orphan, refusal)
                self.message_user(request, str(refusal), messages.WARNING)
            except DriverError as error:
                admin_audit(request, "orphan.clean", orphan, "failed", reason=str(error))
                self.message_user(request, f"{orphan}: the driver refused: {error}", messages.ERROR)
            else:
                admin_audit(request, "orphan.clean", orphan, reason=note, resource=orphan.resource_name)
                self.message_user(request, note, messages.SUCCESS)
        return None

    @admin.action(description="Dismiss the selected findings…", permissions=["act"])
    def dismiss(self, request, queryset):
        selected = list(queryset)
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self._page(request, "admin/orphan_dismiss.html", selected, "dismiss", form, "Dismiss findings")
        for orphan in selected:
            try:
                orphan_dismiss(orphan=orphan, dismissed_by=request.user, reason=form.cleaned_data["reason"])
            except Refused as refusal:
                admin_refusal(request, "orphan.dismiss", orphan, refusal)
                self.message_user(request, str(refusal), messages.WARNING)
            else:
                admin_audit(request, "orphan.dismiss", orphan, reason=form.cleaned_data["reason"])
        return None
