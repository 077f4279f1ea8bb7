"""The worker path is cheap: a provision on the local drivers runs in at most 25 statements, on every connection the
worker uses, and opens no database connection per step (the steps share one, however many there are)."""
import threading
from datetime import datetime

import pytest
from django.db import connection
from django.db.backends.signals import connection_created

from cells.choices import OperationState
from provisioning.lifecycle import instance_signup
from provisioning.operations import operation_run
from provisioning.plans.registry import plan_for
from tests.factories import make_cell

pytestmark = pytest.mark.django_db(transaction=True)


class Statements:
    """Every statement run on any connection of this process while it is installed, and every connection opened."""

    def __init__(self):
        self.sql, self.connections, self.lock = [], 0, threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        with self.lock:
            self.sql.append(f"[{threading.current_thread().name}] {sql}")
        return execute(sql, params, many, context)

    def created(self, sender, connection, **kwargs):
        with self.lock:
            self.connections += 1
        connection.execute_wrappers.append(self)

    def __enter__(self):
        connection_created.connect(self.created)
        connection.execute_wrappers.append(self)
        return self

    def __exit__(self, *exc):
        connection_created.disconnect(self.created)
        connection.execute_wrappers.remove(self)


def _provision(settings):
    settings.CELLHUB = {**settings.CELLHUB, "STEP_TIMEOUTS": {"default": 30}}  # steps run under a time limit
    cell = make_cell(capacity=2)
    operation = instance_signup(
        name="counted", region=cell["reef"].region,
        new_owner={"email": "counted@example.com", "password": "a-long-enough-passphrase"},
    )
    connection.ensure_connection()
    with Statements() as seen:
        assert operation_run(operation.pk) == OperationState.SUCCEEDED
    operation = operation.__class__.objects.get(pk=operation.pk)
    done = operation.done_step_names
    assert done == plan_for("provision").step_names and len(done) >= 5  # every step ran, in this run
    for step in operation.steps:  # each recorded with its times, the last one by the end's own update
        started, finished = (datetime.fromisoformat(step[key]) for key in ("started_at", "finished_at"))
        assert started <= finished <= operation.finished_at, step
    return seen


def test_a_provision_opens_no_connection_per_step(settings):
    seen = _provision(settings)
    # The steps run under their time limit in a thread of their own: one connection for the whole run, not one each.
    assert seen.connections <= 1, seen.connections


def test_a_provision_takes_at_most_25_statements(settings):
    # Where they go (24 today): the claim, its watch row, the operation read and the claim's audit; the instance to
    # provisioning; each step's one read of the instance with all it uses (port and current database included); the
    # share's endpoint; the port allocation (the ports held, then the new one); the release's image and its health
    # flag; the firewall's change and audit; one record per step boundary (the last one is the end's own update);
    # the instance to running; the end's audit. No port lookup after the compute step: the welcome mail and the
    # dns step read it from rows already loaded.
    seen = _provision(settings)
    assert len(seen.sql) <= 25, "\n".join([f"{len(seen.sql)} statements:", *seen.sql])
