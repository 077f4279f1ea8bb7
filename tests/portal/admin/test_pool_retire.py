"""The admin's "Retire the selected pools…" action: a confirmation page saying, per pool, what will be deleted in its
cloud (provider, resource, the config naming its host) and what still uses it; confirmed, each pool's retirement is
queued (a refusal is a warning naming the instances, and audited). Read-only staff never see it
(tests/portal/admin/test_read_only_staff.py walks every action)."""
import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.urls import reverse

from cells.choices import OperationKind, OperationState, PoolKind, PoolStatus, Provider
from cells.models import AuditEvent, Operation, Pool
from provisioning.capacity import pool_drain
from tests.factories import make_cell, make_instance, make_pool

pytestmark = pytest.mark.django_db


def _retire(client, pools, **extra):
    url = reverse("admin:cells_pool_changelist")
    return client.post(url, {"action": "retire", ACTION_CHECKBOX_NAME: [p.pk for p in pools], **extra}, follow=True)


def _messages(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_staff_confirm_what_will_be_deleted_then_the_pools_are_retired(
        staff_client, staff_user, sync_tasks, django_capture_on_commit_callbacks):
    cell = make_cell(capacity=2)
    make_instance(name="holder", reef=cell["reef"], database_pool=cell["database"], state="running")
    eks = make_pool(cell["reef"], PoolKind.COMPUTE, provider=Provider.KUBERNETES, status=PoolStatus.FAILED,
                    external_id="arn:aws:eks:us-east-1:123456789012:cluster/cellhub-p9",
                    config={"cluster": "eks", "eks_cluster": "cellhub-p9", "eks_nodegroup": "cellhub-p9-nodes",
                            "instance_types": ["t3.large"]})
    for pool in (cell["database"], cell["storage"]):
        pool_drain(pool=pool)

    page = _retire(staff_client, [eks, cell["database"], cell["storage"]]).content.decode()

    assert "Retire pools" in page and 'value="retire"' in page
    assert "provider: Kubernetes" in page and "arn:aws:eks:us-east-1:123456789012:cluster/cellhub-p9" in page
    assert "eks_cluster: <code>cellhub-p9</code>" in page and "eks_nodegroup: <code>cellhub-p9-nodes</code>" in page
    assert "cluster: <code>eks</code>" in page and "instance_types" not in page  # only what names the host
    assert "2 share(s)" in page and "provider: Local folders" in page
    assert "1 instance(s) use it: holder" in page
    assert not Operation.objects.filter(kind=OperationKind.RETIRE).exists()  # nothing before confirming

    with django_capture_on_commit_callbacks(execute=True):
        response = _retire(staff_client, [cell["database"], cell["storage"]], confirm="yes")

    messages = " | ".join(_messages(response))
    operation = Operation.objects.get(kind=OperationKind.RETIRE)
    assert operation.pool_id == cell["storage"].pk and operation.requested_by == staff_user
    assert f"retire operation #{operation.pk} queued" in messages
    assert operation.state == Operation.objects.get(pk=operation.pk).state == OperationState.SUCCEEDED
    assert Pool.objects.get(pk=cell["storage"].pk).status == PoolStatus.RETIRED
    assert "cannot be retired: 1 instance(s) use it: holder" in messages
    assert Pool.objects.get(pk=cell["database"].pk).status == PoolStatus.DRAINING
    refused = AuditEvent.objects.get(action="pool.retire", target_id=str(cell["database"].pk))
    assert refused.outcome == "refused" and "holder" in refused.reason and refused.details["via"] == "admin"
    done = AuditEvent.objects.get(action="pool.retire", target_id=str(cell["storage"].pk))
    assert done.outcome == "succeeded" and done.details["operation"] == operation.pk


def test_the_action_needs_the_change_permission():
    from django.contrib import admin

    model_admin = admin.site._registry[Pool]
    assert list(model_admin.get_action("retire")[0].allowed_permissions) == ["change"]
