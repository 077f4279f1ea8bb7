"""The scrub plan: a share that failed (its scrub, or anything else) is wiped and returned to its pool.

The decommission plan scrubs a share as one of its steps; this is the same work on its own, for staff, once
the share was marked ``failed`` (a failed share holds no instance) — ``share_scrub``. Steps, each idempotent:

1. scrub — ``failed`` → ``scrubbing``; every file removed and the firewall closed, then verified empty;
2. return_share — ``available`` again, indistinguishable from a fresh share.

A failure leaves the share ``scrubbing`` (out of the pool); a retry resumes at the step that failed.
"""
from __future__ import annotations

from cells.choices import OperationKind, ShareStatus
from cells.models import Operation, Share
from cells.states import SHARE
from provisioning.drivers.base import PermanentDriverError
from provisioning.plans.decommission import share_scrub_and_verify
from provisioning.plans.registry import HOURS, Plan, register_plan


def _share(operation: Operation) -> Share:
    return Share.objects.select_related("pool").get(pk=operation.share_id)


def scrub_begin(operation: Operation) -> None:
    """The service checked the share was failed; a scrub resumed after a crash finds it scrubbing."""
    share = _share(operation)
    if share.status not in {ShareStatus.FAILED, ShareStatus.SCRUBBING} and "scrub" not in operation.done_step_names:
        raise PermanentDriverError(f"share {share} is {share.status}, not failed: it is not scrubbed")


def scrub_scrub(operation: Operation) -> None:
    share = _share(operation)
    if share.status == ShareStatus.FAILED:
        SHARE.change(share, ShareStatus.SCRUBBING)
    elif share.status != ShareStatus.SCRUBBING:
        raise PermanentDriverError(f"share {share} is {share.status}, not scrubbing")
    share_scrub_and_verify(share)


def scrub_return_share(operation: Operation) -> None:
    share = _share(operation)
    if share.status == ShareStatus.SCRUBBING:
        SHARE.change(share, ShareStatus.AVAILABLE, instance=None, firewall_address="")
    elif share.status not in {ShareStatus.AVAILABLE, ShareStatus.ASSIGNED}:
        # available or assigned: returned already (a re-run), perhaps taken by a new instance by now
        raise PermanentDriverError(f"share {share} is {share.status}, not scrubbing")


def scrub_succeed(operation: Operation) -> None:
    """Nothing further: the share is back in its pool."""


def scrub_fail(operation: Operation, error: str) -> str:
    return "the share stays out of its pool (scrubbing or failed); a retry resumes at the step that failed"


SCRUB = Plan(
    steps=[("scrub", scrub_scrub), ("return_share", scrub_return_share)],
    begin=scrub_begin,
    succeed=scrub_succeed,
    fail=scrub_fail,
    time_limit=2 * HOURS,
)
register_plan(OperationKind.SCRUB, SCRUB)
