"""Admin of instances: state, placement, version, health, their operations; actions that start work.

Backup, restore and decommission actions call the services of ``provisioning.backups``; the restore and
decommission actions go through an intermediate page (a time inside the restorable window, the
instance's name typed out) and act on one instance at a time. Forcing a state and revealing the database
connection string ask for a reason on an intermediate page too; dropping the databases a restore replaced asks
for confirmation on a page of its own. Every action is audited (``admin_audit``), refusals included.

Staff keep the lifecycle's rules: an instance is created only by signup (placement and a provision operation), so the
admin has no "add"; it ends only by decommission, so no "delete"; and what placement and provisioning decided — its
name (its hostname, DNS record, database and share names derive from it), hostname, region, reef, pools, tier and
version — is read-only here.
"""
from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import IntegrityError, connection
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from cells.choices import OPERATION_RETRYABLE_STATES, InstanceState, OperationKind
from cells.errors import Refused
from cells.models import Instance, Operation, Release
from portal.admin.audit import AuditedModelAdmin, admin_audit, admin_refusal
from provisioning.backups import (
    instance_backup,
    instance_decommission,
    instance_restore,
    instance_restore_confirm,
    instance_restore_files,
    restorable_window,
)
from provisioning.backups.restore import when
from provisioning.backups.selectors import (
    current_database,
    instance_database_credentials,
    kept_old_databases,
    usable_backups,
)
from provisioning.drivers.base import DriverError
from provisioning.health import instance_health_overview
from provisioning.lifecycle import instance_force_state, instance_start, instance_stop
from provisioning.models import BackupKind
from provisioning.operations import operation_retry
from provisioning.ports import instance_address

RESTORE_HELP = (
    "Restoring to a time uses the latest database backup taken at or before it. The backup is restored into a "
    "new database and the instance is switched to it in one step; the current database is kept until the "
    "restore is confirmed or its keep period passes."
)


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


class PointInTimeForm(forms.Form):
    point_in_time = forms.DateTimeField(
        label="Restore to (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
    )

    def __init__(self, *args, window=None, **kwargs):
        super().__init__(*args, **kwargs)
        if window:
            attrs = self.fields["point_in_time"].widget.attrs
            attrs["min"], attrs["max"] = (moment.strftime("%Y-%m-%dT%H:%M:%S") for moment in (window.start, window.end))


class FilesBackupForm(forms.Form):
    backup = forms.ModelChoiceField(queryset=None, widget=forms.RadioSelect, empty_label=None)

    def __init__(self, *args, instance, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["backup"].queryset = usable_backups(instance, BackupKind.FILES)
        self.fields["backup"].label_from_instance = lambda backup: (
            f"#{backup.pk} — {when(backup.taken_at)} — {backup.get_reason_display()} — "
            f"{backup.details.get('files', '?')} files"
        )


class DecommissionForm(forms.Form):
    confirm_name = forms.CharField(label="Type the instance's name to confirm", max_length=100)


class ForceStateForm(forms.Form):
    state = forms.ChoiceField(label="New state", choices=InstanceState.choices)
    seen_state = forms.CharField(widget=forms.HiddenInput)
    reason = forms.CharField(label="Why", max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))


class ConfirmDropForm(forms.Form):
    confirm = forms.BooleanField(
        label="I understand the previous databases are deleted for good", required=True,
        error_messages={"required": "Tick the box to confirm the deletion."},
    )


class RevealForm(forms.Form):
    reason = forms.CharField(
        label="Why do you need it?", max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded in the audit log with your name.",
    )


class EstimatedCountPaginator(Paginator):
    """A paginator that, for the unfiltered fleet on PostgreSQL, takes the planner's row estimate
    (``pg_class.reltuples``, kept by autovacuum) instead of a COUNT(*) over every instance; a filtered list, a small
    table or a table never analysed is counted exactly."""

    EXACT_BELOW = 10_000

    @cached_property
    def count(self):
        query = getattr(self.object_list, "query", None)
        if connection.vendor == "postgresql" and query is not None and not query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                               [self.object_list.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] >= self.EXACT_BELOW:
                return int(row[0])
        return super().count


class ServerVersionFilter(admin.SimpleListFilter):
    """Server versions from the releases (a small table), not a DISTINCT over the fleet."""

    title = "server version"
    parameter_name = "server_version"

    def lookups(self, request, model_admin):
        return [(version, version) for version in Release.objects.order_by("-created_at").values_list("version",
                                                                                                      flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(server_version=self.value()) if self.value() else queryset


@admin.register(Instance)
class InstanceAdmin(AuditedModelAdmin):
    list_display = ["name", "owner", "region", "reef", "state", "server_version", "tier", "hostname", "created_at"]
    # Every filter's choices come from a small table or the code: no DISTINCT over the fleet per page view.
    list_filter = ["state", "tier", "region", ServerVersionFilter]
    paginator = EstimatedCountPaginator
    search_fields = ["name", "hostname", "owner__email", "owner__username"]
    list_select_related = ["owner", "region", "reef__region"]
    raw_id_fields = ["owner", "reef", "database_pool", "compute_pool"]
    # What signup, placement and provisioning decided; renaming would leave the hostname, DNS and resources behind.
    LIFECYCLE_FIELDS = [
        "name", "hostname", "region", "reef", "database_pool", "compute_pool", "tier", "server_version",
    ]
    readonly_fields = [
        *LIFECYCLE_FIELDS, "state", "address", "created_at", "updated_at", "database_in_use", "backups",
        "health_history",
    ]
    show_full_result_count = False  # a second COUNT(*) over the whole table buys nothing
    inlines = [OperationInline]
    actions = [
        "retry_provision", "back_up_now", "restore_to_point_in_time", "restore_files", "confirm_restore",
        "decommission", "force_state", "reveal_credentials", "pin_version", "unpin_version", "stop", "start",
    ]

    def has_add_permission(self, request):
        """Instances are made by signup (the site, the API), which places them and queues their provision."""
        return False

    def has_delete_permission(self, request, obj=None):
        """Instances end by the decommission action, which releases everything they hold."""
        return False

    def _power(self, request, queryset, service, action: str, verb: str):
        queued = []
        for instance in queryset:
            try:
                operation = service(instance=instance, requested_by=request.user)
            except Refused as refusal:
                admin_refusal(request, action, instance, refusal)
                self.message_user(request, f"{instance.name}: {refusal}", messages.WARNING)
            else:
                admin_audit(request, action, instance, operation=operation.pk)
                queued.append(f"{instance.name} (operation #{operation.pk})")
        if queued:
            self.message_user(request, f"{verb}: {', '.join(queued)}.", messages.SUCCESS)

    @admin.action(description="Stop the selected instances (their data and addresses stay)", permissions=["change"])
    def stop(self, request, queryset):
        self._power(request, queryset, instance_stop, "instance.stop", "Stopping")

    @admin.action(description="Start the selected stopped instances", permissions=["change"])
    def start(self, request, queryset):
        self._power(request, queryset, instance_start, "instance.start", "Starting")

    @admin.display(description="address")
    def address(self, instance):
        address = instance_address(instance)
        return format_html('<a href="{}">{}</a>', address, address) if address else "—"

    def _set_pinned(self, request, queryset, pinned: bool):
        names = list(queryset.values_list("name", flat=True))
        queryset.update(version_pinned=pinned)
        for instance in queryset:
            admin_audit(request, "instance.pin" if pinned else "instance.unpin", instance)
        verb = "Pinned to their versions (rollouts leave them alone)" if pinned else "Unpinned"
        self.message_user(request, f"{verb}: {', '.join(names)}", messages.SUCCESS)

    @admin.action(description="Pin to the current version (exempt from rollouts)", permissions=["change"])
    def pin_version(self, request, queryset):
        self._set_pinned(request, queryset, True)

    @admin.action(description="Unpin (rollouts may upgrade them)", permissions=["change"])
    def unpin_version(self, request, queryset):
        self._set_pinned(request, queryset, False)

    @admin.display(description="database in use")
    def database_in_use(self, instance):
        if not instance.pk:
            return "—"
        return current_database(instance) or "the one named after its id"

    @admin.display(description="backups")
    def backups(self, instance):
        if not instance.pk:
            return "—"
        window = restorable_window(instance=instance)
        span = (f"restorable {when(window.start)} to {when(window.end)}{' (any second)' if window.continuous else ''}; "
                f"RPO {window.rpo_seconds} s" if window else "no database backup yet")
        url = reverse("admin:provisioning_backup_changelist") + f"?instance__id__exact={instance.pk}"
        return format_html('<a href="{}">all backups</a> ({})', url, span)

    @admin.display(description="health")
    def health_history(self, instance):
        """The current health (since when, last checked when, and a flag for staff) and the last changes of its
        health, newest first (a check that finds what the one before found is not a change)."""
        if not instance.pk:
            return "—"
        overview = instance_health_overview(instance)
        current, checks = overview["health"], overview["health_checks"]
        if current is None or current.checked_at is None:
            return "not checked yet"
        summary = f"{current.get_status_display()}"
        if current.since:
            summary += f" since {current.since:%Y-%m-%d %H:%M:%S} UTC"
        summary += f" (last checked {current.checked_at:%Y-%m-%d %H:%M:%S} UTC: {current.detail})"
        if current.restart_attempts:
            summary += f", {current.restart_attempts} restart(s) since it was last healthy"
        flag = format_html('<p class="errornote">Flagged {}: {}</p>', current.flagged_at, current.flag_reason) if (
            current.flagged_at) else ""
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((f"{c.checked_at:%Y-%m-%d %H:%M:%S}", c.get_status_display(), c.get_action_display(), c.detail)
             for c in checks),
        )
        url = reverse("admin:provisioning_healthcheck_changelist") + f"?instance__id__exact={instance.pk}"
        return format_html(
            '{}<p>{} — <a href="{}">all changes</a></p><table data-role="health-checks"><tr><th>since (UTC)</th>'
            "<th>status</th><th>action</th><th>detail</th></tr>{}</table>",
            flag, summary, url, rows,
        )

    @admin.action(description="Retry the failed provision of the selected instances", permissions=["change"])
    def retry_provision(self, request, queryset):
        failed = Operation.objects.filter(
            instance__in=queryset, kind=OperationKind.PROVISION, state__in=list(OPERATION_RETRYABLE_STATES)
        ).select_related("instance")
        retried = []
        for operation in failed:
            try:
                operation_retry(operation=operation, requested_by=request.user)
                retried.append(operation.instance.name)
                admin_audit(request, "instance.retry_provision", operation.instance, operation=operation.pk)
            except (Refused, IntegrityError) as refusal:
                admin_refusal(request, "instance.retry_provision", operation.instance, refusal)
                self.message_user(request, f"{operation.instance}: {refusal}", messages.WARNING)
        if retried:
            self.message_user(request, f"Provision queued again for {', '.join(retried)}.", messages.SUCCESS)
        else:
            admin_audit(request, "instance.retry_provision", None, "refused",
                        reason="none of the selected instances has a failed provision",
                        instances=[instance.name for instance in queryset])
            self.message_user(request, "None of the selected instances has a failed provision.", messages.WARNING)

    @admin.action(description="Back up now (database and files)", permissions=["change"])
    def back_up_now(self, request, queryset):
        queued = []
        for instance in queryset:
            try:
                operation = instance_backup(
                    instance=instance, kinds=[BackupKind.DATABASE, BackupKind.FILES], requested_by=request.user
                )
            except Refused as refusal:
                admin_refusal(request, "instance.backup", instance, refusal)
                self.message_user(request, str(refusal), messages.WARNING)  # it names the instance
            else:
                admin_audit(request, "instance.backup", instance, operation=operation.pk)
                queued.append(f"{instance.name} (operation #{operation.pk})")
        if queued:
            self.message_user(request, f"Backup queued for {', '.join(queued)}.", messages.SUCCESS)

    def _one(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one instance for this action.", messages.WARNING)
            return None
        return queryset.get()

    def _page(self, request, template, instance, action, form, **context):
        return TemplateResponse(request, template, {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "instance": instance,
            "action": action,
            "form": form,
            "title": context.pop("title"),
            **context,
        })

    def _start_from_form(self, request, instance, form, audit_action: str, start, done, error_field=None):
        """Start ``start(data)`` once ``form`` is valid: on success audit it, tell staff ``done(operation)`` and
        return True; on a refusal audit it and put it on the form (on ``error_field`` when the input is at fault)."""
        if not form.is_valid():
            return False
        try:
            operation = start(form.cleaned_data)
        except Refused as refusal:
            admin_refusal(request, audit_action, instance, refusal)
            form.add_error(error_field if getattr(refusal, "field", None) else None, str(refusal))
            return False
        admin_audit(request, audit_action, instance, operation=operation.pk)
        self.message_user(request, f"{done(operation)} (operation #{operation.pk}).", messages.SUCCESS)
        return True

    @admin.action(description="Restore the database to a point in time…", permissions=["change"])
    def restore_to_point_in_time(self, request, queryset):
        instance = self._one(request, queryset)
        if instance is None:
            return None
        window = restorable_window(instance=instance)
        form = PointInTimeForm(request.POST if "apply" in request.POST else None, window=window)
        if self._start_from_form(
            request, instance, form, "instance.restore",
            lambda data: instance_restore(instance=instance, point_in_time=data["point_in_time"],
                                          requested_by=request.user),
            lambda op: f"Restore of {instance.name} to {when(op.restores.get().point_in_time)} queued",
            error_field="point_in_time",
        ):
            return None
        return self._page(
            request, "admin/instance_restore.html", instance, "restore_to_point_in_time", form,
            title=f"Restore {instance.name} to a point in time", window=window, help=RESTORE_HELP,
        )

    @admin.action(description="Restore files from a backup…", permissions=["change"])
    def restore_files(self, request, queryset):
        instance = self._one(request, queryset)
        if instance is None:
            return None
        form = FilesBackupForm(request.POST if "apply" in request.POST else None, instance=instance)
        if self._start_from_form(
            request, instance, form, "instance.restore_files",
            lambda data: instance_restore_files(instance=instance, backup=data["backup"], requested_by=request.user),
            lambda op: f"Files restore of {instance.name} queued",
        ):
            return None
        return self._page(
            request, "admin/instance_restore_files.html", instance, "restore_files", form,
            title=f"Restore the files of {instance.name}",
        )

    @admin.action(description="Confirm restores: delete the replaced databases now…", permissions=["change"])
    def confirm_restore(self, request, queryset):
        """Delete the databases the selected instances' restores replaced — after a confirmation page that lists
        them; nothing is deleted without it."""
        selected = list(queryset)
        form = ConfirmDropForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            kept = [(instance, list(kept_old_databases(instance))) for instance in selected]
            return TemplateResponse(request, "admin/instance_confirm_restore.html", {
                **self.admin_site.each_context(request),
                "opts": self.model._meta, "objects": selected, "kept": kept, "form": form,
                "action": "confirm_restore", "title": "Delete the databases replaced by restores",
            })
        for instance in selected:
            try:
                dropped = instance_restore_confirm(instance=instance, requested_by=request.user)
            except (Refused, DriverError) as refusal:
                outcome = "refused" if isinstance(refusal, Refused) else "failed"
                admin_audit(request, "instance.restore_confirm", instance, outcome, reason=str(refusal))
                self.message_user(request, f"{instance}: {refusal}", messages.WARNING)
            else:
                admin_audit(request, "instance.restore_confirm", instance, dropped=dropped)
                self.message_user(request, f"{instance}: dropped {', '.join(dropped)}.", messages.SUCCESS)

    @admin.action(description="Decommission…", permissions=["change"])
    def decommission(self, request, queryset):
        instance = self._one(request, queryset)
        if instance is None:
            return None
        form = DecommissionForm(request.POST if "apply" in request.POST else None)
        if self._start_from_form(
            request, instance, form, "instance.decommission",
            lambda data: instance_decommission(instance=instance, confirm_name=data["confirm_name"],
                                               requested_by=request.user),
            lambda op: f"Decommission of {instance.name} queued",
            error_field="confirm_name",
        ):
            return None
        return self._page(
            request, "admin/instance_decommission.html", instance, "decommission", form,
            title=f"Decommission {instance.name}",
        )

    @admin.action(description="Force a state (staff repair)…", permissions=["change"])
    def force_state(self, request, queryset):
        """Put one instance into a state of staff's choosing, from the state the page showed; audited with why."""
        instance = self._one(request, queryset)
        if instance is None:
            return None
        form = ForceStateForm(
            request.POST if "apply" in request.POST else None, initial={"seen_state": instance.state}
        )
        if form.is_valid():
            data = form.cleaned_data
            try:
                instance_force_state(
                    instance=instance, state=data["state"], expected_state=data["seen_state"],
                    reason=data["reason"], forced_by=request.user,
                )
            except Refused as refusal:
                admin_refusal(request, "instance.force_state", instance, refusal, to_state=data["state"])
                form.add_error(getattr(refusal, "field", None) if getattr(refusal, "field", None) in form.fields
                               else None, str(refusal))
            else:
                admin_audit(request, "instance.force_state", instance, reason=data["reason"],
                            from_state=data["seen_state"], to_state=data["state"])
                self.message_user(
                    request, f"{instance.name} forced from {data['seen_state']} to {data['state']}.", messages.SUCCESS
                )
                return None
        seen = form.data.get("seen_state") if form.is_bound else instance.state
        return self._page(
            request, "admin/instance_force_state.html", instance, "force_state", form,
            title=f"Force the state of {instance.name}", seen_state=seen,
        )

    @admin.action(description="Reveal the database connection string…", permissions=["change"])
    def reveal_credentials(self, request, queryset):
        """Show one instance's connection string once, after a reason is given; every reveal is audited."""
        instance = self._one(request, queryset)
        if instance is None:
            return None
        form = RevealForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            reason = form.cleaned_data["reason"]
            try:
                credentials = instance_database_credentials(instance=instance)
            except Refused as refusal:
                admin_audit(request, "credentials.reveal", instance, "refused", reason=str(refusal))
                form.add_error(None, str(refusal))
            except DriverError as error:
                admin_audit(request, "credentials.reveal", instance, "failed", reason=str(error))
                form.add_error(None, f"The database pool did not answer: {error}")
            else:
                admin_audit(request, "credentials.reveal", instance, reason=reason,
                            database=credentials.database, login=credentials.login)
                response = self._page(
                    request, "admin/instance_revealed.html", instance, "reveal_credentials", form,
                    title=f"Connection string of {instance.name}", credentials=credentials,
                )
                response["Cache-Control"] = "no-store"
                return response
        return self._page(
            request, "admin/instance_reveal.html", instance, "reveal_credentials", form,
            title=f"Reveal the connection string of {instance.name}",
        )
