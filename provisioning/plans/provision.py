"""The provision plan: a signup becomes a running instance.

Provision (DESIGN.md): place → database → share → compute → dns → running. Every step is idempotent
(drivers derive names from ids), so a re-run after a crash repeats at most the step it died in.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from cells.choices import InstanceState, OperationKind, ShareStatus
from cells.models import Instance, Operation, Release, Share
from cells.placement import instance_place
from cells.states import INSTANCE, SHARE
from provisioning import drivers
from provisioning.backups.selectors import database_kwargs
from provisioning.drivers.base import DeploymentSpec
from provisioning.firewall import share_firewall_follow
from provisioning.plans.registry import MINUTES, Plan, register_plan
from provisioning.ports import instance_address, instance_port, instance_port_allocate, instance_port_release

logger = logging.getLogger(__name__)
_HOST_PORT = Instance.host_port.related


def instance_hostname(instance: Instance) -> str:
    return f"{instance.name}.{settings.CELLHUB['HUB_DOMAIN']}"


def release_image(version: str) -> str:
    """The image (without tag) of the release ``version``; the hub's default image for a version with no release."""
    image = Release.objects.filter(version=version).values_list("image", flat=True).first()
    return image or settings.CELLHUB["DEFAULT_IMAGE"]


def deployment_spec(instance: Instance, *, database_url: str, share: Share) -> DeploymentSpec:
    """The instance's deployment. On a compute pool whose deployments listen on a port of this machine
    (``capabilities.host_ports``), the instance's port is part of it — allocated here on first need (idempotent)."""
    compute = drivers.for_pool(instance.compute_pool)
    port = instance_port_allocate(instance=instance) if compute.capabilities.host_ports else None
    return DeploymentSpec(
        name=instance.name,
        namespace=compute.namespace(instance),
        image=release_image(instance.server_version),
        version=instance.server_version,
        cpu_millicores=instance.cpu_millicores,
        memory_mib=instance.memory_mib,
        hostname=instance.hostname or instance_hostname(instance),
        database_url=database_url,
        share_endpoint=share.endpoint,
        share_name=share.name,
        share_credentials=drivers.for_pool(share.pool).mount_credentials(share=share),
        port=port,
    )


def _instance(operation: Operation) -> Instance:
    """The instance, read afresh by each step with everything the steps use joined in one query: its region, reef,
    pools, share (with its pool), port and current database."""
    return Instance.objects.select_related(
        "region", "reef", "database_pool", "compute_pool", "share__pool", "host_port", "current_database"
    ).get(pk=operation.instance_id)


# ---- provision -------------------------------------------------------------------------------------------


def provision_begin(operation: Operation) -> None:
    """pending or failed → provisioning; a provision taken over after a crash is already provisioning."""
    instance = operation.instance
    if instance.state != InstanceState.PROVISIONING:
        INSTANCE.change(instance, InstanceState.PROVISIONING)


def provision_place(operation: Operation) -> None:
    instance_place(instance=_instance(operation))


def provision_database(operation: Operation) -> None:
    """Create the database and its login, and let the instance's compute through the server's firewall."""
    instance = _instance(operation)
    database = drivers.for_pool(instance.database_pool)
    database.create_database(instance=instance)
    address = drivers.for_pool(instance.compute_pool).egress_address(instance=instance)
    database.admit_client(instance=instance, address=address)


def provision_share(operation: Operation) -> None:
    """Create the share's bucket / folder (its firewall admits no one until the ``firewall`` step)."""
    instance = _instance(operation)
    share = instance.share
    endpoint = drivers.for_pool(share.pool).create_share(share=share)
    Share.objects.filter(pk=share.pk).update(endpoint=endpoint)


def provision_firewall(operation: Operation) -> None:
    """Firewall the share to the instance's own address, known once its compute runs (a pod's node, say)."""
    share_firewall_follow(instance=_instance(operation), loaded=True)


def provision_compute(operation: Operation) -> None:
    instance = _instance(operation)
    credentials = drivers.for_pool(instance.database_pool).credentials(instance, **database_kwargs(instance))
    spec = deployment_spec(instance, database_url=credentials.url, share=instance.share)
    drivers.for_pool(instance.compute_pool).deploy(spec=spec)


def provision_dns(operation: Operation) -> None:
    """Point the instance's name at its reef's ingress — or, on a local runtime, at the loopback address its
    process listens on, with its port."""
    instance = _instance(operation)
    port = instance_port(instance)
    address = "127.0.0.1" if port else (instance.reef.ingress_address or "127.0.0.1")
    drivers.for_dns(instance.region).upsert_record(name=instance.name, address=address, port=port)
    # The run's instance (the engine's, which the welcome mail is written from) learns its port from this read.
    _HOST_PORT.set_cached_value(operation.instance, getattr(instance, "host_port", None))


def provision_succeed(operation: Operation) -> None:
    """provisioning → running, and the welcome mail once that commits. The engine calls it inside the transaction
    that ends the operation (so it opens no savepoint of its own)."""
    instance = operation.instance
    INSTANCE.change(instance, InstanceState.RUNNING, hostname=instance.hostname or instance_hostname(instance))
    transaction.on_commit(lambda: instance_send_welcome(instance=instance))


def instance_send_welcome(*, instance: Instance) -> None:
    """Tell the owner their instance is running and where; a mail failure never fails the provision. ``instance``
    as the engine loaded it, with its owner and region (the claim reads them with the operation)."""
    if not instance.owner.email:
        return
    try:
        send_mail(
            subject=f"Your instance {instance.name} is running",
            message=(
                f"Hello,\n\nyour instance {instance.name} is up and running at {instance_address(instance)}\n"
                f"Version {instance.server_version}, region {instance.region.name}.\n\n— Cell Hub"
            ),
            from_email=None,
            recipient_list=[instance.owner.email],
        )
    except Exception:
        logger.exception("welcome mail to %s for %s not sent", instance.owner.email, instance.name)


def instance_release(instance: Instance) -> list[str]:
    """Give back what a provision took: deployment, DNS record, share (scrubbed, unfirewalled), database.

    Each part is released on its own. A part that fails to release stays referenced by the instance
    (never leaked back into a pool) and is named in the returned problems; a retry re-runs every step,
    and placement keeps what the instance still holds.
    """
    problems = []
    instance = Instance.objects.select_related("region", "reef", "database_pool", "compute_pool").get(pk=instance.pk)

    def attempt(what, action) -> bool:
        try:
            action()
            return True
        except Exception as error:
            problems.append(f"{what}: {error.__class__.__name__}: {error}")
            return False

    released = {}
    if instance.compute_pool_id and attempt(
        "deployment", lambda: drivers.for_pool(instance.compute_pool).delete(instance=instance)
    ):
        released["compute_pool"] = None
        instance_port_release(instance=instance)
    attempt("dns record", lambda: drivers.for_dns(instance.region).delete_record(name=instance.name))
    share = Share.objects.select_related("pool").filter(instance=instance).first()
    if share is not None:
        storage = drivers.for_pool(share.pool)

        def release_share():
            if storage.share_exists(share=share):
                storage.scrub_share(share=share)
                storage.set_firewall(share=share, address="")
            SHARE.change(share, ShareStatus.AVAILABLE, instance=None, firewall_address="")

        attempt("share", release_share)
    if instance.database_pool_id and attempt(
        "database", lambda: drivers.for_pool(instance.database_pool).drop_database(instance=instance)
    ):
        released["database_pool"] = None
    if not problems:
        released["reef"] = None
    Instance.objects.filter(pk=instance.pk).update(**released)
    return problems


def provision_fail(operation: Operation, message: str) -> str:
    """Release what the provision took, mark the instance failed; a retry starts from the first step."""
    instance = operation.instance
    problems = instance_release(instance)
    instance.refresh_from_db()
    if instance.state != InstanceState.FAILED:
        INSTANCE.change(instance, InstanceState.FAILED)
    Operation.objects.filter(pk=operation.pk).update(steps=[])
    if problems:
        return "cleanup incomplete (a retry finishes it): " + "; ".join(problems)
    return "everything taken was released"


PROVISION = Plan(
    steps=[
        ("place", provision_place),
        ("database", provision_database),
        ("share", provision_share),
        ("compute", provision_compute),
        ("firewall", provision_firewall),
        ("dns", provision_dns),
    ],
    begin=provision_begin,
    succeed=provision_succeed,
    fail=provision_fail,
    # Nothing else may act on an instance that is being made.
    excludes=frozenset({
        OperationKind.BACKUP, OperationKind.RESTORE, OperationKind.UPGRADE, OperationKind.STOP, OperationKind.START,
        OperationKind.DECOMMISSION,
    }),
    time_limit=30 * MINUTES,
)
register_plan(OperationKind.PROVISION, PROVISION)
