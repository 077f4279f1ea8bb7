"""Each share's firewall follows its instance: the share endpoint admits the one address the instance's compute
reaches it from (``ComputeDriver.share_client_address``), and is updated when that address changes (the instance was
rescheduled, restarted elsewhere, moved to another cluster).

Called by the provision plan (after the compute step: some platforms know the address only once the instance
runs), by a start, and by the health pass for every running instance.
"""
from __future__ import annotations

from django.db import transaction

from cells.audit import audit_record
from cells.models import Instance, Share
from provisioning import drivers


def share_firewall_follow(*, instance: Instance, loaded: bool = False) -> str | None:
    """Point the instance's share firewall at the instance's current compute address.

    ``loaded``: the caller read ``instance`` just now with its compute pool and its share (and the share's pool)
    joined, so they are not read again; else they are read here.

    Returns the new address when it changed (the storage provider was told, the share row updated in the same
    transaction as its audit row), ``None`` when it already matched or the instance holds no share or compute.
    Raises the drivers' errors: ``TransientDriverError`` while the platform does not know the address yet (a pod
    not scheduled), so a plan step retries. Idempotent; two callers racing both write the same address.
    """
    if loaded:
        share = getattr(instance, "share", None)  # None: the instance holds no share
    else:
        instance = Instance.objects.select_related("compute_pool").get(pk=instance.pk)
        share = Share.objects.select_related("pool").filter(instance=instance).first()
    if share is None or instance.compute_pool is None:
        return None
    address = drivers.for_pool(instance.compute_pool).share_client_address(instance=instance)
    if address == share.firewall_address:
        return None
    drivers.for_pool(share.pool).set_firewall(share=share, address=address)
    with transaction.atomic():
        changed = Share.objects.filter(pk=share.pk, instance=instance).update(firewall_address=address)
        if changed:
            audit_record(action="share.firewall", target=share, reason=f"instance {instance.name} is at {address}",
                         details={"instance": instance.pk, "previous": share.firewall_address, "address": address})
    return address
