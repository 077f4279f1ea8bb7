"""Legal and illegal state changes, through the one place that owns them."""
import pytest

from cells import states
from cells.choices import InstanceState as S
from cells.choices import OperationState, PoolStatus
from cells.models import Instance, Operation
from tests.factories import make_instance, make_pool

pytestmark = pytest.mark.django_db

LEGAL = [
    (S.PENDING, S.PROVISIONING), (S.PROVISIONING, S.RUNNING), (S.PROVISIONING, S.FAILED),
    (S.RUNNING, S.UPGRADING), (S.UPGRADING, S.RUNNING), (S.RUNNING, S.STOPPED), (S.STOPPED, S.RUNNING),
    (S.STOPPED, S.DECOMMISSIONING), (S.FAILED, S.PROVISIONING), (S.FAILED, S.DECOMMISSIONING),
    (S.DECOMMISSIONING, S.DECOMMISSIONED),
]
ALL_PAIRS = [(a, b) for a in S for b in S if a != b]
ILLEGAL = [pair for pair in ALL_PAIRS if not states.INSTANCE.can(*pair)]


@pytest.mark.parametrize("current,target", LEGAL)
def test_legal_instance_transitions(current, target):
    instance = make_instance(state=current)
    states.INSTANCE.change(instance, target)
    assert instance.state == target
    assert Instance.objects.get(pk=instance.pk).state == target


@pytest.mark.parametrize("current,target", ILLEGAL)
def test_illegal_instance_transitions_name_the_current_state(current, target):
    instance = make_instance(state=current)
    with pytest.raises(states.IllegalTransition) as error:
        states.INSTANCE.change(instance, target)
    assert f"is {current}" in str(error.value) and str(target) in str(error.value)
    assert error.value.current == current
    assert Instance.objects.get(pk=instance.pk).state == current


def test_illegal_list_is_not_empty_and_decommissioned_is_final():
    assert (S.DECOMMISSIONED, S.RUNNING) in ILLEGAL
    assert (S.RUNNING, S.PENDING) in ILLEGAL
    assert not states.INSTANCE.transitions[S.DECOMMISSIONED]


def test_a_stale_copy_loses_the_race():
    """Two workers hold the same row; the second one's change is refused with the winner's state."""
    first = make_instance(state=S.RUNNING)
    second = Instance.objects.get(pk=first.pk)
    states.INSTANCE.change(first, S.STOPPED)
    with pytest.raises(states.IllegalTransition, match="is stopped"):
        states.INSTANCE.change(second, S.STOPPED)


def test_only_from_narrows_sources():
    instance = make_instance(state=S.STOPPED)
    with pytest.raises(states.IllegalTransition):
        states.INSTANCE.change(instance, S.RUNNING, only_from={S.FAILED})


def test_extra_updates_are_written_in_the_same_change():
    instance = make_instance(state=S.PROVISIONING)
    states.INSTANCE.change(instance, S.RUNNING, hostname="x.example")
    assert Instance.objects.get(pk=instance.pk).hostname == "x.example"


def test_operation_and_pool_machines():
    operation = Operation.objects.create(kind="provision", instance=make_instance())
    states.OPERATION.change(operation, OperationState.RUNNING)
    states.OPERATION.change(operation, OperationState.SUCCEEDED)
    with pytest.raises(states.IllegalTransition, match="is succeeded"):
        states.OPERATION.change(operation, OperationState.RUNNING)
    pool = make_pool()
    states.POOL.change(pool, PoolStatus.DRAINING)
    with pytest.raises(states.IllegalTransition, match="is draining"):
        states.POOL.change(pool, PoolStatus.PROVISIONING)


def test_vanished_row_is_reported():
    instance = make_instance()
    Instance.objects.filter(pk=instance.pk).delete()
    with pytest.raises(states.IllegalTransition, match="no longer exists"):
        states.INSTANCE.change(instance, S.PROVISIONING)
