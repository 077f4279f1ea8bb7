"""Writes of the cell model: topology set-up, share bookkeeping, signup."""
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from cells.choices import OperationKind, PoolKind, ReleaseState, ShareStatus, Tier
from cells.models import CapacityShortfall, Instance, Operation, Pool, Region, Release, Share
from cells.placement import NoCapacity, RegionClosed, instance_place
from cells.validators import validate_instance_name


def share_name(*, pool: Pool, slot: int) -> str:
    """The deterministic bucket / file-share name of a slot: a repeated call finds the same resource."""
    return f"{pool.reef.region.slug}-{pool.reef.slug}-{pool.name}-s{slot:02d}"


@transaction.atomic
def pool_ensure_shares(*, pool: Pool) -> list[Share]:
    """Make sure a storage pool has one share row per slot; idempotent, returns them in slot order.

    Raises ``ValueError`` for a pool that is not a storage pool.
    """
    if pool.kind != PoolKind.STORAGE:
        raise ValueError(f"pool {pool} is a {pool.kind} pool; only storage pools have shares")
    existing = set(pool.shares.values_list("slot", flat=True))
    Share.objects.bulk_create(
        [
            Share(pool=pool, slot=slot, name=share_name(pool=pool, slot=slot), status=ShareStatus.AVAILABLE)
            for slot in range(pool.capacity)
            if slot not in existing
        ]
    )
    return list(pool.shares.order_by("slot"))


def signup_version() -> str:
    """The version new instances get: the default release, else the hub's configured default."""
    default = Release.objects.filter(state=ReleaseState.DEFAULT).values_list("version", flat=True).first()
    return default or settings.CELLHUB["DEFAULT_SERVER_VERSION"]


class SignupRefused(Exception):
    """A signup that cannot be accepted; ``field`` names the input at fault (None: not the input's fault)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def instance_signup(
    *,
    name: str,
    region: Region,
    owner=None,
    new_owner: dict | None = None,
    requested_by=None,
    tier: str = Tier.SHARED,
) -> Operation:
    """Create a pending instance placed on a reef (its slots and share taken) and queue its provision.

    The owner is ``owner``, or a new user made from ``new_owner`` (``email``, ``password``) in the same
    transaction. All or nothing: on refusal no user, instance or slot is left behind. Raises
    ``SignupRefused`` (with the field at fault) for a taken name or e-mail or a closed region, and
    ``NoCapacity`` when no reef has room — recorded as a ``CapacityShortfall`` for staff.
    """
    from provisioning.operations import operation_create

    try:
        validate_instance_name(name)
    except ValidationError as error:
        raise SignupRefused(" ".join(error.messages), "name") from error
    User = get_user_model()
    try:
        with transaction.atomic():
            if owner is None:
                email = new_owner["email"].strip().lower()
                if User.objects.filter(Q(email__iexact=email) | Q(username__iexact=email)).exists():
                    raise SignupRefused("An account with this e-mail exists; log in to add an instance.", "email")
                owner = User.objects.create_user(username=email, email=email, password=new_owner["password"])
            if Instance.objects.filter(name=name).exists():
                raise SignupRefused(f"The name “{name}” is taken; choose another.", "name")
            instance = Instance.objects.create(
                name=name,
                owner=owner,
                region=region,
                tier=tier,
                server_version=signup_version(),
                hostname=f"{name}.{settings.CELLHUB['HUB_DOMAIN']}",
            )
            started = timezone.now().isoformat()
            try:
                instance_place(instance=instance)
            except RegionClosed as error:
                raise SignupRefused(str(error), "region") from error
            place_step = {"name": "place", "started_at": started, "finished_at": timezone.now().isoformat()}
            return operation_create(
                kind=OperationKind.PROVISION, instance=instance, requested_by=requested_by or owner, steps=[place_step]
            )
    except NoCapacity as error:
        CapacityShortfall.objects.create(region=region, instance_name=name, reason=str(error))
        raise
    except IntegrityError as error:  # a concurrent signup took the name (or e-mail) between check and insert
        raise SignupRefused(f"The name “{name}” is taken; choose another.", "name") from error
