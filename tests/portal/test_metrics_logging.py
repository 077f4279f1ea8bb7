"""Structured logs: one JSON object per line, and every line written while an operation runs carries its id — in
this process, and in a worker process configured by the settings (LOG_FORMAT=json)."""
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cells.choices import OperationState
from cells.models import Operation
from provisioning import faults
from provisioning.lifecycle import instance_signup
from provisioning.logs import ContextFilter, JsonFormatter
from provisioning.operations import operation_run
from tests.factories import make_cell

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def json_lines():
    """A handler configured like the settings' console handler, on the root logger, for the test's duration."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.mark.django_db(transaction=True)
def test_every_line_of_a_task_carries_its_operation_id(json_lines):
    cell = make_cell(capacity=2)
    operation = instance_signup(  # queued: no worker runs, so this test runs it
        name="logged", region=cell["reef"].region, new_owner={"email": "l@example.com", "password": "passphrase-1"}
    )
    faults.arm("provision.dns.before", "transient")  # a retry: a warning line from inside the step runner
    logging.getLogger("tests").info("before the task")
    assert operation_run(operation.pk) == OperationState.SUCCEEDED
    logging.getLogger("tests").info("after the task")

    lines = json_lines()
    messages = [line["message"] for line in lines]
    before, after = messages.index("before the task"), messages.index("after the task")
    inside = lines[before + 1:after]
    assert lines[before]["operation_id"] is None and lines[after]["operation_id"] is None
    assert len(inside) >= 10
    assert all(line["operation_id"] == operation.pk for line in inside), inside
    assert all(line["operation_kind"] == "provision" and line["instance"] == "logged" for line in inside)
    messages = [line["message"] for line in inside]
    assert any("step dns attempt 1 failed, retrying" in message for message in messages)
    warning = next(line for line in inside if "retrying" in line["message"])
    assert warning["level"] == "WARNING" and warning["step"] == "dns" and warning["logger"] == "provisioning.operations"
    assert messages[-1] == f"operation {operation.pk} succeeded"
    assert all(line["time"].endswith("+00:00") for line in lines)


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_logs_json_lines_with_the_operation_id(settings):
    cell = make_cell(capacity=2)
    operation = instance_signup(
        name="subproc", region=cell["reef"].region, new_owner={"email": "s@example.com", "password": "passphrase-1"}
    )
    database = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**database),
        "DEBUG": "1", "LOG_FORMAT": "json", "CELLHUB_VAR_DIR": str(settings.CELLHUB["VAR_DIR"]),
        "CELLHUB_RESOURCE_PREFIX": settings.CELLHUB["RESOURCE_PREFIX"], "CELLHUB_FAILPOINTS": "",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "run_operation", str(operation.pk)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"operation {operation.pk}: succeeded" in result.stdout
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is one JSON object
    steps = [line for line in lines if line["message"].startswith("step ")]
    assert [line["message"].split(" finished")[0] for line in steps if "finished" in line["message"]] == [
        "step database", "step share", "step compute", "step firewall", "step dns",
    ]
    runner = [line for line in lines if line["logger"] == "provisioning.operations"]
    assert runner and all(line["operation_id"] == operation.pk for line in runner)
    assert Operation.objects.get(pk=operation.pk).state == OperationState.SUCCEEDED
