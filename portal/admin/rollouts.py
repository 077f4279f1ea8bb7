"""Admin of releases and rollouts: make a release the default, start/pause/resume/cancel rollouts, and
read each wave's progress and why a rollout halted."""
from django.contrib import admin, messages
from django.db import IntegrityError

from cells.choices import ReleaseState, TargetState
from cells.errors import Refused
from cells.models import Release, Rollout, RolloutTarget, RolloutWave
from cells.states import RELEASE
from portal.admin.audit import AuditedModelAdmin, run_for_each
from provisioning import rollouts


def _each(modeladmin, request, queryset, service, done: str) -> None:
    run_for_each(modeladmin, request, queryset, service, done, (Refused, IntegrityError))


@admin.register(Release)
class ReleaseAdmin(AuditedModelAdmin):
    list_display = ["version", "image", "state", "created_at"]
    list_filter = ["state"]
    search_fields = ["version", "notes"]
    readonly_fields = ["state", "created_at"]
    actions = ["make_available", "make_default", "withdraw", "start_rollout"]

    @admin.action(description="Make available (may be rolled out)", permissions=["change"])
    def make_available(self, request, queryset):
        _each(self, request, queryset, lambda r: RELEASE.change(r, ReleaseState.AVAILABLE), "Available")

    @admin.action(description="Make the default for new signups", permissions=["change"])
    def make_default(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one release to be the default.", messages.ERROR)
            return
        _each(self, request, queryset, lambda r: rollouts.release_make_default(release=r), "Default")

    @admin.action(description="Withdraw (no new rollouts or signups)", permissions=["change"])
    def withdraw(self, request, queryset):
        _each(self, request, queryset, lambda r: RELEASE.change(r, ReleaseState.WITHDRAWN), "Withdrawn")

    @admin.action(description="Plan and start a rollout (defaults: batches of 10, 60 min bake)", permissions=["change"])
    def start_rollout(self, request, queryset):
        def plan_and_start(release):
            rollout = rollouts.rollout_create(release=release, requested_by=request.user)
            rollouts.rollout_start(rollout=rollout, requested_by=request.user)

        _each(self, request, queryset, plan_and_start, "Rollout started")


class WaveInline(admin.TabularInline):
    model = RolloutWave
    extra = 0
    can_delete = False
    fields = ["position", "ring", "state", "total", "upgrading", "succeeded", "failed", "skipped", "started_at",
              "bake_until", "finished_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Rollout)
class RolloutAdmin(AuditedModelAdmin):
    list_display = ["id", "release", "state", "batch_size", "bake_minutes", "created_by", "started_at", "finished_at"]
    list_filter = ["state"]
    list_select_related = ["release", "created_by"]
    readonly_fields = ["state", "halt_reason", "failed_instances", "created_by", "created_at", "started_at",
                       "finished_at"]
    inlines = [WaveInline]
    actions = ["start", "pause", "resume", "cancel"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "release"] if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        # A new rollout is planned by the service (waves and targets), not by a bare save.
        planned = rollouts.rollout_create(
            release=obj.release, requested_by=request.user, batch_size=obj.batch_size, bake_minutes=obj.bake_minutes,
            max_failures=obj.max_failures, max_failure_ratio=obj.max_failure_ratio,
        )
        obj.pk = planned.pk
        obj.refresh_from_db()

    @admin.display(description="failed upgrades")
    def failed_instances(self, rollout):
        names = RolloutTarget.objects.filter(rollout=rollout, state=TargetState.FAILED).values_list(
            "instance__name", flat=True
        )
        return ", ".join(names) or "—"

    @admin.action(description="Start", permissions=["change"])
    def start(self, request, queryset):
        _each(self, request, queryset, lambda r: rollouts.rollout_start(rollout=r, requested_by=request.user),
              "Started")

    @admin.action(description="Pause", permissions=["change"])
    def pause(self, request, queryset):
        _each(self, request, queryset, lambda r: rollouts.rollout_pause(rollout=r, requested_by=request.user),
              "Paused")

    @admin.action(description="Resume", permissions=["change"])
    def resume(self, request, queryset):
        _each(self, request, queryset, lambda r: rollouts.rollout_resume(rollout=r, requested_by=request.user),
              "Resumed")

    @admin.action(description="Cancel", permissions=["change"])
    def cancel(self, request, queryset):
        _each(self, request, queryset, lambda r: rollouts.rollout_cancel(rollout=r, requested_by=request.user),
              "Cancelled")
