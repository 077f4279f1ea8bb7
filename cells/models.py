"""The cell model: regions → reefs → pools → shares, and the instances and operations placed on them.

Rules that must hold whatever code writes the rows are database constraints here (checks, partial
unique indexes) or triggers (migration 0002: a share's slot is below its pool's capacity and its
pool is a storage pool). State changes go through ``cells.states``, never through ``save()``.
"""
from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from cells import choices
from cells.choices import (
    PROVIDERS_BY_KIND,
    ActorKind,
    AuditOutcome,
    CleanupState,
    InstanceState,
    OperationKind,
    OperationState,
    PoolKind,
    PoolStatus,
    ShareStatus,
)
from cells.thresholds import thresholds_validate
from cells.validators import (
    validate_image_reference,
    validate_instance_name,
    validate_pool_config,
    validate_release_version,
    validate_safe_text,
)


class _DatabaseCounted(models.Model):
    """A model with counters the database keeps (``COUNTERS``): ``save()`` of a row read earlier never writes them
    back, so a stale copy in memory cannot overwrite what the triggers counted since."""

    COUNTERS: tuple[str, ...] = ()

    class Meta:
        abstract = True

    def save(self, *args, update_fields=None, **kwargs):
        if update_fields is None and not self._state.adding:
            update_fields = [
                f.attname for f in self._meta.concrete_fields if not f.primary_key and f.attname not in self.COUNTERS
            ]
        super().save(*args, update_fields=update_fields, **kwargs)


class Region(models.Model):
    """One cloud region; only an active region takes signups."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100, validators=[validate_safe_text])
    cloud = models.CharField(max_length=10, choices=choices.Cloud.choices, default=choices.Cloud.LOCAL)
    location = models.CharField(
        max_length=50, blank=True, validators=[validate_safe_text],
        help_text="The provider's own location code, e.g. westus2 or us-east-1.",
    )
    status = models.CharField(
        max_length=10, choices=choices.RegionStatus.choices, default=choices.RegionStatus.ACTIVE, db_index=True
    )
    maintenance_weekday = models.PositiveSmallIntegerField(
        default=6, choices=choices.WEEKDAYS, help_text="Default weekly maintenance window: day (UTC)."
    )
    maintenance_hour = models.PositiveSmallIntegerField(default=2, help_text="…and the hour it opens (UTC, 0–23).")

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(condition=Q(cloud__in=choices.Cloud.values), name="region_cloud_valid"),
            models.CheckConstraint(condition=Q(status__in=choices.RegionStatus.values), name="region_status_valid"),
            models.CheckConstraint(
                condition=Q(maintenance_weekday__lte=6, maintenance_hour__lte=23), name="region_window_valid"
            ),
        ]

    def __str__(self):
        return self.slug


def validate_capacity_overrides(value) -> None:
    """Overrides name known ``CELLHUB["CAPACITY"]`` keys with values of the right shape (see
    ``cells.thresholds``); raises ``ValidationError`` naming the first fault."""
    thresholds_validate(value)


class Reef(_DatabaseCounted):
    """A set of shared pools inside a region; reefs share nothing, so one reef's outage stays its own."""

    COUNTERS = ("placed_instances",)

    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="reefs")
    # No single-column indexes on slug or status: a region holds few reefs (reef_slug_unique_in_region and
    # reef_roomiest_active serve the look-ups), and every placement rewrites its reef's index entries.
    slug = models.SlugField(max_length=50, db_index=False)
    status = models.CharField(
        max_length=12, choices=choices.ReefStatus.choices, default=choices.ReefStatus.PROVISIONING
    )
    max_instances = models.PositiveIntegerField(default=500)
    rollout_ring = models.PositiveSmallIntegerField(default=1, help_text="0 is the canary ring, upgraded first.")
    ingress_address = models.CharField(max_length=255, blank=True, help_text="IP or hostname DNS records point to.")
    capacity_overrides = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_capacity_overrides],
        help_text='This reef\'s top-up thresholds over CELLHUB["CAPACITY"], e.g. {"FLOOR": {"storage": 20}, '
        '"LEAD_TIME_HOURS": {"aws_storage_gateway": 6}, "MARGIN_HOURS": 12, "MAX_POOLS_PER_PASS": 0}.',
    )
    status_reason = models.CharField(max_length=500, blank=True, help_text="Why and by whom the status last changed.")
    dedicated_to = models.OneToOneField(
        "Instance", null=True, blank=True, on_delete=models.SET_NULL, related_name="dedicated_reef",
        help_text="The one instance this reef holds (a dedicated reef): it takes no other instance and no top-up.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Kept by the database itself (triggers on cells_instance, migration 0010), in the transaction that changes an
    # instance; the reconciler compares it with the rows. Never written by the hub's code.
    placed_instances = models.PositiveIntegerField(
        default=0, editable=False, help_text="Slot-holding instances placed in this reef (a counter)."
    )

    class Meta:
        ordering = ["region__slug", "slug"]
        constraints = [
            models.UniqueConstraint(fields=["region", "slug"], name="reef_slug_unique_in_region"),
            models.CheckConstraint(condition=Q(status__in=choices.ReefStatus.values), name="reef_status_valid"),
            models.CheckConstraint(condition=Q(max_instances__gte=1), name="reef_max_instances_positive"),
            # An over-full reef is refused by the database, whatever code places the instance.
            models.CheckConstraint(
                condition=Q(placed_instances__lte=models.F("max_instances")), name="reef_placed_within_limit"
            ),
        ]
        # Placement walks a region's active reefs roomiest first and stops at the first that fits.
        indexes = [
            models.Index(
                models.F("region"), (models.F("max_instances") - models.F("placed_instances")).desc(), models.F("id"),
                condition=Q(status=choices.ReefStatus.ACTIVE), name="reef_roomiest_active",
            )
        ]

    def __str__(self):
        return f"{self.region.slug}/{self.slug}" if "region" in self._state.fields_cache else self.slug


def _provider_matches_kind() -> Q:
    condition = Q()
    for kind, providers in PROVIDERS_BY_KIND.items():
        condition |= Q(kind=kind, provider__in=[str(p) for p in providers])
    return condition


class Pool(_DatabaseCounted):
    """One unit of capacity of one kind inside a reef, counted in slots.

    ``config`` holds the provider's non-secret settings (server address, account name, cluster
    context); credentials come from the environment or the provider's credential chain.
    """

    COUNTERS = ("slots_held", "shares_available")

    reef = models.ForeignKey(Reef, on_delete=models.PROTECT, related_name="pools")
    name = models.SlugField(max_length=63)
    kind = models.CharField(max_length=10, choices=PoolKind.choices)
    provider = models.CharField(max_length=30, choices=choices.Provider.choices)
    external_id = models.CharField(max_length=500, blank=True, help_text="The provider's id of the pool's resource.")
    capacity = models.PositiveIntegerField(help_text="Slots: databases, shares or deployments the pool holds.")
    status = models.CharField(max_length=12, choices=PoolStatus.choices, default=PoolStatus.PROVISIONING, db_index=True)
    dedicated = models.BooleanField(default=False, help_text="Reserved for a single instance.")
    config = models.JSONField(
        default=dict, blank=True, validators=[validate_pool_config],
        help_text="A JSON object; keys ending in _env name the CELLHUB_POOL_SECRET_… variable holding a secret.",
    )
    status_reason = models.CharField(max_length=500, blank=True, help_text="Why and by whom the status last changed.")
    replaces = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="replacements",
        help_text="The failed storage pool whose shares this pool took over.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Counters kept by the database (triggers on cells_instance and cells_share, migration 0010) in the transaction
    # that changes the rows; the reconciler compares them with the rows. Never written by the hub's code.
    slots_held = models.PositiveIntegerField(
        default=0, editable=False,
        help_text="Slots in use (a counter): slot-holding instances on a database or compute pool; assigned, "
        "archiving or scrubbing shares of a storage pool.",
    )
    shares_available = models.PositiveIntegerField(
        default=0, editable=False, help_text="Available shares of a storage pool (a counter)."
    )

    class Meta:
        ordering = ["reef_id", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["reef", "name"], name="pool_name_unique_in_reef"),
            models.CheckConstraint(condition=Q(kind__in=PoolKind.values), name="pool_kind_valid"),
            models.CheckConstraint(condition=_provider_matches_kind(), name="pool_provider_matches_kind"),
            models.CheckConstraint(condition=Q(status__in=PoolStatus.values), name="pool_status_valid"),
            models.CheckConstraint(condition=Q(capacity__gte=1), name="pool_capacity_positive"),
            # An over-full pool is refused by the database, whatever code takes the slot.
            models.CheckConstraint(condition=Q(slots_held__lte=models.F("capacity")), name="pool_held_within_capacity"),
        ]

    def __str__(self):
        return self.name


class Share(models.Model):
    """One slot of a storage pool: a share endpoint backed by its own bucket or file share.

    An assigned share has exactly one instance, and only an assigned share has one.
    """

    # Shares are looked up by pool (share_slot_unique_in_pool leads with it) and taken from share_available_queue;
    # no other index, since every placement rewrites its share's index entries.
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="shares", db_index=False)
    slot = models.PositiveIntegerField()
    name = models.CharField(max_length=255, help_text="Bucket or file-share name.")
    endpoint = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=10, choices=ShareStatus.choices, default=ShareStatus.AVAILABLE)
    instance = models.OneToOneField(
        "Instance", null=True, blank=True, on_delete=models.PROTECT, related_name="share"
    )
    firewall_address = models.CharField(max_length=64, blank=True, help_text="The only address allowed in.")

    class Meta:
        ordering = ["pool_id", "slot"]
        constraints = [
            models.UniqueConstraint(fields=["pool", "slot"], name="share_slot_unique_in_pool"),
            models.CheckConstraint(condition=Q(status__in=ShareStatus.values), name="share_status_valid"),
            models.CheckConstraint(
                condition=(Q(status=ShareStatus.ASSIGNED) & Q(instance__isnull=False))
                | (~Q(status=ShareStatus.ASSIGNED) & Q(instance__isnull=True)),
                name="share_assigned_iff_instance",
            ),
        ]
        # The free-share queue that placement takes from with SKIP LOCKED.
        indexes = [
            models.Index(
                fields=["pool", "slot"], condition=Q(status=ShareStatus.AVAILABLE), name="share_available_queue"
            )
        ]

    def __str__(self):
        return self.name


class Instance(models.Model):
    """One customer's hosted server: its own database, share, deployment and DNS name.

    Upgrades by a rollout happen only inside its weekly two-hour maintenance window (its own, else its
    region's); a pinned instance is left out of rollouts.
    """

    name = models.CharField(
        max_length=choices.INSTANCE_NAME_MAX_LENGTH, unique=True, validators=[validate_instance_name]
    )
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="instances")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="instances")
    # No single-column index on these three: the (column, state) indexes below lead with them and serve every look-up
    # by them, and each index more is one more write when placement points an instance at its reef and pools.
    reef = models.ForeignKey(
        Reef, null=True, blank=True, on_delete=models.PROTECT, related_name="instances", db_index=False
    )
    database_pool = models.ForeignKey(
        Pool, null=True, blank=True, on_delete=models.PROTECT, related_name="database_instances", db_index=False
    )
    compute_pool = models.ForeignKey(
        Pool, null=True, blank=True, on_delete=models.PROTECT, related_name="compute_instances", db_index=False
    )
    server_version = models.CharField(max_length=50)
    state = models.CharField(max_length=16, choices=InstanceState.choices, default=InstanceState.PENDING)
    tier = models.CharField(max_length=10, choices=choices.Tier.choices, default=choices.Tier.SHARED)
    cpu_millicores = models.PositiveIntegerField(default=500)
    memory_mib = models.PositiveIntegerField(default=1024)
    hostname = models.CharField(max_length=255, blank=True)
    maintenance_weekday = models.PositiveSmallIntegerField(
        null=True, blank=True, choices=choices.WEEKDAYS,
        help_text="Weekly maintenance window (UTC); empty: the region's.",
    )
    maintenance_hour = models.PositiveSmallIntegerField(null=True, blank=True)
    version_pinned = models.BooleanField(
        default=False, help_text="Pinned by staff: rollouts leave this instance alone."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    MAINTENANCE_WINDOW_MINUTES = 120

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(name__regex=choices.INSTANCE_NAME_REGEX), name="instance_name_dns_label"
            ),
            models.CheckConstraint(
                condition=(Q(maintenance_weekday__isnull=True) & Q(maintenance_hour__isnull=True))
                | Q(maintenance_weekday__lte=6, maintenance_hour__lte=23),
                name="instance_window_valid",
            ),
            models.CheckConstraint(
                condition=~Q(name__in=choices.RESERVED_INSTANCE_NAMES), name="instance_name_not_reserved"
            ),
            models.CheckConstraint(condition=Q(state__in=InstanceState.values), name="instance_state_valid"),
            models.CheckConstraint(condition=Q(tier__in=choices.Tier.values), name="instance_tier_valid"),
            models.CheckConstraint(condition=Q(cpu_millicores__gte=50), name="instance_cpu_minimum"),
            models.CheckConstraint(condition=Q(memory_mib__gte=128), name="instance_memory_minimum"),
        ]
        # Placement and capacity count slot-holding instances per reef and per pool; the admin's list walks the
        # ordering's index; instance_state finds the few in a given state (a plain index: nothing matches states by
        # prefix, so no LIKE twin to rewrite on every placement).
        indexes = [
            models.Index(fields=["state"], name="instance_state"),
            models.Index(F("created_at").desc(), F("id").desc(), name="instance_newest_first"),
            models.Index(fields=["reef", "state"], name="instance_reef_state"),
            models.Index(fields=["database_pool", "state"], name="instance_database_pool_state"),
            models.Index(fields=["compute_pool", "state"], name="instance_compute_pool_state"),
        ]

    def __str__(self):
        return self.name

    def window(self) -> tuple[int, int]:
        """(weekday 0=Monday, hour) of the weekly maintenance window, UTC."""
        if self.maintenance_weekday is not None:
            return self.maintenance_weekday, self.maintenance_hour
        return self.region.maintenance_weekday, self.region.maintenance_hour


_ACTIVE = sorted(str(s) for s in choices.OPERATION_ACTIVE_STATES)  # sorted: a stable migration
OPERATION_TARGETS = ("instance", "reef", "pool", "share")


class Operation(models.Model):
    """A long action on one target, the record staff read, customers watch and retries resume from.

    ``steps`` is a list of ``{"name", "started_at", "finished_at"}`` for the steps finished so far;
    a re-run skips them. At most one queued or running operation of a kind exists per target (and kinds that
    exclude each other never overlap on one instance: ``provisioning.operations.operation_create`` refuses).

    An operation ends ``succeeded``, ``failed`` or — stopped by staff — ``cancelled``. One ended from outside
    (cancelled, or failed by the watchdog) still owes its plan's release of what it took: ``cleanup_state`` says
    whether that is owed, running (since ``cleanup_claimed_at``), done or failed (``cleanup_error`` says why).
    """

    kind = models.CharField(max_length=16, choices=OperationKind.choices)
    state = models.CharField(
        max_length=10, choices=OperationState.choices, default=OperationState.QUEUED, db_index=True
    )
    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.CASCADE, related_name="operations")
    reef = models.ForeignKey(Reef, null=True, blank=True, on_delete=models.CASCADE, related_name="operations")
    pool = models.ForeignKey(Pool, null=True, blank=True, on_delete=models.CASCADE, related_name="operations")
    share = models.ForeignKey(Share, null=True, blank=True, on_delete=models.CASCADE, related_name="operations")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations"
    )
    params = models.JSONField(default=dict, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    cleanup_state = models.CharField(
        max_length=8, choices=CleanupState.choices, default=CleanupState.NONE, db_index=True,
        help_text="The plan's release still owed after the operation was ended from outside.",
    )
    cleanup_claimed_at = models.DateTimeField(null=True, blank=True, help_text="When the owed clean-up was taken.")
    cleanup_error = models.TextField(blank=True, help_text="Why the owed clean-up failed.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=OperationKind.values), name="operation_kind_valid"),
            models.CheckConstraint(condition=Q(state__in=OperationState.values), name="operation_state_valid"),
            models.CheckConstraint(
                condition=Q(cleanup_state__in=CleanupState.values), name="operation_cleanup_state_valid"
            ),
            # Only an operation that has ended owes a clean-up.
            models.CheckConstraint(
                condition=Q(cleanup_state=CleanupState.NONE) | ~Q(state__in=_ACTIVE),
                name="operation_cleanup_only_when_ended",
            ),
            # Exactly one target.
            models.CheckConstraint(
                condition=(
                    Q(instance__isnull=False, reef__isnull=True, pool__isnull=True, share__isnull=True)
                    | Q(instance__isnull=True, reef__isnull=False, pool__isnull=True, share__isnull=True)
                    | Q(instance__isnull=True, reef__isnull=True, pool__isnull=False, share__isnull=True)
                    | Q(instance__isnull=True, reef__isnull=True, pool__isnull=True, share__isnull=False)
                ),
                name="operation_has_one_target",
            ),
            *[
                models.UniqueConstraint(
                    fields=["kind", target],
                    condition=Q(state__in=_ACTIVE),
                    name=f"operation_one_active_per_{target}",
                )
                for target in OPERATION_TARGETS
            ],
        ]
        indexes = [models.Index(fields=["state", "kind"], name="operation_state_kind")]

    def __str__(self):
        return f"{self.kind} #{self.pk}"

    @property
    def target(self):
        """The one object this operation acts on."""
        for field in OPERATION_TARGETS:
            if getattr(self, f"{field}_id") is not None:
                return getattr(self, field)
        return None

    @property
    def done_step_names(self) -> list[str]:
        return [step["name"] for step in self.steps]


class CapacityShortfall(models.Model):
    """A signup the hub had to refuse for want of capacity: what staff must add, and where."""

    region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="shortfalls")
    instance_name = models.CharField(max_length=choices.INSTANCE_NAME_MAX_LENGTH)
    reason = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.region}: {self.reason}"


class Release(models.Model):
    """A server version instances can run. The ``default`` release is what new signups get (one at most)."""

    version = models.CharField(max_length=50, unique=True, validators=[validate_release_version])
    image = models.CharField(max_length=255, validators=[validate_image_reference],
                             help_text="Container image without the tag; the version is the tag.")
    notes = models.TextField(blank=True)
    state = models.CharField(max_length=10, choices=choices.ReleaseState.choices, default=choices.ReleaseState.DRAFT)
    fails_health = models.BooleanField(
        default=False,
        help_text="A rehearsal release: its server fails its health check (the local runtime), so a rollout of it "
        "halts at the canary ring and the canary is rolled back.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=choices.ReleaseState.values), name="release_state_valid"),
            models.UniqueConstraint(
                fields=["state"], condition=Q(state=choices.ReleaseState.DEFAULT), name="release_one_default"
            ),
        ]

    def __str__(self):
        return self.version


_ACTIVE_ROLLOUTS = sorted(str(s) for s in choices.ACTIVE_ROLLOUT_STATES)


class Rollout(models.Model):
    """A release reaching the fleet wave by wave (one wave per rollout ring), in batches, halting on failures."""

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="rollouts")
    state = models.CharField(max_length=10, choices=choices.RolloutState.choices, default=choices.RolloutState.PLANNED,
                             db_index=True)
    batch_size = models.PositiveIntegerField(default=10, help_text="Upgrades under way at once within a wave.")
    bake_minutes = models.PositiveIntegerField(default=60, help_text="Wait after a wave before the next starts.")
    max_failures = models.PositiveIntegerField(default=2, help_text="More failed upgrades than this in a wave halt.")
    max_failure_ratio = models.FloatField(default=0.05, help_text="A larger share of failures in a wave halts.")
    halt_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=choices.RolloutState.values), name="rollout_state_valid"),
            models.CheckConstraint(condition=Q(batch_size__gte=1), name="rollout_batch_positive"),
            models.CheckConstraint(condition=Q(max_failure_ratio__gte=0) & Q(max_failure_ratio__lte=1),
                                   name="rollout_failure_ratio_range"),
            models.UniqueConstraint(fields=["release"], condition=Q(state__in=_ACTIVE_ROLLOUTS),
                                    name="rollout_one_active_per_release"),
        ]

    def __str__(self):
        return f"rollout of {self.release_id and self.release} #{self.pk}"


class RolloutWave(models.Model):
    """The instances of one rollout ring; ``total`` and the outcome counts are refreshed by each tick."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="waves")
    position = models.PositiveIntegerField()
    ring = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=10, choices=choices.WaveState.choices, default=choices.WaveState.PENDING)
    total = models.PositiveIntegerField(default=0)
    upgrading = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    bake_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["rollout_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "position"], name="wave_position_unique"),
            models.CheckConstraint(condition=Q(state__in=choices.WaveState.values), name="wave_state_valid"),
        ]

    def __str__(self):
        return f"wave {self.position + 1} (ring {self.ring})"


class RolloutTarget(models.Model):
    """One instance of a rollout: pending until its window opens, then its upgrade operation decides."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="targets")
    wave = models.ForeignKey(RolloutWave, on_delete=models.CASCADE, related_name="targets")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="rollout_targets")
    state = models.CharField(max_length=10, choices=choices.TargetState.choices, default=choices.TargetState.PENDING)
    from_version = models.CharField(max_length=50)
    operation = models.ForeignKey(Operation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    note = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["wave_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "instance"], name="target_once_per_rollout"),
            models.CheckConstraint(condition=Q(state__in=choices.TargetState.values), name="target_state_valid"),
        ]
        indexes = [models.Index(fields=["wave", "state"], name="target_wave_state")]

    def __str__(self):
        return f"{self.instance_id} in rollout {self.rollout_id}"


class AuditEvent(models.Model):
    """One thing someone (or the hub itself) did or tried to do: who, when, to what, how it ended, and why.

    Written only through ``cells.audit.audit_record``; never changed or deleted by the hub (the admin shows
    them read-only, and the database refuses an UPDATE other than forgetting a deleted user, and any DELETE:
    migration 0004). ``actor_label`` keeps the name of an actor whose account is later deleted. ``details`` never
    holds a secret (a revealed connection string is recorded as revealed, not copied).
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=255, blank=True)
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    action = models.CharField(max_length=64, db_index=True, help_text="What was done, e.g. instance.stop.")
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=10, choices=AuditOutcome.choices)
    reason = models.TextField(blank=True, help_text="Why: the reason given, or the refusal or error.")
    details = models.JSONField(default=dict, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True, help_text="The request's client address.")

    class Meta:
        db_table = "portal_auditevent"  # its first home; the append-only trigger (portal migration 0004) guards it
        ordering = ["-at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(actor_kind__in=ActorKind.values), name="audit_actor_kind_valid"),
            models.CheckConstraint(condition=models.Q(outcome__in=AuditOutcome.values), name="audit_outcome_valid"),
        ]
        indexes = [
            models.Index(fields=["target_type", "target_id", "at"], name="audit_target"),
            models.Index(fields=["actor", "at"], name="audit_actor"),
        ]

    def __str__(self):
        who = self.actor_label or self.get_actor_kind_display()
        return f"{who}: {self.action} {self.target_type} {self.target_label or self.target_id} — {self.outcome}"


class Tally(models.Model):
    """A signed delta of a fleet count, appended by the database's triggers (see ``cells.tally``): never written by
    the hub's code except when ``cells.tally.tally_read`` folds the deltas into one row per key."""

    family = models.CharField(max_length=16, help_text="instances, operations or durations.")
    a = models.CharField(max_length=64, help_text="The region id (instances) or the operation's kind.")
    b = models.CharField(max_length=32, help_text="The state.")
    bucket = models.SmallIntegerField(default=-1, help_text="durations: the histogram bucket (-1: past the last).")
    n = models.BigIntegerField()
    seconds = models.FloatField(default=0.0)

    class Meta:
        db_table = "cells_tally"

    def __str__(self):
        return f"{self.family} {self.a}/{self.b}/{self.bucket}: {self.n:+d}"
