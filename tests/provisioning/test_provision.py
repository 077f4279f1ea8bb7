"""A signup becomes a running instance through the task path, on real local drivers and PostgreSQL;
faults at every step are retried (transient) or cleaned up without leaks (permanent)."""
import psycopg
import pytest
import yaml
from django.core import mail

from cells.choices import InstanceState, OperationState, Provider, ShareStatus
from cells.models import Instance, Operation, Share
from provisioning import drivers, faults
from provisioning.operations import operation_retry, operation_run
from tests.factories import make_cell

pytestmark = pytest.mark.django_db
STEPS = ["place", "database", "share", "compute", "firewall", "dns"]
# Signup places the instance in its own transaction (a refusal there creates nothing, see test_signup);
# the task's place step runs on a retry, after a failure released the placement.
TASK_STEPS = STEPS[1:]


@pytest.fixture
def cell():
    return make_cell(capacity=3, database_provider=Provider.POSTGRES)


@pytest.fixture
def signup(client, cell, django_capture_on_commit_callbacks):
    """Sign up through the form and run what commits would run (enqueue → the task, inline)."""

    def post(name="acme"):
        with django_capture_on_commit_callbacks(execute=True):
            return _signup(client, cell, name)

    return post


def _signup(client, cell, name="acme"):
    response = client.post(
        "/signup/",
        {"email": f"{name}@example.com", "password": "a-long-enough-passphrase", "name": name,
         "region": cell["reef"].region.pk},
    )
    assert response.status_code == 302, response.content
    return Instance.objects.get(name=name)


def _resources(instance, cell):
    """What exists for ``instance`` at the drivers, looked up independently of the hub's rows."""
    database = drivers.for_pool(cell["database"])
    compute = drivers.for_pool(cell["compute"])
    storage = drivers.for_pool(cell["storage"])
    dns = drivers.for_dns(cell["reef"].region)
    return {
        "database": database.database_exists(instance=instance),
        "role": database.role_exists(instance=instance),
        "deployment": compute.status(instance=instance).exists,
        "dns": dns.lookup(name=instance.name),
        "firewalled_shares": storage.exports(),
    }


def test_signup_through_the_form_ends_running_with_every_resource(signup, client, cell, sync_tasks):
    instance = signup()
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    assert instance.hostname == "acme.cells.localhost"

    operation = instance.operations.get()
    assert operation.state == OperationState.SUCCEEDED and operation.done_step_names == STEPS
    assert all(step["started_at"] <= step["finished_at"] for step in operation.steps)
    assert operation.attempts == 1 and operation.task_id

    found = _resources(instance, cell)
    assert found["database"] and found["role"] and found["deployment"]
    assert found["dns"] == "127.0.0.1"
    share = Share.objects.get(instance=instance)
    assert found["firewalled_shares"] == {share.name: "127.0.0.1"} and share.firewall_address == "127.0.0.1"
    assert drivers.for_pool(cell["storage"]).share_path(share).is_dir()
    assert share.endpoint.startswith("file://")

    credentials = drivers.for_pool(cell["database"]).credentials(instance)
    manifests = list(yaml.safe_load_all(drivers.for_pool(cell["compute"]).manifest_path(instance).read_text()))
    assert manifests[1]["stringData"]["DATABASE_URL"] == credentials.url
    with psycopg.connect(credentials.url.replace("postgresql://", "postgres://"), connect_timeout=5) as own:
        assert own.execute("SELECT current_database()").fetchone() == (credentials.database,)

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["acme@example.com"] and "acme.cells.localhost" in mail.outbox[0].body
    page = client.get("/instances/acme/").content.decode()
    assert "Running" in page and "acme.cells.localhost" in page


@pytest.mark.parametrize("step", TASK_STEPS)
def test_a_transient_fault_at_any_step_is_retried_to_running(signup, cell, sync_tasks, step):
    faults.arm(f"provision.{step}.before", "transient", times=2)
    instance = signup()
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    assert instance.operations.get().done_step_names == STEPS
    assert not faults._armed  # both faults fired


def test_transient_faults_beyond_the_attempts_fail_the_provision(signup, cell, sync_tasks, settings):
    faults.arm("provision.compute.before", "transient", times=0)  # every time
    instance = signup()
    operation = instance.operations.get()
    assert operation.state == OperationState.FAILED
    assert f"gave up after {settings.CELLHUB['STEP_ATTEMPTS']} attempts" in operation.error


def _assert_nothing_leaked(instance, cell):
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert (instance.reef_id, instance.database_pool_id, instance.compute_pool_id) == (None, None, None)
    assert not Share.objects.filter(instance=instance).exists()
    assert Share.objects.filter(pool=cell["storage"], status=ShareStatus.AVAILABLE).count() == 3
    found = _resources(instance, cell)
    assert found == {"database": False, "role": False, "deployment": False, "dns": None, "firewalled_shares": {}}
    for share in cell["storage"].shares.all():
        path = drivers.for_pool(cell["storage"]).share_path(share)
        assert not path.exists() or not any(path.iterdir())


@pytest.mark.parametrize("step", TASK_STEPS)
@pytest.mark.parametrize("position", ["before", "after"])
def test_a_permanent_fault_fails_the_provision_and_leaks_nothing(
    signup, cell, sync_tasks, step, position, django_capture_on_commit_callbacks
):
    faults.arm(f"provision.{step}.{position}", "permanent")
    instance = signup()
    operation = instance.operations.get()
    assert operation.state == OperationState.FAILED
    assert f"injected permanent fault at provision.{step}.{position}" in operation.error
    assert "everything taken was released" in operation.error
    assert operation.steps == []
    _assert_nothing_leaked(instance, cell)

    # Staff retry it: a fresh run from the first step reaches running.
    with django_capture_on_commit_callbacks(execute=True):
        operation_retry(operation=operation)
    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED and instance.state == InstanceState.RUNNING
    assert operation.done_step_names == STEPS and operation.attempts == 2
    assert _resources(instance, cell)["database"]


@pytest.mark.parametrize("kind", ["transient", "permanent"])
def test_faults_in_the_place_step_of_a_retry(signup, cell, sync_tasks, kind, django_capture_on_commit_callbacks):
    faults.arm("provision.compute.before", "permanent")
    instance = signup()
    operation = instance.operations.get()
    _assert_nothing_leaked(instance, cell)
    faults.arm("provision.place.after", kind)
    with django_capture_on_commit_callbacks(execute=True):
        operation_retry(operation=operation)
    operation.refresh_from_db()
    if kind == "transient":
        assert operation.state == OperationState.SUCCEEDED and operation.done_step_names == STEPS
    else:
        assert operation.state == OperationState.FAILED and "provision.place.after" in operation.error
        _assert_nothing_leaked(instance, cell)


def test_retry_is_refused_unless_failed(signup, cell, sync_tasks):
    instance = signup()
    operation = instance.operations.get()
    from cells.states import IllegalTransition

    with pytest.raises(IllegalTransition, match="is succeeded"):
        operation_retry(operation=operation)


def test_a_repeated_delivery_does_nothing(signup, cell, sync_tasks):
    instance = signup()
    operation = instance.operations.get()
    assert operation_run(operation.pk) is None  # finished: not claimable
    assert Operation.objects.get(pk=operation.pk).attempts == 1


def test_admin_retry_action_requeues_a_failed_provision(
    signup, cell, sync_tasks, staff_client, django_capture_on_commit_callbacks
):
    faults.arm("provision.compute.before", "permanent")
    instance = signup()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/admin/cells/instance/", {"action": "retry_provision", "_selected_action": [instance.pk]}, follow=True
        )
    assert "Provision queued again for acme" in response.content.decode()
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
