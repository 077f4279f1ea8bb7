"""The caller's own API tokens, and the password grant that gets a first one without a browser."""
from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from cells.audit import REFUSED, audit_record
from cells.choices import ActorKind
from portal.api import permissions as perms
from portal.api import serializers as s
from portal.api.errors import HubRefusal
from portal.api.pagination import NewestFirst
from portal.api.views.common import (
    AuditedWrites,
)
from portal.models import ApiToken
from portal.tokens import api_token_issue, api_token_revoke


class ApiTokenViewSet(AuditedWrites, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """The caller's own API tokens. The token is shown once, in the reply that creates it; DELETE revokes."""

    serializer_class = s.ApiTokenSerializer
    permission_classes = [perms.SignedIn]
    pagination_class = NewestFirst
    throttle_scope = "token_obtain"  # used by the password grant only (the one action with a throttle)

    queryset = ApiToken.objects.none()  # the model, for the schema; rows come from get_queryset

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user)

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, plaintext = api_token_issue(user=request.user, **serializer.validated_data)
        body = s.ApiTokenSerializer(token, context={"plaintext": {token.pk: plaintext}}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, token):
        api_token_revoke(token=token)

    @extend_schema(request=s.TokenObtainSerializer, responses={201: s.ApiTokenSerializer}, auth=[])
    @action(detail=False, methods=["post"], url_path="obtain", permission_classes=[AllowAny],
            authentication_classes=[], throttle_classes=[ScopedRateThrottle])
    def obtain(self, request):
        """The password grant: an e-mail and password in, a new token out (201, shown once) — a first token without a
        browser. Throttled per address; repeated failures lock the (account, address) pair out (429, ``locked_out``);
        wrong credentials answer 401 ``invalid_credentials``. Audited either way."""
        serializer = s.TokenObtainSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # authenticate() with the request: django-axes counts the failure and refuses a locked-out pair.
        user = authenticate(request._request, username=data["email"], password=data["password"])
        if user is None:
            locked = bool(getattr(request._request, "axes_locked_out", False))
            audit_record(action="token.obtain", outcome=REFUSED, request=request, actor_kind=ActorKind.API_TOKEN,
                         target_type="user", target_label=data["email"][:255],
                         reason="locked out" if locked else "wrong e-mail or password", details={"via": "api"})
            if locked:
                raise HubRefusal("Too many failed attempts for this account from your address; try again later.",
                                 code="locked_out", status_code=status.HTTP_429_TOO_MANY_REQUESTS)
            raise HubRefusal("Wrong e-mail or password.", code="invalid_credentials",
                             status_code=status.HTTP_401_UNAUTHORIZED)
        token, plaintext = api_token_issue(user=user, name=data["name"], expires_at=data["expires_at"])
        audit_record(action="token.obtain", target=token, actor=user, actor_kind=ActorKind.API_TOKEN, request=request,
                     details={"via": "api", "name": data["name"]})
        body = s.ApiTokenSerializer(token, context={"plaintext": {token.pk: plaintext}}).data
        return Response(body, status=status.HTTP_201_CREATED)
