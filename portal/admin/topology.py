"""Admin of the topology: regions, reefs, pools, shares, and the capacity shortfalls staff must fix.

List pages cost a constant number of queries: related rows come from ``list_select_related`` and
capacity from the annotations of ``cells.selectors``. Reef and pool actions (top up now, drain, mark
failed, replace, retire) call the services of ``provisioning.capacity``; a refusal names the current state.
"""
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from cells import selectors
from cells.errors import Refused
from cells.models import CapacityShortfall, Pool, Reef, Region, Share
from portal.admin.audit import AuditedModelAdmin, admin_audit, admin_refusal, run_for_each
from portal.admin.capacity import capacity_view
from provisioning.backups import share_scrub
from provisioning.capacity import (
    pool_activate,
    pool_drain,
    pool_instances,
    pool_mark_failed,
    pool_replace,
    pool_retire,
    pool_retire_blockers,
    pool_retire_summary,
    reef_activate,
    reef_capacity,
    reef_drain,
    reef_top_up,
)
from provisioning.dns_policy import region_refuse_split_dns
from provisioning.health import pool_alarm_states
from provisioning.lifecycle import instance_signup

REFUSALS = (Refused, IntegrityError)


def _each(modeladmin, request, queryset, service, done: str) -> None:
    run_for_each(modeladmin, request, queryset, service, done, REFUSALS)


class StatusByActions:
    """On an existing row the status is read-only: it changes through the actions (the state machine),
    never by editing the field."""

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "status"] if obj is not None and "status" not in fields else fields


def annotation(field: str, description: str):
    """A sortable list column showing an annotation that the admin's queryset computes (no query per row)."""

    @admin.display(description=description, ordering=field)
    def column(self, obj):
        return getattr(obj, field)

    return column


class RegionForm(forms.ModelForm):
    """Refuses a cloud whose DNS provider would split the hub domain (``region_refuse_split_dns``)."""

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("cloud"):
            try:
                region_refuse_split_dns(cloud=cleaned["cloud"], ignore_region_id=self.instance.pk)
            except Refused as refusal:
                self.add_error(refusal.field or None, refusal.message)
        return cleaned


@admin.register(Region)
class RegionAdmin(StatusByActions, AuditedModelAdmin):
    form = RegionForm
    list_display = ["slug", "name", "cloud", "location", "status", "reef_count", "instance_count", "free_slots"]
    list_filter = ["status", "cloud"]
    search_fields = ["slug", "name", "location"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return selectors.regions_with_capacity(super().get_queryset(request))

    reef_count = annotation("reef_count", "reefs")
    instance_count = annotation("instance_count", "instances")
    free_slots = annotation("free_instance_slots", "free instance slots")


class PlaceAloneForm(forms.Form):
    """A new instance placed alone on a reef: its name and its owner's existing account."""

    name = forms.CharField(min_length=3, max_length=40, help_text="The new instance's name (its DNS label).")
    owner = forms.CharField(
        label="Owner", max_length=254,
        help_text="The e-mail address or username of the customer's existing account.",
    )

    def clean_owner(self):
        who = self.cleaned_data["owner"].strip()
        User = get_user_model()
        owner = User.objects.filter(is_active=True, username__iexact=who).first() or \
            User.objects.filter(is_active=True, email__iexact=who).order_by("pk").first()
        if owner is None:
            raise forms.ValidationError(f"No active account is called or has the e-mail “{who}”.")
        return owner


class PoolInline(admin.TabularInline):
    model = Pool
    extra = 0
    fields = ["name", "kind", "provider", "capacity", "status", "dedicated"]
    show_change_link = True


@admin.register(Reef)
class ReefAdmin(StatusByActions, AuditedModelAdmin):
    list_display = [
        "slug", "region", "status", "rollout_ring", "used", "max_instances",
        "free_database", "free_storage", "free_compute", "placeable", "dedicated_to",
    ]
    list_filter = ["status", "region", "rollout_ring", ("dedicated_to", admin.EmptyFieldListFilter)]
    search_fields = ["slug", "region__slug", "ingress_address"]
    list_select_related = ["region", "dedicated_to"]
    readonly_fields = ["status_reason", "capacity_now", "dedicated_to"]
    inlines = [PoolInline]
    actions = ["top_up_now", "drain", "activate", "place_alone"]
    change_list_template = "admin/capacity_change_list.html"

    def get_queryset(self, request):
        return selectors.reefs_with_capacity(super().get_queryset(request))

    def get_urls(self):
        capacity = self.admin_site.admin_view(lambda request: capacity_view(request, self.admin_site))
        return [path("capacity/", capacity, name="cells_reef_capacity"), *super().get_urls()]

    @admin.display(description="capacity now")
    def capacity_now(self, reef):
        """The planner's reading of each kind with this reef's effective thresholds."""
        if reef.pk is None:
            return "—"
        plan = reef_capacity(reef=reef)
        if not plan.assessments:
            return f"not in service ({reef.status}): no top-ups"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} h + {} h</td>"
            "<td>{} × {}</td><td>{}</td></tr>",
            (
                (a.facts.kind, a.facts.used, a.facts.free, a.facts.coming, a.wanted, a.facts.thresholds.floor,
                 a.facts.thresholds.lead_time_hours, a.facts.thresholds.margin_hours, a.facts.provider,
                 a.facts.thresholds.pool_size, a.cannot_grow or a.verdict)
                for a in plan.assessments
            ),
        )
        link = reverse("admin:cells_reef_capacity") + f"?region={reef.region.slug}"
        return format_html(
            "<table><tr><th>kind</th><th>used</th><th>free</th><th>coming</th><th>wanted</th><th>floor</th>"
            "<th>lead + margin</th><th>next pools</th><th>verdict</th></tr>{}</table><a href=\"{}\">capacity page</a>",
            rows, link,
        )

    @admin.action(description="Top up the selected reefs now (by their thresholds)", permissions=["change"])
    def top_up_now(self, request, queryset):
        for reef in queryset.select_related("region"):
            try:
                operations = reef_top_up(reef=reef, requested_by=request.user)
            except REFUSALS as refusal:
                self.message_user(request, f"{reef}: {refusal}", messages.WARNING)
                continue
            if operations:
                ordered = ", ".join(f"{op.pool.kind} pool {op.pool.name} (operation #{op.pk})" for op in operations)
                self.message_user(request, f"{reef}: ordered {ordered}.", messages.SUCCESS)
                continue
            plan = reef_capacity(reef=reef)
            if plan.shortfalls:
                why = "; ".join(f"{s.kind}: short of {s.slots} — {s.reason}" for s in plan.shortfalls)
                self.message_user(request, f"{reef}: nothing ordered; {why}", messages.WARNING)
            else:
                enough = ", ".join(
                    f"{a.facts.kind} {a.facts.free} free + {a.facts.coming} coming ≥ {a.wanted}"
                    for a in plan.assessments
                )
                self.message_user(request, f"{reef} has enough: {enough}.", messages.INFO)

    @admin.action(description="Drain the selected reefs (no new instances, no top-ups)", permissions=["change"])
    def drain(self, request, queryset):
        _each(self, request, queryset, lambda reef: reef_drain(reef=reef, requested_by=request.user),
              "draining: it takes no new instance")

    @admin.action(description="Activate the selected reefs (take signups again)", permissions=["change"])
    def activate(self, request, queryset):
        _each(self, request, queryset, lambda reef: reef_activate(reef=reef, requested_by=request.user),
              "active: it takes new instances")

    @admin.action(description="Place a new instance alone on the selected reef (a dedicated reef)…",
                  permissions=["change"])
    def place_alone(self, request, queryset):
        """An intermediate page asks for the instance's name and owner; the instance is then signed up on this reef
        alone (``instance_signup(dedicated_reef=…)``): the reef takes no other instance and no top-up. A refusal
        (the reef not empty or not active, the name taken, no free slot) is shown on the form's field, nothing is
        created, and the refusal is audited; a success is audited with the operation it queued."""
        reefs = list(queryset.select_related("region")[:2])
        if len(reefs) != 1:
            self.message_user(request, "Select exactly one reef to place an instance on alone.", messages.WARNING)
            return None
        reef = reefs[0]
        form = PlaceAloneForm(request.POST if request.POST.get("apply") else None)
        if form.is_valid():
            name, owner = form.cleaned_data["name"], form.cleaned_data["owner"]
            refusal = None
            with transaction.atomic():  # the refusal's audit row commits with the shortfall a refusal records
                try:
                    operation = instance_signup(name=name, region=reef.region, owner=owner,
                                                requested_by=request.user, dedicated_reef=reef)
                except Refused as refused:
                    refusal = refused
                    admin_refusal(request, "reef.place_alone", reef, refusal, instance=name)
                else:
                    admin_audit(request, "reef.place_alone", reef, instance=name, operation=operation.pk)
            if refusal is not None:
                form.add_error(refusal.field if refusal.field in form.fields else None, str(refusal))
            else:
                self.message_user(
                    request, f"{reef}: {name} is placed alone on it and provisioning (operation #{operation.pk}); "
                    "the reef takes no other instance.", messages.SUCCESS,
                )
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Place a new instance alone on {reef}",
            "objects": [reef], "form": form, "action": "place_alone", "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/reef_place_alone.html", context)

    used = annotation("instance_count", "instances")
    free_database = annotation("free_database_slots", "free db")
    free_storage = annotation("free_storage_slots", "free shares")
    free_compute = annotation("free_compute_slots", "free compute")
    placeable = annotation("placeable_slots", "can place")


class ShareInline(admin.TabularInline):
    model = Share
    extra = 0
    fields = ["slot", "name", "endpoint", "status", "instance", "firewall_address"]
    raw_id_fields = ["instance"]


@admin.register(Pool)
class PoolAdmin(StatusByActions, AuditedModelAdmin):
    list_display = ["name", "reef", "kind", "provider", "status", "dedicated", "capacity", "used", "free"]
    list_filter = ["status", "kind", "provider", "dedicated", "reef__region"]
    search_fields = ["name", "external_id", "reef__slug"]
    list_select_related = ["reef__region"]
    readonly_fields = ["status_reason", "replaces", "replaced_by", "dependent_instances", "alarms"]
    inlines = [ShareInline]
    actions = ["drain", "activate", "mark_failed", "replace", "retire"]
    change_list_template = "admin/capacity_change_list.html"

    def get_queryset(self, request):
        return selectors.pools_with_usage(super().get_queryset(request))

    @admin.display(description="replaced by")
    def replaced_by(self, pool):
        replacement = pool.replacements.order_by("-pk").first() if pool.pk else None
        if replacement is None:
            return "—"
        url = reverse("admin:cells_pool_change", args=[replacement.pk])
        return format_html('<a href="{}">{}</a> ({})', url, replacement.name, replacement.status)

    @admin.display(description="cloud alarms")
    def alarms(self, pool):
        """The database pool's metric alarms and their states, read from the provider when the page opens."""
        if pool.pk is None or pool.kind != "database":
            return "—"
        if pool.status == "retired":  # deleted with the pool: no call to its cloud
            return "none (the pool is retired: its alarms were deleted with it)"
        states = pool_alarm_states(pool=pool)
        if isinstance(states, str):
            return states
        if not states:
            return "none (its provider has no cloud alarms)"
        return format_html_join(", ", "{} <b>{}</b>", sorted(states.items()))

    @admin.display(description="instances depending on it")
    def dependent_instances(self, pool):
        """For a failed pool: who is affected. Storage: the instances holding its shares."""
        if pool.pk is None:
            return "—"
        instances = list(pool_instances(pool=pool).only("pk", "name", "state")[:200])
        if not instances:
            return "none"
        return format_html_join(
            ", ", '<a href="{}">{}</a> ({})',
            ((reverse("admin:cells_instance_change", args=[i.pk]), i.name, i.state) for i in instances),
        )

    @admin.action(description="Drain the selected pools (no new instances)", permissions=["change"])
    def drain(self, request, queryset):
        _each(self, request, queryset, lambda pool: pool_drain(pool=pool, requested_by=request.user),
              "draining: it takes no new instance")

    @admin.action(description="Make the selected draining pools available again", permissions=["change"])
    def activate(self, request, queryset):
        _each(self, request, queryset, lambda pool: pool_activate(pool=pool, requested_by=request.user),
              "available: it takes new instances")

    @admin.action(description="Mark the selected pools failed…", permissions=["change"])
    def mark_failed(self, request, queryset):
        """A confirmation page first, listing the instances that depend on each pool and asking why."""
        pools = list(queryset.select_related("reef__region"))
        reason = request.POST.get("reason", "").strip()
        if request.POST.get("confirm") == "yes" and reason:
            for pool in pools:
                try:
                    affected = pool_mark_failed(pool=pool, reason=reason, requested_by=request.user)
                except REFUSALS as refusal:
                    self.message_user(request, f"{pool}: {refusal}", messages.WARNING)
                    continue
                names = ", ".join(instance.name for instance in affected) or "no instance"
                hint = " Replace it to move its shares to a new host." if pool.kind == "storage" else ""
                self.message_user(request, f"{pool} is failed; affected: {names}.{hint}", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Mark pools failed",
            "pools": [
                {"pool": pool, "instances": list(pool_instances(pool=pool).select_related("share"))} for pool in pools
            ],
            "reason": reason,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/capacity_pool_mark_failed.html", context)

    @admin.action(description="Replace the selected failed storage pools (a new host takes over their shares)",
                  permissions=["change"])
    def replace(self, request, queryset):
        for pool in queryset:
            try:
                operation = pool_replace(pool=pool, requested_by=request.user)
            except REFUSALS as refusal:
                self.message_user(request, f"{pool}: {refusal}", messages.WARNING)
                continue
            self.message_user(
                request,
                f"{pool}: replace operation #{operation.pk} {operation.state}; pool "
                f"{operation.params.get('new_pool')} takes over its {pool.shares.count()} shares.",
                messages.SUCCESS,
            )

    @admin.action(description="Retire the selected pools (delete what the hub made for them)…",
                  permissions=["change"])
    def retire(self, request, queryset):
        """A confirmation page first, listing for each pool what will be deleted in its cloud (its provider, its
        resource, the config naming its host, its shares and alarms) and what still uses it; then each pool's
        retirement is queued (the service audits it; a refusal is audited here)."""
        pools = list(queryset.select_related("reef__region"))
        if request.POST.get("confirm") == "yes":
            for pool in pools:
                try:
                    operation = pool_retire(pool=pool, requested_by=request.user)
                except REFUSALS as refusal:
                    admin_refusal(request, "pool.retire", pool, refusal)
                    self.message_user(request, f"{pool}: {refusal}", messages.WARNING)
                    continue
                self.message_user(
                    request, f"{pool}: retire operation #{operation.pk} {operation.state}; the pool is retired once "
                    "its resources are deleted.", messages.SUCCESS,
                )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Retire pools",
            "pools": [
                {"pool": pool, "deletes": pool_retire_summary(pool=pool), "blockers": pool_retire_blockers(pool=pool)}
                for pool in pools
            ],
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/capacity_pool_retire.html", context)

    used = annotation("used_slots", "used")
    free = annotation("free_slots", "free")


@admin.register(Share)
class ShareAdmin(AuditedModelAdmin):
    list_display = ["name", "pool", "slot", "status", "instance", "firewall_address", "endpoint"]
    list_filter = ["status", "pool__reef__region"]
    search_fields = ["name", "endpoint", "instance__name", "pool__name"]
    list_select_related = ["pool", "instance"]
    raw_id_fields = ["instance"]
    actions = ["scrub"]

    @admin.action(description="Scrub the selected failed shares and return them to their pools", permissions=["change"])
    def scrub(self, request, queryset):
        _each(self, request, queryset, lambda share: share_scrub(share=share, requested_by=request.user),
              "scrub queued: it returns to its pool once wiped and verified empty")


@admin.register(CapacityShortfall)
class CapacityShortfallAdmin(AuditedModelAdmin):
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
