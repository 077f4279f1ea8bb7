"""Instances: signup and every action a customer or staff can start on one."""
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from cells.errors import Refused
from cells.models import Instance
from portal.api import permissions as perms
from portal.api import serializers as s
from portal.api.filtersets import (
    InstanceFilterSet,
)
from portal.api.idempotency import idempotent
from portal.api.pagination import NewestFirst
from portal.api.throttling import AtomicScopedRateThrottle
from portal.api.views.common import (
    IDEMPOTENCY_HEADER,
    AuditedWrites,
    accepted,
)
from portal.roles import is_staff_reader
from provisioning import backups, lifecycle, rollouts
from provisioning.backups.selectors import instance_database_credentials
from provisioning.lifecycle import instance_force_state, instance_signup
from provisioning.models import Backup


@extend_schema_view(create=extend_schema(request=s.SignupSerializer, responses={202: s.OperationSerializer},
                                         parameters=[IDEMPOTENCY_HEADER]))
class InstanceViewSet(AuditedWrites, viewsets.ReadOnlyModelViewSet):
    """Instances: customers see and act on their own (others' answer 404), staff on all."""

    serializer_class = s.InstanceSerializer
    permission_classes = [perms.SignedIn]
    filterset_class = InstanceFilterSet
    pagination_class = NewestFirst
    lookup_field = "name"
    throttle_scope = "signup"

    def get_serializer_class(self):
        return s.InstanceDetailSerializer if self.action == "retrieve" else s.InstanceSerializer

    def get_throttles(self):
        if self.action == "create":
            return [AtomicScopedRateThrottle()]
        return super().get_throttles()

    queryset = Instance.objects.none()  # the model, for the schema; rows come from get_queryset

    def get_queryset(self):
        queryset = Instance.objects.select_related("region", "owner", "host_port")
        if getattr(self, "swagger_fake_view", False) or is_staff_reader(self.request.user):
            return queryset
        return queryset.filter(owner=self.request.user)

    @idempotent
    def create(self, request):
        """Sign up: a new instance for the caller; 202 with its provision operation."""
        serializer = s.SignupSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        operation = instance_signup(
            name=serializer.validated_data["name"], region=serializer.validated_data["region"],
            owner=request.user, requested_by=request.user,
            dedicated_reef=serializer.validated_data.get("dedicated_reef"),
        )
        return accepted(request, operation)

    def _act(self, request, service, **arguments):
        instance = self.get_object()
        return accepted(request, service(instance=instance, requested_by=request.user, **arguments))

    @extend_schema(request=None, responses={202: s.OperationSerializer}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def stop(self, request, name=None):
        """Scale the instance to zero (it keeps its database and files)."""
        return self._act(request, lifecycle.instance_stop)

    @extend_schema(request=None, responses={202: s.OperationSerializer}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def start(self, request, name=None):
        """Start a stopped instance."""
        return self._act(request, lifecycle.instance_start)

    @extend_schema(request=None, responses={202: s.OperationSerializer}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def retry(self, request, name=None):
        """Retry the instance's failed provision."""
        return self._act(request, lifecycle.instance_retry_provision)

    def _with(self, request, serializer_class):
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @extend_schema(request=s.BackupRequestSerializer, responses={202: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def backup(self, request, name=None):
        """Back up the instance's database (default) or files now."""
        data = self._with(request, s.BackupRequestSerializer)
        return self._act(request, backups.instance_backup, kind=data["kind"])

    @extend_schema(request=s.RestoreRequestSerializer, responses={202: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def restore(self, request, name=None):
        """Restore the database as it was at ``point_in_time`` into a new database and switch to it."""
        data = self._with(request, s.RestoreRequestSerializer)
        return self._act(request, backups.instance_restore, point_in_time=data["point_in_time"])

    @extend_schema(request=s.RestoreFilesRequestSerializer, responses={202: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"], url_path="restore-files")
    @idempotent
    def restore_files(self, request, name=None):
        """Bring the share's content back from a files backup."""
        data = self._with(request, s.RestoreFilesRequestSerializer)
        instance = self.get_object()
        backup = get_object_or_404(Backup.objects.filter(instance=instance), pk=data["backup"])
        return accepted(request, backups.instance_restore_files(instance=instance, backup=backup,
                                                                requested_by=request.user))

    @extend_schema(request=s.ForceStateSerializer, responses={200: s.InstanceSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"], url_path="force-state", permission_classes=[perms.StaffOnly])
    @idempotent
    def force_state(self, request, name=None):
        """Staff: put the instance into ``state`` whatever the life cycle allows (only the record changes), if it
        is still ``expected_state``; refused while an operation is under way on it. Audited with the reason."""
        data = self._with(request, s.ForceStateSerializer)
        instance = instance_force_state(
            instance=self.get_object(), state=data["state"], expected_state=data["expected_state"],
            reason=data["reason"], forced_by=request.user,
        )
        return Response(s.InstanceSerializer(instance, context={"request": request}).data)

    @extend_schema(request=s.ReasonSerializer, responses={200: s.CredentialsSerializer})
    @action(detail=True, methods=["post"], url_path="reveal-credentials", permission_classes=[perms.StaffOnly])
    def reveal_credentials(self, request, name=None):
        """Staff: the instance's database connection string, with its password. Never stored (not even for an
        Idempotency-Key); each reveal is audited with the reason given."""
        self._with(request, s.ReasonSerializer)  # a reason is required: AuditedWrites records it with the reveal
        credentials = instance_database_credentials(instance=self.get_object())
        return Response(s.CredentialsSerializer(credentials).data, headers={"Cache-Control": "no-store"})

    @extend_schema(request=s.ConfirmNameSerializer, responses={202: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def decommission(self, request, name=None):
        """Retire the instance: archive, final backup, drop, scrub. ``confirm`` must repeat its name."""
        data = self._with(request, s.ConfirmNameSerializer)
        try:
            return self._act(request, backups.instance_decommission, confirm_name=data["confirm"])
        except Refused as refusal:
            if refusal.field != "confirm_name":
                raise
            raise ValidationError({"confirm": [str(refusal)]}) from refusal


    @extend_schema(request=s.UpgradeRequestSerializer, responses={202: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def upgrade(self, request, name=None):
        """Upgrade to ``version`` now (outside any rollout): back up, patch, wait for health; rolls back on failure."""
        data = self._with(request, s.UpgradeRequestSerializer)
        return self._act(request, rollouts.instance_upgrade, release=data["version"])

    @extend_schema(request=s.PinRequestSerializer, responses={200: s.InstanceSerializer})
    @action(detail=True, methods=["post"], permission_classes=[perms.StaffOnly])
    def pin(self, request, name=None):
        """Staff: pin the instance to its version (rollouts leave it alone) or unpin it."""
        data = self._with(request, s.PinRequestSerializer)
        instance = self.get_object()
        Instance.objects.filter(pk=instance.pk).update(version_pinned=data["pinned"])
        instance.refresh_from_db()
        return Response(s.InstanceSerializer(instance, context={"request": request}).data)
