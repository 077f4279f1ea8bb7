"""OpenAPI post-processing: every operation documents the error replies it can give, in the one error shape."""

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "fields"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": True},
                "current_state": {"type": "string", "nullable": True},
                "operation": {"type": "integer"},
                "operation_kind": {"type": "string"},
                "operation_state": {"type": "string"},
                # A pool that cannot be retired: the instances that still use it (the first few), their number,
                # and its shares still at work.
                "instances": {"type": "array", "items": {"type": "string"}},
                "instance_count": {"type": "integer"},
                "shares": {"type": "array", "items": {"type": "string"}},
            },
        }
    },
}
DESCRIPTIONS = {
    "400": "Invalid input: `fields` names each field at fault.",
    "401": "Not signed in, or the token is invalid, expired or revoked.",
    "403": "Signed in, but the role may not do this.",
    "404": "No such object (or not yours).",
    "409": "The object's current state forbids this (`current_state`), or the same work is in progress.",
    "413": "The request body is larger than the hub accepts.",
    "415": "The body is neither JSON nor a form.",
    "422": "The Idempotency-Key was used for a different request.",
    "429": "Too many requests (signups or failed token attempts).",
}


def add_error_responses(result, generator, request, public):
    """drf-spectacular hook: add the error shape and the error statuses to every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            statuses = ["401", "403", "404", "429"]
            if method != "get":
                statuses += ["400", "409", "413", "415", "422"]
            elif "{" not in "".join(path_item.get("parameters", [])):
                statuses.append("400")  # a bad filter value
            responses = operation.setdefault("responses", {})
            for code in statuses:
                responses.setdefault(
                    code, {"description": DESCRIPTIONS[code], "content": {"application/json": {"schema": ERROR_REF}}}
                )
    return result
