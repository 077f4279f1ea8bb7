"""Read-only staff read the admin and act on nothing: every action of every registered admin is withheld.

The actions are enumerated from the admin site itself, so an action added later without ``permissions=`` fails here.
"""
import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_q.models import Task

from cells.choices import InstanceState, OperationKind, OperationState, ReleaseState
from cells.models import AuditEvent, Operation, Release
from portal.roles import READ_ONLY_STAFF_GROUP
from provisioning.models import InstanceHealth, Orphan, OrphanDirection, OrphanKind
from provisioning.rollouts import rollout_create
from tests.factories import make_cell, make_instance, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(staff_user):
    """At least one row for every admin that has actions, in a state where each action would do something."""
    cell = make_cell(capacity=5)
    where = {"reef": cell["reef"], "database_pool": cell["database"], "compute_pool": cell["compute"]}
    running = make_instance(state=InstanceState.RUNNING, **where)
    failed = make_instance(state=InstanceState.FAILED, **where)
    Operation.objects.create(kind=OperationKind.PROVISION, instance=failed, state=OperationState.FAILED)
    Operation.objects.create(kind=OperationKind.BACKUP, instance=running, state=OperationState.RUNNING)
    Release.objects.create(version="2026.5.0", image="cells/server:2026.5.0", state=ReleaseState.DRAFT)
    available = Release.objects.create(version="2026.6.0", image="cells/server:2026.6.0",
                                       state=ReleaseState.AVAILABLE)
    rollout_create(release=available, requested_by=staff_user)
    InstanceHealth.objects.create(instance=running, flagged_at=timezone.now(), flag_reason="restarted 3 times")
    Orphan.objects.create(key="db:x", kind=OrphanKind.DATABASE, direction=OrphanDirection.UNCLAIMED,
                          resource_name="x", pool=cell["database"])
    now = timezone.now()
    for success in (True, False):
        Task.objects.create(id=f"task{success}", name=f"task-{success}", func="math.floor", args=(1.5,),
                            started=now, stopped=now, success=success)


def _snapshot():
    """Every row of every model the admin shows, as plain values."""
    return {
        model._meta.label: list(model._default_manager.order_by("pk").values())
        for model in admin.site._registry if model is not AuditEvent  # the refusals are recorded, on purpose
    }


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_read_only_staff_get_no_action_and_change_nothing(client, fleet, staff_user):
    readonly = make_user(is_staff=True)
    readonly.groups.add(Group.objects.get(name=READ_ONLY_STAFF_GROUP))
    client.force_login(readonly)
    before, audited_before = _snapshot(), AuditEvent.objects.count()
    tried = 0
    for model, model_admin in admin.site._registry.items():
        names = list(model_admin.get_actions(_request(staff_user)))
        assert model_admin.get_actions(_request(readonly)) == {}, f"{model._meta.label} offers read-only staff actions"
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, model._meta.label
        selected = [str(pk) for pk in model._default_manager.values_list("pk", flat=True)]
        for name in names:
            response = client.post(url, {
                "action": name, "_selected_action": selected, "index": 0, "apply": "1", "post": "yes",
                "confirm": "on", "reason": "read-only staff tried", "state": "running", "expected_state": "failed",
                "at": timezone.now().isoformat(),
            })
            # Refused (403), sent back (302), or the plain list again (200, no action page): never the action.
            assert response.status_code in (200, 302, 403), f"{model._meta.label}.{name}: {response.status_code}"
            if response.status_code == 200:
                assert "cl" in response.context, f"{model._meta.label}.{name} showed an action page"
            tried += 1
    # Sanity: the walk covered the hub's actions (each would have done something for staff).
    assert tried >= 30
    assert client.post(reverse("admin:provisioning_orphan_reconcile")).status_code in (302, 403)
    assert _snapshot() == before
    assert not AuditEvent.objects.filter(outcome="succeeded").exists()
    assert AuditEvent.objects.count() - audited_before <= 1  # at most the refused reconcile
