"""API representations. Capacity fields come from the selectors' annotations (no per-row queries)."""
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cells.choices import PROVIDERS_BY_KIND, InstanceState, OperationState
from cells.models import Instance, Operation, Pool, Reef, Region, Release, Rollout, RolloutWave, Share
from cells.placement import region_takes_signups
from cells.selectors import reef_instance_count
from cells.services import pool_change, pool_register
from cells.validators import validate_instance_name
from portal.models import ApiToken
from portal.roles import is_staff_reader
from provisioning.backups.selectors import restorable_window
from provisioning.models import Backup
from provisioning.ports import instance_address


class RegionSerializer(serializers.ModelSerializer):
    reef_count = serializers.IntegerField(read_only=True)
    instance_count = serializers.IntegerField(read_only=True)
    free_instance_slots = serializers.IntegerField(read_only=True)
    takes_signups = serializers.SerializerMethodField()

    class Meta:
        model = Region
        fields = ["slug", "name", "cloud", "location", "status", "takes_signups", "reef_count", "instance_count",
                  "free_instance_slots"]

    def get_takes_signups(self, region) -> bool:
        return region_takes_signups(region)


class ReefSerializer(serializers.ModelSerializer):
    region = serializers.SlugRelatedField(slug_field="slug", queryset=Region.objects.all())
    instance_count = serializers.IntegerField(read_only=True)
    free_instance_slots = serializers.IntegerField(read_only=True)
    free_database_slots = serializers.IntegerField(read_only=True)
    free_storage_slots = serializers.IntegerField(read_only=True)
    free_compute_slots = serializers.IntegerField(read_only=True)
    placeable_slots = serializers.IntegerField(read_only=True)

    class Meta:
        model = Reef
        fields = ["id", "region", "slug", "status", "max_instances", "rollout_ring", "ingress_address", "created_at",
                  "instance_count", "free_instance_slots", "free_database_slots", "free_storage_slots",
                  "free_compute_slots", "placeable_slots"]
        read_only_fields = ["status", "created_at"]
        extra_kwargs = {"max_instances": {"min_value": 1}}

    def validate_max_instances(self, value):
        if self.instance is not None:
            placed = reef_instance_count(reef=self.instance)
            if value < placed:
                raise serializers.ValidationError(f"{placed} instances are on this reef; it cannot hold fewer.")
        return value


class PoolSerializer(serializers.ModelSerializer):
    used_slots = serializers.IntegerField(read_only=True)
    free_slots = serializers.IntegerField(read_only=True)

    class Meta:
        model = Pool
        fields = ["id", "reef", "name", "kind", "provider", "external_id", "capacity", "status", "dedicated", "config",
                  "created_at", "used_slots", "free_slots"]
        read_only_fields = ["status", "external_id", "created_at"]
        extra_kwargs = {"capacity": {"min_value": 1}}

    def validate(self, attrs):
        kind = attrs.get("kind", getattr(self.instance, "kind", None))
        provider = attrs.get("provider", getattr(self.instance, "provider", None))
        if provider not in PROVIDERS_BY_KIND.get(kind, ()):
            allowed = ", ".join(PROVIDERS_BY_KIND.get(kind, ()))
            raise serializers.ValidationError({"provider": [f"A {kind} pool takes one of: {allowed}."]})
        return attrs

    def create(self, validated_data):
        """POST registers a pool whose host exists already: available at once (see ``pool_register``)."""
        return pool_register(**validated_data)

    def update(self, pool, validated_data):
        """Changes go through ``pool_change``: nothing it holds may be broken (capacity, provider, host)."""
        return pool_change(pool=pool, **validated_data)


class ShareSerializer(serializers.ModelSerializer):
    instance = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)

    class Meta:
        model = Share
        fields = ["id", "pool", "slot", "name", "endpoint", "status", "instance", "firewall_address"]
        read_only_fields = fields


class OperationSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    target = serializers.SerializerMethodField()
    instance = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    error = serializers.SerializerMethodField()

    class Meta:
        model = Operation
        fields = ["id", "url", "kind", "state", "target", "instance", "requested_by", "params", "attempts", "steps",
                  "error", "cleanup_state", "created_at", "started_at", "finished_at", "updated_at"]
        read_only_fields = fields

    def get_url(self, operation) -> str:
        path = reverse("api:operation-detail", args=[operation.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path

    @extend_schema_field({"type": "object", "properties": {"type": {"type": "string"}, "id": {"type": "integer"}}})
    def get_target(self, operation) -> dict:
        for field in ("instance", "reef", "pool", "share"):
            pk = getattr(operation, f"{field}_id")
            if pk is not None:
                return {"type": field, "id": pk}
        return {}

    def get_error(self, operation) -> str:
        """The failure text for staff; customers see only that it failed."""
        request = self.context.get("request")
        if not operation.error:
            return ""
        if request and is_staff_reader(request.user):
            return operation.error
        if operation.state == OperationState.CANCELLED:
            return "The operation was cancelled by support."
        return "The operation failed; support has been told."


class InstanceSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:instance-detail", lookup_field="name")
    region = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    owner = serializers.SlugRelatedField(slug_field="email", read_only=True)
    address = serializers.SerializerMethodField()

    class Meta:
        model = Instance
        fields = ["id", "url", "name", "owner", "region", "reef", "state", "server_version", "tier", "cpu_millicores",
                  "memory_mib", "hostname", "address", "created_at", "updated_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_address(self, instance) -> str:
        """Where the instance answers: ``http://<hostname>:<port>/`` on a local runtime, else
        ``https://<hostname>/``; empty until it has a hostname."""
        host_port = getattr(instance, "host_port", None)  # the views select it with the instance
        return instance_address(instance, port=host_port.port if host_port else 0)


class RestorableWindowSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="The earliest second the database can be restored to.")
    end = serializers.DateTimeField(help_text="The newest second the database can be restored to.")
    continuous = serializers.BooleanField(help_text="Any second in between (else: the backups' moments).")
    rpo_seconds = serializers.IntegerField(help_text="Achieved RPO: how far the newest restorable second is behind.")


class InstanceDetailSerializer(InstanceSerializer):
    """One instance, with its restorable window and achieved RPO (asked of its database provider)."""

    restorable_window = serializers.SerializerMethodField()

    class Meta(InstanceSerializer.Meta):
        fields = [*InstanceSerializer.Meta.fields, "restorable_window"]
        read_only_fields = fields

    @extend_schema_field(RestorableWindowSerializer(allow_null=True))
    def get_restorable_window(self, instance):
        window = restorable_window(instance=instance)
        return None if window is None else RestorableWindowSerializer({
            "start": window.start, "end": window.end, "continuous": window.continuous,
            "rpo_seconds": window.rpo_seconds,
        }).data


class SignupSerializer(serializers.Serializer):
    """A new instance for the signed-in user."""

    name = serializers.CharField(min_length=3, max_length=40, validators=[validate_instance_name])
    region = serializers.SlugRelatedField(slug_field="slug", queryset=Region.objects.all())
    dedicated_reef = serializers.CharField(
        required=False, help_text="Staff only: the slug of an empty reef of the region to place the instance on "
        "alone (the reef then takes no other instance).",
    )

    def validate(self, data):
        slug = data.get("dedicated_reef")
        if slug is None:
            return data
        request = self.context.get("request")
        if request is None or not request.user.is_staff:
            raise serializers.ValidationError({"dedicated_reef": "only staff place an instance on a reef of its own"})
        reef = Reef.objects.filter(region=data["region"], slug=slug).first()
        if reef is None:
            raise serializers.ValidationError({"dedicated_reef": f"no reef {slug} in {data['region'].name}"})
        return {**data, "dedicated_reef": reef}

    def validate_name(self, name):
        if Instance.objects.filter(name=name).exists():
            raise serializers.ValidationError(f"The name “{name}” is taken; choose another.")
        return name

    def validate_region(self, region):
        if not region_takes_signups(region):
            raise serializers.ValidationError(f"{region.name} is not taking new instances right now.")
        return region


class ConfirmNameSerializer(serializers.Serializer):
    confirm = serializers.CharField(help_text="The instance's name, typed again: deletion protection.")


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class ForceStateSerializer(serializers.Serializer):
    """Staff repair: the state to put the instance in, the state they saw it in, and why.

    States are plain strings here (one of the instance states) so the schema keeps a single enum of them.
    """

    state = serializers.CharField(help_text="One of: " + ", ".join(InstanceState.values) + ".")
    expected_state = serializers.CharField(help_text="The state you saw: the change applies only if it still is.")
    reason = serializers.CharField(max_length=500)

    def _state(self, value):
        if value not in InstanceState.values:
            raise serializers.ValidationError(f"Not an instance state; use one of: {', '.join(InstanceState.values)}.")
        return value

    validate_state = validate_expected_state = _state


class CredentialsSerializer(serializers.Serializer):
    """An instance's database connection, password included: shown to staff once per request, stored nowhere."""

    database = serializers.CharField()
    login = serializers.CharField(allow_blank=True)
    host = serializers.CharField(allow_blank=True)
    port = serializers.IntegerField(allow_null=True)
    url = serializers.CharField(help_text="The connection string, with the password.")


class ApiTokenSerializer(serializers.ModelSerializer):
    token = serializers.SerializerMethodField(help_text="The token itself: present only in the reply that made it.")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at", "token"]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at", "token"]

    @extend_schema_field({"type": "string", "nullable": True})
    def get_token(self, token):
        return self.context.get("plaintext", {}).get(token.pk)


class TokenObtainSerializer(serializers.Serializer):
    """The password grant: an account's e-mail (any case) and password, and what the new token is for."""

    email = serializers.CharField(max_length=254, help_text="The account's e-mail (or staff username), any case.")
    password = serializers.CharField(max_length=4096, write_only=True, style={"input_type": "password"})
    name = serializers.CharField(max_length=100, default="API client", help_text="What the token is for.")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class BackupSerializer(serializers.ModelSerializer):
    instance = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Backup
        fields = ["id", "instance", "kind", "reason", "state", "started_at", "finished_at", "taken_at", "location",
                  "size_bytes", "checksum", "encrypted_with", "expires_at", "deleted_at"]
        read_only_fields = fields


class BackupRequestSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["database", "files"], default="database")


class RestoreRequestSerializer(serializers.Serializer):
    point_in_time = serializers.DateTimeField(help_text="Inside the restorable window (ISO 8601 with a time zone).")


class RestoreFilesRequestSerializer(serializers.Serializer):
    backup = serializers.IntegerField(help_text="Id of a succeeded files backup of this instance.")


class ReleaseSerializer(serializers.ModelSerializer):
    class Meta:
        model = Release
        fields = ["id", "version", "image", "notes", "state", "created_at"]
        read_only_fields = ["state", "created_at"]


class RolloutWaveSerializer(serializers.ModelSerializer):
    class Meta:
        model = RolloutWave
        fields = ["position", "ring", "state", "total", "upgrading", "succeeded", "failed", "skipped", "started_at",
                  "bake_until", "finished_at"]
        read_only_fields = fields


class RolloutSerializer(serializers.ModelSerializer):
    release = serializers.SlugRelatedField(slug_field="version", queryset=Release.objects.all())
    waves = RolloutWaveSerializer(many=True, read_only=True)

    class Meta:
        model = Rollout
        fields = ["id", "release", "state", "batch_size", "bake_minutes", "max_failures", "max_failure_ratio",
                  "halt_reason", "waves", "created_at", "started_at", "finished_at"]
        read_only_fields = ["state", "halt_reason", "waves", "created_at", "started_at", "finished_at"]
        extra_kwargs = {"batch_size": {"min_value": 1}, "max_failure_ratio": {"min_value": 0, "max_value": 1}}


class UpgradeRequestSerializer(serializers.Serializer):
    version = serializers.SlugRelatedField(slug_field="version", queryset=Release.objects.all(),
                                           help_text="A release's version (available or default).")


class PinRequestSerializer(serializers.Serializer):
    pinned = serializers.BooleanField(help_text="True: rollouts leave the instance on its version.")
