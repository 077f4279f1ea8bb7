"""The one place that owns legal state changes.

Each stateful model has a table of legal transitions. A change is a compare-and-swap: a single
``UPDATE … WHERE pk = %s AND state IN (legal sources)``; when no row changes, the change was illegal
(or another worker won) and ``IllegalTransition`` names the state the row is in now.
"""
from django.db import models
from django.utils import timezone

from cells.choices import (
    InstanceState,
    OperationState,
    PoolStatus,
    ReefStatus,
    RegionStatus,
    ReleaseState,
    RolloutState,
    ShareStatus,
)
from cells.errors import IllegalTransition
from cells.models import Instance, Operation, Pool, Reef, Region, Release, Rollout, Share


class StateMachine:
    """Legal transitions of one model's state field, applied as conditional updates."""

    def __init__(self, model: type[models.Model], field: str, transitions: dict[str, set[str]]):
        self.model = model
        self.field = field
        self.transitions = {str(k): {str(v) for v in vs} for k, vs in transitions.items()}

    def sources_of(self, target: str) -> list[str]:
        """The states from which ``target`` may be reached."""
        return [source for source, targets in self.transitions.items() if str(target) in targets]

    def can(self, current: str, target: str) -> bool:
        return str(target) in self.transitions.get(str(current), set())

    def change(self, obj: models.Model, target: str, *, only_from: set[str] | None = None, **updates) -> None:
        """Move ``obj`` to ``target`` if its current database state allows it; update ``obj`` in memory too.

        ``only_from`` narrows the legal sources (e.g. a retry that must start from ``failed``).
        ``updates`` are written in the same UPDATE. Raises ``IllegalTransition`` naming the current
        state when no row changed; safe against concurrent writers (exactly one wins).
        """
        sources = self.sources_of(target)
        if only_from is not None:
            sources = [s for s in sources if s in {str(x) for x in only_from}]
        values = {self.field: str(target), **updates}
        if any(f.name == "updated_at" for f in self.model._meta.concrete_fields):
            values.setdefault("updated_at", timezone.now())
        changed = self.model.objects.filter(pk=obj.pk, **{f"{self.field}__in": sources}).update(**values)
        if changed != 1:
            current = self.model.objects.filter(pk=obj.pk).values_list(self.field, flat=True).first()
            raise IllegalTransition(obj, current, str(target))
        for name, value in values.items():
            setattr(obj, name, value)


S = InstanceState
INSTANCE = StateMachine(
    Instance,
    "state",
    {
        S.PENDING: {S.PROVISIONING, S.FAILED},
        S.PROVISIONING: {S.RUNNING, S.FAILED},
        S.RUNNING: {S.UPGRADING, S.STOPPED, S.DECOMMISSIONING, S.FAILED},
        S.UPGRADING: {S.RUNNING, S.STOPPED, S.FAILED},  # back to stopped: a stopped instance upgraded
        S.STOPPED: {S.RUNNING, S.UPGRADING, S.DECOMMISSIONING},
        S.FAILED: {S.PROVISIONING, S.RUNNING, S.DECOMMISSIONING},
        S.DECOMMISSIONING: {S.DECOMMISSIONED, S.FAILED},
        S.DECOMMISSIONED: set(),
    },
)

OP = OperationState
OPERATION = StateMachine(
    Operation,
    "state",
    {
        OP.QUEUED: {OP.RUNNING, OP.FAILED, OP.CANCELLED},
        # running → queued is a requeue after a crash or a transient error.
        OP.RUNNING: {OP.SUCCEEDED, OP.FAILED, OP.CANCELLED, OP.QUEUED},
        OP.FAILED: {OP.QUEUED},  # a retry
        OP.CANCELLED: {OP.QUEUED},  # a retry, as of a failed one
        OP.SUCCEEDED: set(),
    },
)

P = PoolStatus
POOL = StateMachine(
    Pool,
    "status",
    {
        P.PROVISIONING: {P.AVAILABLE, P.FAILED},
        P.AVAILABLE: {P.DRAINING, P.FAILED},
        P.DRAINING: {P.AVAILABLE, P.RETIRED, P.FAILED},
        P.FAILED: {P.PROVISIONING, P.RETIRED},
        P.RETIRED: set(),
    },
)

SH = ShareStatus
SHARE = StateMachine(
    Share,
    "status",
    {
        SH.AVAILABLE: {SH.ASSIGNED, SH.FAILED, SH.RETIRED},
        SH.ASSIGNED: {SH.AVAILABLE, SH.ARCHIVING, SH.FAILED},
        SH.ARCHIVING: {SH.SCRUBBING, SH.FAILED},
        SH.SCRUBBING: {SH.AVAILABLE, SH.FAILED},
        SH.FAILED: {SH.SCRUBBING, SH.AVAILABLE, SH.RETIRED},
        SH.RETIRED: set(),
    },
)

R = ReefStatus
REEF = StateMachine(
    Reef,
    "status",
    {
        R.PROVISIONING: {R.ACTIVE, R.BROKEN},
        R.ACTIVE: {R.DRAINING, R.BROKEN},
        R.DRAINING: {R.ACTIVE, R.RETIRED, R.BROKEN},
        R.BROKEN: {R.ACTIVE, R.DRAINING, R.RETIRED},
        R.RETIRED: set(),
    },
)

RG = RegionStatus
REGION = StateMachine(
    Region,
    "status",
    {RG.ACTIVE: {RG.DRAINING, RG.OFFLINE}, RG.DRAINING: {RG.ACTIVE, RG.OFFLINE}, RG.OFFLINE: {RG.ACTIVE}},
)

RL = ReleaseState
RELEASE = StateMachine(
    Release,
    "state",
    {
        RL.DRAFT: {RL.AVAILABLE, RL.WITHDRAWN},
        RL.AVAILABLE: {RL.DEFAULT, RL.WITHDRAWN},
        RL.DEFAULT: {RL.AVAILABLE, RL.WITHDRAWN},
        RL.WITHDRAWN: {RL.AVAILABLE},
    },
)

RO = RolloutState
ROLLOUT = StateMachine(
    Rollout,
    "state",
    {
        RO.PLANNED: {RO.RUNNING, RO.CANCELLED},
        RO.RUNNING: {RO.PAUSED, RO.HALTED, RO.COMPLETED, RO.CANCELLED},
        RO.PAUSED: {RO.RUNNING, RO.CANCELLED},
        RO.HALTED: {RO.RUNNING, RO.CANCELLED},  # resumed once staff have looked at why
        RO.COMPLETED: set(),
        RO.CANCELLED: set(),
    },
)
