"""A storage pool top-up on an Azure reef: the capacity service orders a pool, whose top-up creates a new storage
account (HTTPS only, TLS 1.2, network default deny with the hub's address) and a file share per slot; the account's
firewall then admits the instances placed on it and keeps the rules operators add. A failure at each step deletes
what the top-up made (nothing left in Azure, no share rows) and a retry makes the pool. Azure Files cannot move its
shares to another host: replacing a failed pool is refused before anything is made."""
from __future__ import annotations

import re

import pytest

from cells.choices import InstanceState, OperationState, PoolKind, PoolStatus
from cells.errors import NotSupported
from cells.models import Operation, Pool, Share
from provisioning import faults
from provisioning.capacity.services import pool_drain, pool_mark_failed, pool_replace, reef_top_up
from provisioning.drivers.base import resource_prefix
from provisioning.operations import operation_retry
from tests.provisioning.azure_reef.conftest import EGRESS, HUB, STORAGE_API, SUB

pytestmark = pytest.mark.django_db

GROUP = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Storage/storageAccounts"
OPERATORS_RULE = {"value": "198.51.100.0/24", "action": "Allow"}
OPERATORS_SUBNET = {"id": "/subscriptions/x/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/ops/"
                          "subnets/jump", "action": "Allow"}


@pytest.fixture
def storage_short(reef, settings):
    """The reef wants 4 free shares (it has 3) and new storage pools of 2 shares; the other kinds are fine."""
    settings.CELLHUB = {**settings.CELLHUB, "CAPACITY": {
        "FLOOR": {"database": 0, "compute": 0, "storage": 4}, "POOL_SIZE": {"storage": 2}, "MAX_POOLS_PER_PASS": 1}}
    return reef


def _top_up(reef, django_capture_on_commit_callbacks) -> Operation:
    with django_capture_on_commit_callbacks(execute=True):
        operations = reef_top_up(reef=reef["reef"])
    (operation,) = operations
    operation.refresh_from_db()
    assert operation.pool.kind == PoolKind.STORAGE
    return operation


def _account_name(pool: Pool) -> str:
    return re.sub(r"[^a-z0-9]", "", f"{resource_prefix()}p{pool.pk}".lower())[-24:]


def test_a_storage_top_up_creates_an_account_and_its_file_shares_whose_firewall_keeps_operators_rules(
    storage_short, cloud, signup, django_capture_on_commit_callbacks
):
    reef = storage_short
    operation = _top_up(reef, django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    pool = Pool.objects.get(pk=operation.pool_id)
    account = _account_name(pool)
    assert pool.status == PoolStatus.AVAILABLE and pool.capacity == 2
    assert pool.config["account_name"] == account  # its own account, never the template's
    assert {key: pool.config[key] for key in ("hub_address", "archive_account", "resource_group")} == {
        "hub_address": HUB, "archive_account": "cellsdeep", "resource_group": "rg-cells"}
    assert pool.external_id == f"{GROUP}/{account}"

    create = cloud.calls("PUT", rf"/storageAccounts/{account}$")
    assert len(create) == 1
    assert create[0].query["api-version"] == [STORAGE_API]
    assert create[0].body == {
        "sku": {"name": "Standard_LRS"}, "kind": "StorageV2", "location": "westus2",
        "tags": {"cellhub-pool": str(pool.pk)},
        "properties": {
            "networkAcls": {"bypass": "AzureServices", "ipRules": [{"value": HUB, "action": "Allow"}],
                            "defaultAction": "Deny"},
            "supportsHttpsTrafficOnly": True, "allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2"},
    }
    assert cloud.calls("GET", rf"/storageAccounts/{account}$")  # the long-running creation followed to its end
    shares = list(Share.objects.filter(pool=pool).order_by("slot"))
    assert [share.endpoint for share in shares] == [
        f"azurefile://{account}.file.core.windows.net/{share.name}" for share in shares]
    puts = cloud.calls("PUT", rf"/storageAccounts/{account}/fileServices/default/shares/")
    assert [(put.path.rsplit("/", 1)[-1], put.body) for put in puts] == [
        (share.name, {"properties": {"shareQuota": 100, "enabledProtocols": "SMB"}}) for share in shares]
    assert sorted(cloud.files) == sorted([("cellswest1", s.name) for s in reef["storage"].shares.all()] + [
        (account, share.name) for share in shares])

    # Operators add their own rules to the new account; an instance placed on it is admitted, their rules stay.
    acls = cloud.resources[f"{GROUP}/{account}".lower()]["properties"]["networkAcls"]
    acls["ipRules"].append(OPERATORS_RULE)
    acls["virtualNetworkRules"] = [OPERATORS_SUBNET]
    pool_drain(pool=reef["storage"])
    instance = signup("acme")
    assert instance.state == InstanceState.RUNNING
    assert instance.share.pool_id == pool.pk
    patch = cloud.calls("PATCH", rf"/storageAccounts/{account}$")[-1]
    rules = patch.body["properties"]["networkAcls"]
    assert rules["ipRules"] == sorted([{"value": HUB, "action": "Allow"}, {"value": EGRESS, "action": "Allow"},
                                       OPERATORS_RULE], key=lambda rule: rule["value"])
    assert rules["virtualNetworkRules"] == [OPERATORS_SUBNET]
    assert (rules["defaultAction"], rules["bypass"]) == ("Deny", "AzureServices")


def _break(case, cloud):
    kind, detail = case
    if kind == "failpoint":
        faults.arm(f"top_up.{detail}.after", "permanent")
    elif kind == "account creation fails":
        cloud.fail_lro("PUT", r"/storageAccounts/[^/]+$")
    elif kind == "account name taken":
        cloud.fail("PUT", r"/storageAccounts/[^/]+$", status=409, code="StorageAccountAlreadyTaken")
    elif kind == "second share failing":
        cloud.fail("PUT", r"/fileServices/default/shares/[^/]+-s01$", status=500, times=1000)


TOP_UP_FAILURES = [
    *[("failpoint", step) for step in ("pool", "alarms", "shares")],
    ("account creation fails", "pool"), ("account name taken", "pool"), ("second share failing", "shares"),
]


@pytest.mark.parametrize("case", TOP_UP_FAILURES, ids=[f"{k}-{s}" for k, s in TOP_UP_FAILURES])
def test_a_storage_top_up_failing_at_each_step_deletes_what_it_made_and_a_retry_makes_the_pool(
    case, storage_short, cloud, sync_tasks, django_capture_on_commit_callbacks
):
    before = cloud.state()
    _break(case, cloud)
    operation = _top_up(storage_short, django_capture_on_commit_callbacks)

    assert operation.state == OperationState.FAILED
    assert "everything the top-up made was deleted" in operation.error, operation.error
    pool = Pool.objects.get(pk=operation.pool_id)
    assert pool.status == PoolStatus.FAILED and pool.status_reason.startswith("top-up failed")
    assert cloud.state() == before  # no account (a failed one included), no file share
    assert not Share.objects.filter(pool=pool).exists()
    assert operation.steps == []

    faults.disarm_all()
    cloud.failures.clear()
    cloud.lro_failures.clear()
    with django_capture_on_commit_callbacks(execute=True):
        retried = operation_retry(operation=operation)
    retried.refresh_from_db()
    pool.refresh_from_db()
    assert retried.state == OperationState.SUCCEEDED, retried.error
    assert pool.status == PoolStatus.AVAILABLE
    account = _account_name(pool)
    assert "provisioningState" not in cloud.resources[f"{GROUP}/{account}".lower()].get("properties", {})
    assert sorted(name for acct, name in cloud.files if acct == account) == sorted(
        Share.objects.filter(pool=pool).values_list("name", flat=True))
    assert Share.objects.filter(pool=pool).count() == 2


def test_a_failed_azure_files_pool_cannot_be_replaced_and_nothing_is_made(reef, cloud):
    storage = reef["storage"]
    pool_mark_failed(pool=storage, reason="the account was deleted by mistake")
    pools, operations = Pool.objects.count(), Operation.objects.count()

    with pytest.raises(NotSupported, match="cannot move its shares to another host"):
        pool_replace(pool=storage)

    assert (Pool.objects.count(), Operation.objects.count()) == (pools, operations)
    assert cloud.requests == []
