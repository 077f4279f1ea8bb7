"""Each share is firewalled to its own instance's address, read from the instance's pod, and follows it when the
instance comes back elsewhere — through the services (signup, start), with the kubernetes client against the small
API server on 127.0.0.1 (``FakeKubeApi``) whose scheduler places each deployment's pod on a node."""
from __future__ import annotations

import pytest
import yaml

from cells.audit import AuditEvent
from cells.choices import InstanceState, OperationState, PoolKind
from cells.models import Instance, Pool
from provisioning import drivers
from provisioning.drivers.base import TransientDriverError
from provisioning.lifecycle import instance_start, instance_stop
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region
from tests.provisioning import test_backups as shared
from tests.provisioning.drivers.test_kubernetes import FakeKubeApi
from tests.provisioning.test_backups import finished, signup

pytestmark = pytest.mark.django_db
backup_key = shared.backup_key
run = shared.run


@pytest.fixture
def kube(tmp_path):
    server = FakeKubeApi().start()  # its scheduler places each deployment's pod on ``node``
    yield server
    server.stop()


def _kubeconfig(tmp_path, host) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": host}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
    }))
    return str(path)


@pytest.fixture
def kube_cell(kube, tmp_path, settings):
    settings.CELLHUB = {**settings.CELLHUB, "DNS_PROVIDER": "local"}  # the records are not what this is about
    cell = make_cell(capacity=3, region=make_region(cloud="aws", location="us-east-1"))
    Pool.objects.filter(pk=cell["compute"].pk).update(status="retired")
    cell["compute"] = make_pool(cell["reef"], PoolKind.COMPUTE, capacity=3, provider="kubernetes",
                                config={"kubeconfig": _kubeconfig(tmp_path, kube.host), "context": "test"})
    return cell


def _firewall(instance):
    share = Instance.objects.get(pk=instance.pk).share
    return share.firewall_address, drivers.for_pool(share.pool).exports().get(share.name)


def test_a_share_admits_its_own_instances_node_and_follows_it_to_another(run, kube, kube_cell):
    instance = signup(run, kube_cell)

    assert _firewall(instance) == ("10.0.1.17", "10.0.1.17")
    assert list(finished(instance.operations.get()).done_step_names) == [
        "place", "database", "share", "compute", "firewall", "dns"]
    pods = [r for r in kube.requests if r["method"] == "GET" and r["path"].endswith("/pods")]
    assert pods and pods[0]["query"]["labelSelector"] == [f"cellhub.io/instance={instance.name}"]

    run(instance_stop, instance=instance)
    kube.node = "10.0.2.9"  # the scheduler puts the restarted pod on another node
    operation = finished(run(instance_start, instance=Instance.objects.get(pk=instance.pk)))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert Instance.objects.get(pk=instance.pk).state == InstanceState.RUNNING
    assert _firewall(instance) == ("10.0.2.9", "10.0.2.9")
    event = AuditEvent.objects.filter(action="share.firewall").order_by("-pk").first()
    assert event.details == {"instance": instance.pk, "previous": "10.0.1.17", "address": "10.0.2.9"}


def test_the_address_source_is_the_pools_choice_and_unknown_until_a_pod_is_scheduled(kube, kube_cell):
    instance = make_instance(reef=kube_cell["reef"], compute_pool=kube_cell["compute"])
    compute = drivers.for_pool(kube_cell["compute"])
    with pytest.raises(TransientDriverError, match="no scheduled pod yet"):
        compute.share_client_address(instance=instance)
    namespace = compute.namespace(instance)
    kube.objects[("deployments", namespace, instance.name)] = {
        "metadata": {"namespace": namespace, "name": instance.name},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"cellhub.io/instance": instance.name}}}}}
    kube.schedule("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", 201,
                  {"metadata": {"namespace": namespace, "name": instance.name}})
    assert compute.share_client_address(instance=instance) == "10.0.1.17"
    azure = make_pool(make_reef(make_region(cloud="azure", location="westus2")), PoolKind.COMPUTE,
                      provider="kubernetes", config={**kube_cell["compute"].config, "egress_address": "20.1.2.3"})
    assert drivers.for_pool(azure).share_client_address(instance=instance) == "20.1.2.3"  # AKS: the NAT
    for source, expected in (("pod", "192.168.7.3"), ("egress", "203.0.113.5")):
        pool = kube_cell["compute"]
        pool.config = {**pool.config, "firewall_address": source, "egress_address": "203.0.113.5"}
        assert drivers.for_pool(pool).share_client_address(instance=instance) == expected
