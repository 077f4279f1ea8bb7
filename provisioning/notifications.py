"""Telling staff about work that failed: the customer's failure page says they have been told, so they are."""
from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail

from cells.models import Operation

logger = logging.getLogger(__name__)


def staff_emails() -> list[str]:
    """The addresses of active staff who have one."""
    return list(
        get_user_model().objects.filter(is_staff=True, is_active=True).exclude(email="").values_list("email", flat=True)
    )


def operation_failure_notify(*, operation: Operation, step: str = "") -> bool:
    """E-mail staff that ``operation`` failed (at ``step``), with its error and where to act; False when no staff
    has an address or the mail could not be sent (a mail failure never fails anything else)."""
    recipients = staff_emails()
    if not recipients:
        return False
    target = operation.target
    what = f"{operation.get_kind_display().lower()} of {target}" if target else operation.get_kind_display().lower()
    base = settings.CELLHUB.get("HUB_URL", "").rstrip("/")
    try:
        send_mail(
            subject=f"[Cell Hub] {what} failed" + (f" at {step}" if step else ""),
            message=(
                f"Operation #{operation.pk} ({what}) failed" + (f" at step {step}" if step else "") + ":\n\n"
                f"{operation.error}\n\n"
                f"Its page: {base}/admin/cells/operation/{operation.pk}/change/\n"
                f"Every failed operation: {base}/admin/cells/operation/?state__exact=failed\n"
                "Fix the cause and retry it there; it resumes at the step that failed."
            ),
            from_email=None,
            recipient_list=recipients,
        )
    except Exception:
        logger.exception("failure mail for operation %s not sent", operation.pk)
        return False
    return True
