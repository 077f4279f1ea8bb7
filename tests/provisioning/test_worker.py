"""The real worker: django-q2's qcluster runs the provision; killed mid-step, a re-delivery finishes it."""
import pytest

from cells.choices import InstanceState, OperationState, Provider, ShareStatus
from cells.models import Instance, Operation, Share
from provisioning import drivers
from provisioning.lifecycle import instance_signup
from tests.conftest import wait_for
from tests.factories import make_cell

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _signup(cell, name):
    return instance_signup(
        name=name, region=cell["reef"].region,
        new_owner={"email": f"{name}@example.com", "password": "a-long-enough-passphrase"},
    )


def test_qcluster_provisions_a_signup(qcluster):
    cell = make_cell(capacity=2, database_provider=Provider.POSTGRES)
    qcluster()
    operation = _signup(cell, "worker-made")
    wait_for(lambda: Instance.objects.get(name="worker-made").state == InstanceState.RUNNING, message="running")
    operation.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED and operation.attempts == 1
    instance = operation.instance
    assert drivers.for_pool(cell["database"]).database_exists(instance=instance)
    assert drivers.for_dns(cell["reef"].region).lookup(name="worker-made") == cell["reef"].ingress_address


def test_a_worker_killed_mid_provision_is_finished_by_the_next_without_duplicates(qcluster):
    cell = make_cell(capacity=2, database_provider=Provider.POSTGRES)
    doomed = qcluster(CELLHUB_FAILPOINTS="provision.compute.after=hang")
    operation = _signup(cell, "crashy")
    instance = operation.instance
    compute = drivers.for_pool(cell["compute"])

    # The worker deployed compute and hangs before recording the step: kill it there.
    wait_for(lambda: compute.status(instance=instance).exists, message="the deployment written")
    wait_for(lambda: Operation.objects.get(pk=operation.pk).done_step_names == ["place", "database", "share"],
             message="three steps recorded")
    qcluster.kill(doomed)
    assert Operation.objects.get(pk=operation.pk).state == OperationState.RUNNING  # nobody finished it

    qcluster()  # a fresh worker: the broker re-delivers the unacknowledged task after Q_RETRY seconds
    wait_for(lambda: Instance.objects.get(pk=instance.pk).state == InstanceState.RUNNING, timeout=90,
             message="the re-delivered task to finish")
    operation.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED
    assert operation.done_step_names == ["place", "database", "share", "compute", "firewall", "dns"]  # each once
    assert operation.attempts == 2
    assert Share.objects.filter(instance=instance, status=ShareStatus.ASSIGNED).count() == 1
    database = drivers.for_pool(cell["database"])
    assert database.list_databases().count(database.database_name(instance)) == 1
    assert compute.list_deployments() == [compute.namespace(instance)]
    assert list(drivers.for_dns(cell["reef"].region).list_records()) == ["crashy"]
