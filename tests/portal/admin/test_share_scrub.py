"""Staff reach the standalone scrub of a failed share from the admin."""
import pytest
from django.urls import reverse

from cells.choices import ShareStatus
from tests.factories import make_cell
from tests.provisioning.test_scrub import _failed_share_with_files


@pytest.mark.django_db
def test_staff_scrub_a_failed_share_from_the_admin(staff_client, sync_tasks, django_capture_on_commit_callbacks):
    cell = make_cell()
    share, storage = _failed_share_with_files(cell)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("admin:cells_share_changelist"),
                                     {"action": "scrub", "_selected_action": [share.pk]}, follow=True)
    assert "scrub queued" in response.content.decode()
    share.refresh_from_db()
    assert share.status == ShareStatus.AVAILABLE and storage.share_listing(share=share) == {}
