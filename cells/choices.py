"""Status sets of the cell model, and the sets of them that the rules refer to."""
from django.db import models


class Cloud(models.TextChoices):
    LOCAL = "local", "Local"
    AZURE = "azure", "Azure"
    AWS = "aws", "AWS"


class RegionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining"
    OFFLINE = "offline", "Offline"


class ReefStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining"
    BROKEN = "broken", "Broken"
    RETIRED = "retired", "Retired"


class PoolKind(models.TextChoices):
    DATABASE = "database", "Database"
    STORAGE = "storage", "Storage"
    COMPUTE = "compute", "Compute"


class Provider(models.TextChoices):
    SQLITE = "sqlite", "SQLite files"
    POSTGRES = "postgres", "PostgreSQL server"
    AZURE_SQL = "azure_sql", "Azure SQL elastic pool"
    AWS_RDS = "aws_rds", "AWS RDS"
    LOCAL_FS = "local_fs", "Local folders"
    AZURE_FILES = "azure_files", "Azure Files"
    AWS_STORAGE_GATEWAY = "aws_storage_gateway", "AWS Storage Gateway"
    LOCAL_COMPUTE = "local_compute", "Local processes"
    KUBERNETES = "kubernetes", "Kubernetes"


PROVIDERS_BY_KIND = {
    PoolKind.DATABASE: (Provider.SQLITE, Provider.POSTGRES, Provider.AZURE_SQL, Provider.AWS_RDS),
    PoolKind.STORAGE: (Provider.LOCAL_FS, Provider.AZURE_FILES, Provider.AWS_STORAGE_GATEWAY),
    PoolKind.COMPUTE: (Provider.LOCAL_COMPUTE, Provider.KUBERNETES),
}


class PoolStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"
    AVAILABLE = "available", "Available"
    DRAINING = "draining", "Draining"
    FAILED = "failed", "Failed"
    RETIRED = "retired", "Retired"


class ShareStatus(models.TextChoices):
    AVAILABLE = "available", "Available"
    ASSIGNED = "assigned", "Assigned"
    ARCHIVING = "archiving", "Archiving"
    SCRUBBING = "scrubbing", "Scrubbing"
    FAILED = "failed", "Failed"
    RETIRED = "retired", "Retired"


class InstanceState(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    UPGRADING = "upgrading", "Upgrading"
    STOPPED = "stopped", "Stopped"
    DECOMMISSIONING = "decommissioning", "Decommissioning"
    DECOMMISSIONED = "decommissioned", "Decommissioned"
    FAILED = "failed", "Failed"


class Tier(models.TextChoices):
    SHARED = "shared", "Shared"
    DEDICATED = "dedicated", "Dedicated"


class OperationKind(models.TextChoices):
    PROVISION = "provision", "Provision"
    TOP_UP = "top_up", "Top up"
    BACKUP = "backup", "Backup"
    RESTORE = "restore", "Restore"
    UPGRADE = "upgrade", "Upgrade"
    STOP = "stop", "Stop"
    START = "start", "Start"
    DECOMMISSION = "decommission", "Decommission"
    SCRUB = "scrub", "Scrub"
    REPLACE = "replace", "Replace"
    RETIRE = "retire", "Retire"


class OperationState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class CleanupState(models.TextChoices):
    """What an operation ended from outside (cancelled by staff, failed by the watchdog) still owes: its plan's
    release of what it took runs once, after the end, by the worker at its next step boundary or by the watchdog."""

    NONE = "none", "Nothing owed"
    OWED = "owed", "Owed (not started)"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed (retry the operation to run it again)"


class ReleaseState(models.TextChoices):
    DRAFT = "draft", "Draft"
    AVAILABLE = "available", "Available"
    DEFAULT = "default", "Default for new signups"
    WITHDRAWN = "withdrawn", "Withdrawn"


class RolloutState(models.TextChoices):
    PLANNED = "planned", "Planned"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    HALTED = "halted", "Halted"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


class WaveState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    BAKING = "baking", "Baking"
    DONE = "done", "Done"


class TargetState(models.TextChoices):
    PENDING = "pending", "Pending"
    UPGRADING = "upgrading", "Upgrading"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


ACTIVE_ROLLOUT_STATES = frozenset(
    {RolloutState.PLANNED, RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED}
)


WEEKDAYS = [(0, "Monday"), (1, "Tuesday"), (2, "Wednesday"), (3, "Thursday"), (4, "Friday"), (5, "Saturday"),
            (6, "Sunday")]

# Sets the rules refer to.
SIGNUP_REGION_STATES = frozenset({RegionStatus.ACTIVE})
PLACEABLE_REEF_STATES = frozenset({ReefStatus.ACTIVE})
PLACEABLE_POOL_STATES = frozenset({PoolStatus.AVAILABLE})
# An instance in these states holds the slots it references (database, compute, share) and counts
# against its reef. A failed instance whose resources were released references none.
SLOT_HOLDING_INSTANCE_STATES = frozenset(
    {
        InstanceState.FAILED,
        InstanceState.PENDING,
        InstanceState.PROVISIONING,
        InstanceState.RUNNING,
        InstanceState.UPGRADING,
        InstanceState.STOPPED,
        InstanceState.DECOMMISSIONING,
    }
)
OPERATION_ACTIVE_STATES = frozenset({OperationState.QUEUED, OperationState.RUNNING})
OPERATION_FINAL_STATES = frozenset({OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED})
# An operation that ended without succeeding: a person may queue it again (it resumes at its first unfinished step).
OPERATION_RETRYABLE_STATES = frozenset({OperationState.FAILED, OperationState.CANCELLED})
# A clean-up in these states has not finished: the operation may not be queued again yet.
CLEANUP_UNFINISHED_STATES = frozenset({CleanupState.OWED, CleanupState.RUNNING})

# Names an instance may never take: they are the hub's own hostnames.
RESERVED_INSTANCE_NAMES = (
    "www", "api", "admin", "app", "hub", "portal", "static", "media", "mail", "smtp", "ftp", "ns1", "ns2",
    "status", "support", "help", "docs", "billing", "login", "signup", "auth", "root", "test", "staging",
    "localhost", "metrics", "healthz", "readyz", "cdn", "assets", "internal",
)
# An RFC 1123 label of 3–40 characters; the database check uses this one pattern for both rules.
INSTANCE_NAME_REGEX = r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$"
INSTANCE_NAME_MIN_LENGTH = 3
INSTANCE_NAME_MAX_LENGTH = 40


class ActorKind(models.TextChoices):
    STAFF = "staff", "Staff (admin)"
    CUSTOMER = "customer", "Customer (site)"
    API_TOKEN = "api_token", "API"
    SCHEDULER = "scheduler", "Scheduler and workers"


class AuditOutcome(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    REFUSED = "refused", "Refused"
    FAILED = "failed", "Failed"
