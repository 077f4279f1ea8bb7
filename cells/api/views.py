"""API views: thin — they check roles, call selectors for reads and services for work.

Actions that start work answer 202 with the Operation and its URL in ``Location``. Every write through the API
(POST, PUT, PATCH, DELETE by a signed-in caller) is audited once, in ``AuditedWrites.finalize_response``, with its
outcome: succeeded (2xx), refused (4xx, with the error's message) or failed (5xx).
"""
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from cells import selectors
from cells.api import permissions as perms
from cells.api import serializers as s
from cells.api.idempotency import REPLAYED_HEADER, idempotent
from cells.choices import ReleaseState
from cells.filtersets import (
    InstanceFilterSet,
    OperationFilterSet,
    PoolFilterSet,
    ReefFilterSet,
    RegionFilterSet,
    ShareFilterSet,
)
from cells.models import Instance, Operation, Reef, Release, Rollout, Share
from cells.services import instance_signup
from cells.states import RELEASE
from portal.audit import FAILED, REFUSED, SUCCEEDED, audit_record, request_fields
from portal.models import ApiToken
from portal.roles import is_staff_reader
from provisioning import backups, capacity, lifecycle, rollouts
from provisioning.models import Backup

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Repeat a request safely: the same key returns the first reply and starts nothing new.",
)


class NewestFirst(CursorPagination):
    """Stable cursor pages: newest first, by id."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class OldestFirst(NewestFirst):
    ordering = "id"


def accepted(request, operation) -> Response:
    """202 with the operation and where to poll it."""
    body = s.OperationSerializer(operation, context={"request": request}).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


# Audit action names where ``<resource>.<view action>`` would not say it as the admin and the site do.
AUDIT_ACTIONS = {
    ("instance", "create"): "instance.signup",
    ("instance", "retry"): "instance.retry_provision",
    ("instance", "reveal_credentials"): "credentials.reveal",
    ("token", "destroy"): "token.revoke",
}


class AuditedWrites:
    """Audits every write through the API once, whatever its outcome (a view mixin; place it first)."""

    _audit_target = None

    def get_object(self):
        obj = super().get_object()
        self._audit_target = obj
        return obj

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        user = getattr(request, "user", None)
        if request.method not in SAFE_METHODS and user is not None and user.is_authenticated:
            if response.status_code != status.HTTP_429_TOO_MANY_REQUESTS:
                self._audit(request, response)
        return response

    def _audit(self, request, response) -> None:
        basename = getattr(self, "basename", "") or ""
        action = AUDIT_ACTIONS.get((basename, self.action), f"{basename}.{self.action}")
        data = response.data if isinstance(response.data, dict) else {}
        code = response.status_code
        outcome = SUCCEEDED if code < 400 else REFUSED if code < 500 else FAILED
        details = {"via": "api", "status": code, **request_fields(request.data)}
        if response.get(REPLAYED_HEADER):
            details["replayed"] = True
        target, target_type, target_id, label = self._audit_target, "", "", ""
        if target is None:
            if isinstance(data.get("target"), dict) and data["target"]:
                target_type, target_id, label = data["target"]["type"], data["target"]["id"], data.get("instance")
            elif code < 400 and "id" in data:
                target_type, target_id, label = basename, data["id"], data.get("name") or ""
            else:
                lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, "")
                target_type, target_id, label = (basename, lookup, lookup) if lookup else ("", "", "")
        if {"kind", "steps", "id"} <= set(data):
            details["operation"] = data["id"]  # the work this request started (or the operation it acted on)
        error = data.get("error") if isinstance(data.get("error"), dict) else None
        if error:  # the refusal, as the caller read it
            reason = error.get("message", "") + "".join(
                f" {field}: {' '.join(map(str, messages))}" for field, messages in (error.get("fields") or {}).items()
            )
        else:  # the reason the caller gave, if any
            reason = str(request.data.get("reason", "")) if hasattr(request.data, "get") else ""
        audit_record(
            action=action, outcome=outcome, target=target, target_type=target_type, target_id=target_id,
            target_label=label or "", reason=reason.strip(), details=details, request=request,
        )


class AnnotatedWrites(mixins.CreateModelMixin, mixins.UpdateModelMixin):
    """Create and update answer with the row re-read through ``get_queryset``, so computed capacity
    fields are present in the reply exactly as in a read."""

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = serializer.save()
        body = self.get_serializer(self.get_queryset().get(pk=created.pk)).data
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        serializer = self.get_serializer(self.get_object(), data=request.data, partial=kwargs.pop("partial", False))
        serializer.is_valid(raise_exception=True)
        updated = serializer.save()
        return Response(self.get_serializer(self.get_queryset().get(pk=updated.pk)).data)


class RegionViewSet(AuditedWrites, AnnotatedWrites, viewsets.ReadOnlyModelViewSet):
    """Regions and their free capacity; everyone signed in reads them, staff change them."""

    serializer_class = s.RegionSerializer
    permission_classes = [perms.ReadAnyWriteStaff]
    filterset_class = RegionFilterSet
    pagination_class = OldestFirst
    lookup_field = "slug"

    def get_queryset(self):
        return selectors.regions_with_capacity()


class ReefViewSet(AuditedWrites, AnnotatedWrites, viewsets.ReadOnlyModelViewSet):
    """Reefs with their free capacity (staff). Actions: top up now, drain, activate."""

    serializer_class = s.ReefSerializer
    permission_classes = [perms.StaffOnly]
    filterset_class = ReefFilterSet
    pagination_class = OldestFirst

    def get_queryset(self):
        return selectors.reefs_with_capacity(Reef.objects.select_related("region"))

    def _reread(self, reef):
        return Response(self.get_serializer(self.get_queryset().get(pk=reef.pk)).data)

    @extend_schema(request=None, responses={202: s.OperationSerializer(many=True)}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"], url_path="top-up")
    @idempotent
    def top_up(self, request, pk=None):
        """Order now the pools this reef lacks by its thresholds; 202 with the top-up operations (maybe none)."""
        operations = capacity.reef_top_up(reef=self.get_object(), requested_by=request.user)
        body = s.OperationSerializer(operations, many=True, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: s.ReefSerializer})
    @action(detail=True, methods=["post"])
    def drain(self, request, pk=None):
        """No new instances go to this reef; those on it stay."""
        return self._reread(capacity.reef_drain(reef=self.get_object(), requested_by=request.user))

    @extend_schema(request=None, responses={200: s.ReefSerializer})
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        return self._reread(capacity.reef_activate(reef=self.get_object(), requested_by=request.user))


class PoolViewSet(AuditedWrites, AnnotatedWrites, viewsets.ReadOnlyModelViewSet):
    """Pools with their used and free slots (staff). Actions: drain, activate, mark failed, replace."""

    serializer_class = s.PoolSerializer
    permission_classes = [perms.StaffOnly]
    filterset_class = PoolFilterSet
    pagination_class = OldestFirst

    def get_queryset(self):
        return selectors.pools_with_usage()

    def _reread(self, pool):
        return Response(self.get_serializer(self.get_queryset().get(pk=pool.pk)).data)

    @extend_schema(request=None, responses={200: s.PoolSerializer})
    @action(detail=True, methods=["post"])
    def drain(self, request, pk=None):
        return self._reread(capacity.pool_drain(pool=self.get_object(), requested_by=request.user))

    @extend_schema(request=None, responses={200: s.PoolSerializer})
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        return self._reread(capacity.pool_activate(pool=self.get_object(), requested_by=request.user))

    @extend_schema(request=s.ReasonSerializer, responses={200: s.PoolSerializer})
    @action(detail=True, methods=["post"], url_path="mark-failed")
    def mark_failed(self, request, pk=None):
        """The pool's host is broken: no new instances; its shares' instances wait for a replace."""
        serializer = s.ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        pool = self.get_object()
        capacity.pool_mark_failed(pool=pool, reason=serializer.validated_data["reason"], requested_by=request.user)
        return self._reread(pool)

    @extend_schema(request=None, responses={202: s.OperationSerializer}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def replace(self, request, pk=None):
        """A new host takes over the failed storage pool's buckets / file shares, share by share."""
        return accepted(request, capacity.pool_replace(pool=self.get_object(), requested_by=request.user))


class ShareViewSet(AuditedWrites, viewsets.ReadOnlyModelViewSet):
    serializer_class = s.ShareSerializer
    permission_classes = [perms.StaffOnly]
    filterset_class = ShareFilterSet
    pagination_class = OldestFirst
    queryset = Share.objects.select_related("instance")


class OperationViewSet(AuditedWrites, viewsets.ReadOnlyModelViewSet):
    """Operations: customers see those on their own instances, staff all."""

    serializer_class = s.OperationSerializer
    permission_classes = [perms.SignedIn]
    filterset_class = OperationFilterSet
    pagination_class = NewestFirst

    queryset = Operation.objects.none()  # the model, for the schema; rows come from get_queryset

    def get_queryset(self):
        queryset = Operation.objects.select_related("instance", "requested_by")
        if getattr(self, "swagger_fake_view", False) or is_staff_reader(self.request.user):
            return queryset
        return queryset.filter(instance__owner=self.request.user)

    @extend_schema(request=None, responses={202: s.OperationSerializer}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def retry(self, request, pk=None):
        """Queue a failed operation again; it resumes from its first unfinished step."""
        from provisioning.operations import operation_retry

        operation = self.get_object()
        return accepted(request, operation_retry(operation=operation, requested_by=request.user))

    @extend_schema(request=s.ReasonSerializer, responses={200: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"], permission_classes=[perms.StaffOnly])
    @idempotent
    def cancel(self, request, pk=None):
        """Staff: end a queued or running operation failed ("cancelled by <you>: <reason>"); its plan releases
        what it took. A running worker stops at its next step boundary."""
        from provisioning.operations import operation_cancel

        data = s.ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        operation = operation_cancel(
            operation=self.get_object(), reason=data.validated_data["reason"], cancelled_by=request.user
        )
        return Response(s.OperationSerializer(operation, context={"request": request}).data)


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

    def get_throttles(self):
        if self.action == "create":
            from rest_framework.throttling import ScopedRateThrottle

            return [ScopedRateThrottle()]
        return super().get_throttles()

    queryset = Instance.objects.none()  # the model, for the schema; rows come from get_queryset

    def get_queryset(self):
        queryset = Instance.objects.select_related("region", "owner")
        if getattr(self, "swagger_fake_view", False) or is_staff_reader(self.request.user):
            return queryset
        return queryset.filter(owner=self.request.user)

    @idempotent
    def create(self, request):
        """Sign up: a new instance for the caller; 202 with its provision operation."""
        serializer = s.SignupSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        operation = instance_signup(
            name=serializer.validated_data["name"], region=serializer.validated_data["region"],
            owner=request.user, requested_by=request.user,
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
        from provisioning.watchdog import instance_force_state

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
        from provisioning import drivers
        from provisioning.backups.selectors import database_kwargs

        self._with(request, s.ReasonSerializer)  # a reason is required: AuditedWrites records it with the reveal
        instance = self.get_object()
        if instance.database_pool_id is None:
            raise backups.Refused(f"{instance.name} has no database", current_state=instance.state)
        credentials = drivers.for_pool(instance.database_pool).credentials(instance, **database_kwargs(instance))
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
        except backups.DecommissionRefused as refusal:
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


class ReleaseViewSet(AuditedWrites, AnnotatedWrites, viewsets.ReadOnlyModelViewSet):
    """Releases: everyone signed in reads them; staff add them and move them through their states."""

    serializer_class = s.ReleaseSerializer
    permission_classes = [perms.ReadAnyWriteStaff]
    pagination_class = NewestFirst
    filterset_fields = ["state"]
    lookup_field = "version"
    lookup_value_regex = "[^/]+"
    queryset = Release.objects.all()

    def _move(self, request, change):
        release = self.get_object()
        change(release)
        release.refresh_from_db()
        return Response(s.ReleaseSerializer(release).data)

    @extend_schema(request=None, responses={200: s.ReleaseSerializer})
    @action(detail=True, methods=["post"], url_path="make-available")
    def make_available(self, request, version=None):
        return self._move(request, lambda r: RELEASE.change(r, ReleaseState.AVAILABLE))

    @extend_schema(request=None, responses={200: s.ReleaseSerializer})
    @action(detail=True, methods=["post"], url_path="make-default")
    def make_default(self, request, version=None):
        return self._move(request, lambda r: rollouts.release_make_default(release=r))

    @extend_schema(request=None, responses={200: s.ReleaseSerializer})
    @action(detail=True, methods=["post"])
    def withdraw(self, request, version=None):
        return self._move(request, lambda r: RELEASE.change(r, ReleaseState.WITHDRAWN))


class RolloutViewSet(AuditedWrites, viewsets.ReadOnlyModelViewSet):
    """Rollouts (staff): plan with POST, then start, pause, resume or cancel."""

    serializer_class = s.RolloutSerializer
    permission_classes = [perms.StaffOnly]
    pagination_class = NewestFirst
    filterset_fields = ["state"]
    queryset = Rollout.objects.select_related("release").prefetch_related("waves")

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rollout = rollouts.rollout_create(requested_by=request.user, **serializer.validated_data)
        return Response(self.get_serializer(self.get_queryset().get(pk=rollout.pk)).data,
                        status=status.HTTP_201_CREATED)

    def _control(self, request, service):
        rollout = self.get_object()
        service(rollout=rollout, requested_by=request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=rollout.pk)).data)

    @extend_schema(request=None, responses={200: s.RolloutSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._control(request, rollouts.rollout_start)

    @extend_schema(request=None, responses={200: s.RolloutSerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._control(request, rollouts.rollout_pause)

    @extend_schema(request=None, responses={200: s.RolloutSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._control(request, rollouts.rollout_resume)

    @extend_schema(request=None, responses={200: s.RolloutSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._control(request, rollouts.rollout_cancel)


class BackupViewSet(AuditedWrites, viewsets.ReadOnlyModelViewSet):
    """Backups: customers see their own instances' backups, staff all."""

    serializer_class = s.BackupSerializer
    permission_classes = [perms.SignedIn]
    pagination_class = NewestFirst
    filterset_fields = ["kind", "state"]
    queryset = Backup.objects.none()

    def get_queryset(self):
        queryset = Backup.objects.select_related("instance")
        if getattr(self, "swagger_fake_view", False) or is_staff_reader(self.request.user):
            return queryset
        return queryset.filter(instance__owner=self.request.user)


class ApiTokenViewSet(AuditedWrites, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """The caller's own API tokens. The token is shown once, in the reply that creates it; DELETE revokes."""

    serializer_class = s.ApiTokenSerializer
    permission_classes = [perms.SignedIn]
    pagination_class = NewestFirst

    queryset = ApiToken.objects.none()  # the model, for the schema; rows come from get_queryset

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user)

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, plaintext = ApiToken.issue(user=request.user, **serializer.validated_data)
        body = s.ApiTokenSerializer(token, context={"plaintext": {token.pk: plaintext}}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, token):
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


