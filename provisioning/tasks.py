"""django-q2 task entry points: thin, they take ids and call services."""
from provisioning.operations import operation_run


def operation_execute(operation_id: int) -> str | None:
    """Run (or resume) one operation; safe to deliver more than once."""
    return operation_run(operation_id)
