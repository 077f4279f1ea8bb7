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
