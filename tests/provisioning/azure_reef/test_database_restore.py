"""A point-in-time restore on an Azure reef failing at each step: the instance stays on the database it uses (its
deployment's connection string too), the unfinished new database is deleted — one whose restore Azure failed
included — and a retry restores and switches in one step."""
from __future__ import annotations

from datetime import timedelta

import pytds
import pytest
from django.utils import timezone

from cells.choices import InstanceState, OperationState
from provisioning import drivers, faults
from provisioning.backups import instance_restore
from provisioning.models import InstanceDatabase, Restore, RestoreState
from provisioning.operations import operation_retry
from tests.provisioning.azure_reef.conftest import SERVER, namespace

pytestmark = pytest.mark.django_db


def _database_url(kube, instance) -> str:
    return kube.objects[("secrets", namespace(instance), f"{instance.name}-database")]["stringData"]["DATABASE_URL"]


def _break(case, cloud, kube, tds):
    kind, detail = case
    if kind == "failpoint":
        faults.arm(f"restore.{detail}.after", "permanent")
    elif kind == "azure fails the restore":
        cloud.fail_lro("PUT", r"/databases/[^/]+_r\d+$")
    elif kind == "contained user refused":
        tds.fail = pytds.ProgrammingError("User does not have permission to perform this action.")
    elif kind == "deployment refused":
        kube.refuse[("PATCH", "secrets")] = [403, 1]


RESTORE_FAILURES = [
    *[("failpoint", step) for step in ("verify", "safeguard", "restore", "activate")],
    ("azure fails the restore", "restore"), ("contained user refused", "restore"), ("deployment refused", "activate"),
]


@pytest.mark.parametrize("case", RESTORE_FAILURES, ids=[f"{k}-{s}" for k, s in RESTORE_FAILURES])
def test_a_point_in_time_restore_failing_at_each_step_keeps_the_instance_on_its_database_and_a_retry_switches(
    case, signup, cloud, kube, tds, run
):
    instance = signup("acme")
    database = drivers.for_pool(instance.database_pool).database_name(instance)
    url = _database_url(kube, instance)
    assert f"/{database}?" in url
    _break(case, cloud, kube, tds)

    operation = run(instance_restore, instance=instance, point_in_time=timezone.now() - timedelta(hours=1))

    assert operation.state == OperationState.FAILED
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.FAILED
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    if case == ("failpoint", "activate"):  # failed once switched: it stays switched, nothing is dropped
        assert f"the instance still uses database {restore.new_database}" in operation.error, operation.error
        assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
        assert f"/{restore.new_database}?" in _database_url(kube, instance)
        assert len(cloud.arm_paths(r"/databases/[^/]+$")) == 2
    else:
        assert f"the instance still uses database {database}" in operation.error, operation.error
        assert not InstanceDatabase.objects.filter(instance=instance).exists()
        assert cloud.arm_paths(r"/databases/[^/]+$") == [f"{SERVER}/databases/{database}"]  # unfinished: deleted
        assert _database_url(kube, instance) == url

    faults.disarm_all()
    cloud.lro_failures.clear()
    kube.refuse.clear()
    tds.fail = None
    retried = run(operation_retry, operation=operation)
    assert retried.state == OperationState.SUCCEEDED, retried.error
    new = InstanceDatabase.objects.get(instance=instance).name
    assert new == restore.new_database
    assert sorted(cloud.arm_paths(r"/databases/[^/]+$")) == sorted(
        [f"{SERVER}/databases/{database}", f"{SERVER}/databases/{new}"])  # the old one kept until confirmed
    assert "provisioningState" not in cloud.resources[f"{SERVER}/databases/{new}".lower()]["properties"]
    assert f"/{new}?" in _database_url(kube, instance)
    assert tds.statements[-1][0] == new
