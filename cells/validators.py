"""Field validators that mirror the database checks with a readable message for forms and the API."""
import re

from django.core.exceptions import ValidationError

from cells.choices import (
    INSTANCE_NAME_MAX_LENGTH,
    INSTANCE_NAME_MIN_LENGTH,
    INSTANCE_NAME_REGEX,
    RESERVED_INSTANCE_NAMES,
)

_LABEL = re.compile(INSTANCE_NAME_REGEX)  # also enforces the length


def validate_instance_name(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is a free-to-take RFC 1123 DNS label of 3–40 characters."""
    if not INSTANCE_NAME_MIN_LENGTH <= len(value) <= INSTANCE_NAME_MAX_LENGTH:
        raise ValidationError(
            f"Use {INSTANCE_NAME_MIN_LENGTH} to {INSTANCE_NAME_MAX_LENGTH} characters.", code="length"
        )
    if not _LABEL.match(value):
        raise ValidationError(
            "Use lowercase letters, digits and hyphens only, starting and ending with a letter or digit.",
            code="dns_label",
        )
    if value in RESERVED_INSTANCE_NAMES:
        raise ValidationError(f"“{value}” is reserved; choose another name.", code="reserved")


# A pool's config names the environment variables holding its secrets (keys ending in ``_env``). Only variables
# made for that purpose may be named: a config that could name any variable would read the hub's own secrets
# (``SECRET_KEY``, ``CELLHUB_BACKUP_KEY``…) and send them to whatever host the config points at.
POOL_SECRET_ENV_PREFIX = "CELLHUB_POOL_SECRET_"
SECRET_REFERENCE_SUFFIX = "_env"
_POOL_SECRET_ENV = re.compile(rf"^{POOL_SECRET_ENV_PREFIX}[A-Z0-9_]{{1,100}}$")


def pool_secret_env_allowed(name) -> bool:
    """True when ``name`` may hold a pool's secret: ``CELLHUB_POOL_SECRET_`` + upper-case letters, digits, ``_``."""
    return isinstance(name, str) and bool(_POOL_SECRET_ENV.match(name))


def validate_pool_config(value) -> None:
    """A pool's config is a JSON object; each ``*_env`` key names an allowed secret variable (see
    ``pool_secret_env_allowed``). Raises ``ValidationError`` naming the key at fault."""
    if not isinstance(value, dict):
        raise ValidationError("The config must be a JSON object.", code="not_an_object")
    for key, item in value.items():
        if key.endswith(SECRET_REFERENCE_SUFFIX) and not pool_secret_env_allowed(item):
            raise ValidationError(
                f"{key} must name an environment variable starting with {POOL_SECRET_ENV_PREFIX} "
                "(upper-case letters, digits and underscores).", code="secret_not_allowed",
            )


# A release's version becomes an image tag, a path segment and a URL: digits and dots, an optional suffix.
RELEASE_VERSION_REGEX = r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}(-[0-9A-Za-z]{1,20}(\.[0-9A-Za-z]{1,20}){0,3})?$"
_RELEASE_VERSION = re.compile(RELEASE_VERSION_REGEX)
# A container image reference without its tag: [registry[:port]/]path, lower case (the OCI distribution grammar).
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"^(?:[a-z0-9.-]+(?::[0-9]{{1,5}})?/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*$")
# Markup, quotes and control characters have no place in a name or a provider's code.
_UNSAFE_TEXT = re.compile(r"[<>\"'`\\\x00-\x1f\x7f]")


def validate_release_version(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is a plain version such as ``2026.4.1`` or ``1.0-rc1``."""
    if not _RELEASE_VERSION.match(value or ""):
        raise ValidationError("Use a version such as 2026.4.1 or 2.0-rc1 (digits and dots, an optional suffix).",
                              code="version")


def validate_image_reference(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is a container image reference without tag (``registry/path``)."""
    if not _IMAGE.match(value or ""):
        raise ValidationError("Use an image reference without tag, e.g. registry.example.com/cells/server.",
                              code="image")


def validate_safe_text(value: str) -> None:
    """Raise ``ValidationError`` if ``value`` holds markup, quotes, backslashes or control characters."""
    if _UNSAFE_TEXT.search(value or ""):
        raise ValidationError("Use letters, digits, spaces and simple punctuation only (no <, >, quotes or "
                              "control characters).", code="unsafe_text")
