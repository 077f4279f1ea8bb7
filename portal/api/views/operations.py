"""Operations (with retry) and backups: the records of work."""
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from cells.models import Operation
from portal.api import permissions as perms
from portal.api import serializers as s
from portal.api.filtersets import (
    OperationFilterSet,
)
from portal.api.idempotency import idempotent
from portal.api.pagination import NewestFirst
from portal.api.views.common import IDEMPOTENCY_HEADER, AuditedWrites, accepted
from portal.roles import is_staff_reader
from provisioning.models import Backup
from provisioning.operations import operation_cancel, operation_retry


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
        """Queue a failed or cancelled operation again; it resumes from its first unfinished step."""
        operation = self.get_object()
        return accepted(request, operation_retry(operation=operation, requested_by=request.user))

    @extend_schema(request=s.ReasonSerializer, responses={200: s.OperationSerializer},
                   parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"], permission_classes=[perms.StaffOnly])
    @idempotent
    def cancel(self, request, pk=None):
        """Staff: end a queued or running operation ``cancelled`` ("cancelled by <you>: <reason>"); its plan releases
        what it took (``cleanup_state`` says whether that is still owed). A running worker stops at its next step
        boundary."""
        data = s.ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        operation = operation_cancel(
            operation=self.get_object(), reason=data.validated_data["reason"], cancelled_by=request.user
        )
        return Response(s.OperationSerializer(operation, context={"request": request}).data)




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
