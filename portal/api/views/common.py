"""What every API view shares: cursor pages, 202 replies, audited and re-read writes."""
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, mixins, status
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from cells.audit import FAILED, REFUSED, SUCCEEDED, audit_record, request_fields
from portal.api import serializers as s
from portal.api.idempotency import REPLAYED_HEADER
from portal.api.parsers import body_too_large, nul_path

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Repeat a request safely: the same key returns the first reply and starts nothing new.",
)


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


def _content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class AuditedWrites:
    """Audits every write through the API once, whatever its outcome (a view mixin; place it first).

    It also reads the request before any work starts, so every bad input is refused in the error shape
    first: a NUL character in the path (404) or a query parameter (400), a body over the size limit (413),
    a body that is not JSON or a form (415), that does not parse or holds a NUL character (400).
    """

    _audit_target = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if any("\x00" in str(value) for value in kwargs.values()):
            raise exceptions.NotFound()
        for name, values in request.query_params.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                raise exceptions.ValidationError({name.replace("\x00", ""): ["NUL characters are not allowed."]})
        if request.method not in SAFE_METHODS:
            too_large = body_too_large(_content_length(request))
            if too_large is not None:
                raise too_large
            data = request.data  # parse now: a body that cannot be read stops the request before any work
            where = nul_path({key: values for key, values in data.lists()} if hasattr(data, "lists") else data)
            if where is not None:  # forms too: PostgreSQL cannot store U+0000
                raise exceptions.ValidationError({where.split("[")[0]: ["NUL characters are not allowed."]})

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
        # Only what was parsed before the work: the body is never (re)read here, outside the error handler.
        body = getattr(request, "_full_data", None)
        body = body if hasattr(body, "get") else {}
        details = {"via": "api", "status": code, **request_fields(body)}
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
            reason = str(body.get("reason", ""))
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
