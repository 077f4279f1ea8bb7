"""Regions, reefs, pools and shares: the topology and its capacity actions."""
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from cells import selectors
from cells.models import Reef, Share
from portal.api import permissions as perms
from portal.api import serializers as s
from portal.api.filtersets import (
    PoolFilterSet,
    ReefFilterSet,
    RegionFilterSet,
    ShareFilterSet,
)
from portal.api.idempotency import idempotent
from portal.api.pagination import OldestFirst
from portal.api.views.common import IDEMPOTENCY_HEADER, AnnotatedWrites, AuditedWrites, accepted
from provisioning import capacity


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
    # Not paged (the reply is the operations just ordered): without pagination_class=None the schema would
    # describe a page of operations, not the plain list the reply is.
    @action(detail=True, methods=["post"], url_path="top-up", pagination_class=None)
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
    """Pools with their used and free slots (staff). Actions: drain, activate, mark failed, replace, retire."""

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

    @extend_schema(request=None, responses={202: s.OperationSerializer}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=True, methods=["post"])
    @idempotent
    def retire(self, request, pk=None):
        """Delete in its cloud everything the hub made for this draining or failed pool, then mark it retired;
        202 with the operation. 409 (``current_state``) for a pool in another state or one an instance still uses
        (``instances``: the first few, ``instance_count``)."""
        return accepted(request, capacity.pool_retire(pool=self.get_object(), requested_by=request.user))


class ShareViewSet(AuditedWrites, viewsets.ReadOnlyModelViewSet):
    serializer_class = s.ShareSerializer
    permission_classes = [perms.StaffOnly]
    filterset_class = ShareFilterSet
    pagination_class = OldestFirst
    queryset = Share.objects.select_related("instance")
