"""Every operation kind has a plan; a standalone scrub wipes a failed share and returns it to its pool."""
import pytest

from cells.choices import InstanceState, OperationKind, OperationState, ShareStatus
from cells.errors import IllegalTransition
from cells.models import Operation, Share
from provisioning import drivers
from provisioning.backups import share_scrub
from provisioning.plans.registry import plan_for
from tests.factories import make_cell, make_instance


def test_every_operation_kind_has_a_plan():
    for kind in OperationKind:
        assert plan_for(kind).steps, kind


def _failed_share_with_files(cell):
    share = cell["storage"].shares.order_by("slot").first()
    storage = drivers.for_pool(share.pool)
    storage.create_share(share=share)
    (storage.share_path(share) / "left-behind.txt").write_text("a customer's file")
    Share.objects.filter(pk=share.pk).update(status=ShareStatus.FAILED)
    share.refresh_from_db()
    return share, storage


@pytest.mark.django_db
def test_a_failed_share_is_scrubbed_verified_and_returned(sync_tasks, django_capture_on_commit_callbacks):
    cell = make_cell()
    share, storage = _failed_share_with_files(cell)
    assert storage.share_listing(share=share)
    with django_capture_on_commit_callbacks(execute=True):
        operation = share_scrub(share=share)
    operation.refresh_from_db()
    assert (operation.kind, operation.state, operation.share_id) == (OperationKind.SCRUB, OperationState.SUCCEEDED,
                                                                     share.pk), operation.error
    share.refresh_from_db()
    assert share.status == ShareStatus.AVAILABLE and share.instance_id is None and share.firewall_address == ""
    assert storage.share_listing(share=share) == {}


@pytest.mark.django_db
def test_a_scrub_is_refused_before_any_work_unless_the_share_is_failed():
    cell = make_cell()
    share = cell["storage"].shares.order_by("slot").first()
    with pytest.raises(IllegalTransition, match="is available") as refusal:
        share_scrub(share=share)
    assert refusal.value.current_state == ShareStatus.AVAILABLE
    instance = make_instance(reef=cell["reef"], state=InstanceState.RUNNING)
    Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)
    with pytest.raises(IllegalTransition, match="is assigned"):
        share_scrub(share=share)  # a customer's live share is never wiped
    assert not Operation.objects.filter(kind=OperationKind.SCRUB).exists()


@pytest.mark.django_db
def test_a_second_request_returns_the_scrub_under_way():
    cell = make_cell()
    share, _ = _failed_share_with_files(cell)
    first = share_scrub(share=share)  # not run: no on_commit here
    assert share_scrub(share=share) == first
    assert Operation.objects.filter(kind=OperationKind.SCRUB).count() == 1
