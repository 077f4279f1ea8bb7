"""The operation admin tells a cancelled operation from a failed one (list filter, change page with its clean-up)."""
import pytest

from cells.choices import InstanceState, OperationKind, OperationState
from cells.models import Operation
from tests.factories import make_cell, make_instance


@pytest.fixture
def instance(db):
    cell = make_cell(capacity=2)
    return make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"],
                         state=InstanceState.RUNNING)


def test_the_admin_filters_cancelled_apart_from_failed_and_shows_the_clean_up(instance, staff_client):
    stop = Operation.objects.create(kind=OperationKind.STOP, instance=instance)
    failed = Operation.objects.create(kind=OperationKind.BACKUP, instance=instance, state=OperationState.FAILED)
    response = staff_client.post("/admin/cells/operation/", {
        "action": "cancel", "_selected_action": [stop.pk], "apply": "1", "reason": "customer asked",
    })
    assert response.status_code == 302
    assert Operation.objects.get(pk=stop.pk).state == OperationState.CANCELLED

    listing = staff_client.get("/admin/cells/operation/", {"state__exact": "cancelled"})
    shown = [operation.pk for operation in listing.context["cl"].result_list]
    assert shown == [stop.pk] and failed.pk not in shown
    assert "?state__exact=cancelled" in listing.content.decode()  # the filter offers it
    page = staff_client.get(f"/admin/cells/operation/{stop.pk}/change/").content.decode()
    assert "its clean-up ran" in page and "Cancelled" in page
