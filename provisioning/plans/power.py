"""Stop and start: scale an instance's deployment to zero and back; its database and share stay."""
from cells.choices import InstanceState, OperationKind
from cells.errors import IllegalTransition
from cells.models import Instance, Operation
from cells.states import INSTANCE
from provisioning import drivers
from provisioning.firewall import share_firewall_follow
from provisioning.plans.registry import MINUTES, Plan, register_plan


def _scale(replicas: int):
    def step(operation: Operation) -> None:
        instance = Instance.objects.select_related("compute_pool").get(pk=operation.instance_id)
        drivers.for_pool(instance.compute_pool).scale(instance=instance, replicas=replicas)

    return step


def _follow_firewall(operation: Operation) -> None:
    """A started instance may come up at another address: its share's firewall follows it."""
    share_firewall_follow(instance=Instance.objects.get(pk=operation.instance_id))


def _check(state: str):
    def begin(operation: Operation) -> None:
        """Refuse (naming the current state) unless the instance may still become ``state``."""
        instance = Instance.objects.get(pk=operation.instance_id)
        if instance.state != state and not INSTANCE.can(instance.state, state):
            raise IllegalTransition(instance, instance.state, state)

    return begin


def _become(state: str):
    def succeed(operation: Operation) -> None:
        instance = Instance.objects.get(pk=operation.instance_id)
        if instance.state != state:
            INSTANCE.change(instance, state)

    return succeed


def _nothing_to_release(operation: Operation, message: str) -> str:
    return "the instance keeps its state; retry when the cause is fixed"


# A stop and a start at once would leave the state to whoever ends last; a restore or an upgrade redeploys the
# compute they scale. A backup (it reads the database and the share, not the compute) may run meanwhile.
POWER_EXCLUDES = frozenset({
    OperationKind.STOP, OperationKind.START, OperationKind.RESTORE, OperationKind.UPGRADE, OperationKind.DECOMMISSION,
    OperationKind.PROVISION,
})
register_plan(
    OperationKind.STOP,
    Plan(steps=[("scale to zero", _scale(0))], begin=_check(InstanceState.STOPPED),
         succeed=_become(InstanceState.STOPPED), fail=_nothing_to_release, excludes=POWER_EXCLUDES,
         time_limit=15 * MINUTES),
)
register_plan(
    OperationKind.START,
    Plan(steps=[("scale up", _scale(1)), ("firewall", _follow_firewall)], begin=_check(InstanceState.RUNNING),
         succeed=_become(InstanceState.RUNNING), fail=_nothing_to_release, excludes=POWER_EXCLUDES,
         time_limit=15 * MINUTES),
)
