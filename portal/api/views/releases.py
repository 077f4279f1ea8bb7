"""Releases and rollouts (staff)."""
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from cells.choices import ReleaseState
from cells.models import Release, Rollout
from cells.states import RELEASE
from portal.api import permissions as perms
from portal.api import serializers as s
from portal.api.pagination import NewestFirst
from portal.api.views.common import AnnotatedWrites, AuditedWrites
from portal.roles import is_staff_reader
from provisioning import rollouts


class ReleaseViewSet(AuditedWrites, AnnotatedWrites, viewsets.ReadOnlyModelViewSet):
    """Releases: staff read and add them all and move them through their states; customers read only those
    they can get (available and default) — never a draft or a withdrawn release, nor its notes."""

    serializer_class = s.ReleaseSerializer
    permission_classes = [perms.ReadAnyWriteStaff]
    pagination_class = NewestFirst
    filterset_fields = ["state"]
    lookup_field = "version"
    lookup_value_regex = "[^/]+"
    queryset = Release.objects.all()

    def get_queryset(self):
        if is_staff_reader(self.request.user):
            return Release.objects.all()
        return Release.objects.filter(state__in=[ReleaseState.AVAILABLE, ReleaseState.DEFAULT])

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
