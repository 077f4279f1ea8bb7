"""The instance's lifecycle as people start it: signup, stop, start, provision retry, and staff's force-state.

Each refuses at once (a ``cells.errors.Refused``: ``IllegalTransition`` naming the current state, or
``OperationInProgress`` naming the operation in the way) when the instance cannot make that change now, and
otherwise returns the queued Operation.
"""
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from cells.choices import OPERATION_ACTIVE_STATES, InstanceState, OperationKind, ReleaseState, Tier
from cells.errors import IllegalTransition, NoCapacity, Refused
from cells.models import CapacityShortfall, Instance, Operation, Reef, Region, Release
from cells.placement import instance_place, instance_place_alone
from cells.states import INSTANCE, StateMachine
from cells.validators import validate_instance_name
from provisioning.operations import operation_create, operation_refuse_conflicts, operation_retry

logger = logging.getLogger(__name__)


def _start(instance: Instance, kind: str, target_state: str, requested_by) -> Operation:
    with transaction.atomic():
        # Work in the way first (under the instance's row lock): "a stop is queued" says more than the state.
        operation_refuse_conflicts(kind=kind, instance=instance)
        instance.refresh_from_db(fields=["state"])
        if not INSTANCE.can(instance.state, target_state):
            raise IllegalTransition(instance, instance.state, target_state)
        return operation_create(kind=kind, instance=instance, requested_by=requested_by)


def instance_stop(*, instance: Instance, requested_by=None) -> Operation:
    """Scale the instance to zero; it keeps its database, share and name. ``OperationInProgress`` while a stop,
    start, restore, upgrade or decommission is queued or running on it."""
    return _start(instance, OperationKind.STOP, InstanceState.STOPPED, requested_by)


def instance_start(*, instance: Instance, requested_by=None) -> Operation:
    """Scale a stopped instance back up. ``OperationInProgress`` as ``instance_stop``."""
    return _start(instance, OperationKind.START, InstanceState.RUNNING, requested_by)


def instance_retry_provision(*, instance: Instance, requested_by=None) -> Operation:
    """Queue the instance's failed provision again; refused unless its latest provision failed."""
    operation = (
        Operation.objects.filter(instance=instance, kind=OperationKind.PROVISION).order_by("-created_at", "-id").first()
    )
    if operation is None:
        raise IllegalTransition(instance, instance.state, "provisioning")
    return operation_retry(operation=operation, requested_by=requested_by)


# ---- signup ---------------------------------------------------------------------------------------------


def signup_version() -> str:
    """The version new instances get: the default release, else the hub's configured default."""
    default = Release.objects.filter(state=ReleaseState.DEFAULT).values_list("version", flat=True).first()
    return default or settings.CELLHUB["DEFAULT_SERVER_VERSION"]


def instance_signup(
    *,
    name: str,
    region: Region,
    owner=None,
    new_owner: dict | None = None,
    requested_by=None,
    tier: str = Tier.SHARED,
    dedicated_reef: Reef | None = None,
) -> Operation:
    """Create a pending instance placed on a reef (its slots and share taken) and queue its provision.

    The owner is ``owner``, or a new user made from ``new_owner`` (``email``, ``password``) in the same
    transaction. All or nothing: on refusal no user, instance or slot is left behind. Raises
    ``Refused`` (with the field at fault) for a taken name or e-mail or a closed region, and
    ``NoCapacity`` when no reef has room — recorded as a ``CapacityShortfall`` for staff.
    ``dedicated_reef`` (staff): the instance is placed alone on that reef, which then takes no other instance
    (``instance_place_alone``; it refuses a reef that is not empty, with ``field="dedicated_reef"``).
    """
    try:
        validate_instance_name(name)
    except ValidationError as error:
        raise Refused(" ".join(error.messages), field="name") from error
    User = get_user_model()
    try:
        with transaction.atomic():
            if owner is None:
                email = new_owner["email"].strip().lower()
                if User.objects.filter(Q(email__iexact=email) | Q(username__iexact=email)).exists():
                    raise Refused("An account with this e-mail exists; log in to add an instance.", field="email")
                owner = User.objects.create_user(username=email, email=email, password=new_owner["password"])
            if Instance.objects.filter(name=name).exists():
                raise Refused(f"The name “{name}” is taken; choose another.", field="name")
            instance = Instance.objects.create(
                name=name,
                owner=owner,
                region=region,
                tier=tier,
                server_version=signup_version(),
                hostname=f"{name}.{settings.CELLHUB['HUB_DOMAIN']}",
            )
            started = timezone.now().isoformat()
            if dedicated_reef is not None:
                instance_place_alone(instance=instance, reef=dedicated_reef)
            else:
                instance_place(instance=instance)
            place_step = {"name": "place", "started_at": started, "finished_at": timezone.now().isoformat()}
            return operation_create(
                kind=OperationKind.PROVISION, instance=instance, requested_by=requested_by or owner, steps=[place_step]
            )
    except NoCapacity as error:
        CapacityShortfall.objects.create(region=region, instance_name=name, reason=str(error))
        raise
    except IntegrityError as error:  # a concurrent signup took the name (or e-mail) between check and insert
        raise Refused(f"The name “{name}” is taken; choose another.", field="name") from error


# ---- staff override: force an instance's state ---------------------------------------------------------------

# Every state may become any other: this machine is used only by ``instance_force_state``, deliberately.
FORCE_INSTANCE = StateMachine(
    Instance, "state", {state: set(InstanceState.values) - {state} for state in InstanceState.values}
)


def instance_force_state(*, instance: Instance, state: str, expected_state: str, reason: str, forced_by) -> Instance:
    """Put the instance into ``state`` whatever the transition table says, for staff repairing a record by hand.

    Nothing else changes (no driver is called): staff use it when the row is wrong about the world. It is a
    conditional update from ``expected_state`` (the state staff saw): raises ``IllegalTransition`` naming the
    current state when someone changed it meanwhile, and ``Refused`` without a reason, for an unknown or
    unchanged state, or while an operation is queued or running on the instance (cancel it first).
    """
    reason = (reason or "").strip()
    if not reason:
        raise Refused("Say why the state is forced.", field="reason")
    if state not in InstanceState.values:
        raise Refused(f"{state!r} is not an instance state", field="state")
    if state == expected_state:
        raise Refused(f"instance {instance.name} is already {state}", field="state", current_state=expected_state)
    active = (
        Operation.objects.filter(instance=instance, state__in=[str(s) for s in OPERATION_ACTIVE_STATES])
        .order_by("created_at")
        .first()
    )
    if active is not None:
        raise Refused(
            f"operation #{active.pk} ({active.kind}) is {active.state} on {instance.name}: cancel it first",
            current_state=expected_state,
        )
    FORCE_INSTANCE.change(instance, state, only_from={expected_state})
    logger.warning(
        "instance %s forced from %s to %s by %s: %s", instance.name, expected_state, state, forced_by, reason
    )
    return instance
