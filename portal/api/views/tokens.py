"""The caller's own API tokens."""
from django.utils import timezone
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from portal.api import permissions as perms
from portal.api import serializers as s
from portal.api.pagination import NewestFirst
from portal.api.views.common import (
    AuditedWrites,
)
from portal.models import ApiToken


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
