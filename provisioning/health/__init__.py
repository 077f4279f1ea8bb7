"""Health checks: each running instance is asked whether it is up; one that is not is restarted, then flagged.

A check asks the instance's compute driver for its deployment (it exists, has at least one ready replica, and runs
the image of the instance's version), then asks the instance itself: an instance of a local compute pool always
(``GET http://127.0.0.1:<its port>/api/health`` with its own name in the ``Host`` header), others when
``HEALTH_HTTP`` is on (``HEALTH_URL``, or the compute pool's ``config["health_url"]``; ``{hostname}`` is the
instance's). Healthy means a 2xx answer whose ``version``, when it gives one, is the version the hub expects.
The scheduled pass asks each compute pool once for all its deployments and runs the HTTP checks
``HEALTH_HTTP_CONCURRENCY`` at a time (``sweep``).

An unhealthy instance is restarted through its driver — scaled to zero (every pod stopped), then deployed again
from its spec (one replica, its version's image, its current database) — at most ``HEALTH_RESTART_ATTEMPTS``
times, the n-th no sooner than ``HEALTH_RESTART_BACKOFF_SECONDS × 2^(n-1)`` after the one before; a check between
two restarts records that it waits. When the restarts are spent and it is still unhealthy once the last one has
had the same time to help, the instance is flagged:
staff get an e-mail, the admin lists it, and no further restart is made until staff clear the flag (which gives it
its restarts back). A healthy check clears everything (the history keeps what happened).

A check that cannot ask (the cluster does not answer) is recorded as ``unknown`` and changes nothing; the pass asks
that pool nothing more in that pass. Instances with an operation queued or running are skipped (the operation is
changing the deployment), and so are those another check holds (``InstanceHealth.checking_since``). The history
keeps changes of health, not every check (``history``), for ``HEALTH_HISTORY_DAYS``. Restarts and flags are
audited (actor: the scheduler).

Modules: ``check`` (one check: decide, act, record), ``sweep`` (the batched pass), ``history`` (what is kept and
shown), ``alarms`` (a pool's cloud alarms). The names below are the package's public face.
"""
from provisioning.health.alarms import pool_alarm_states
from provisioning.health.check import (
    CHECK_CLAIM_SECONDS,
    decide,
    instance_health_check,
    instance_health_flag_clear,
    instance_restart,
    restart_backoff,
)
from provisioning.health.history import CUSTOMER_TEXT, instance_health_overview
from provisioning.health.sweep import health_check_pass, instances_to_check
from provisioning.probe import Probe, health_request, health_url, instance_probe

__all__ = [
    "CHECK_CLAIM_SECONDS", "CUSTOMER_TEXT", "Probe", "decide", "health_check_pass", "health_request", "health_url",
    "instance_health_check", "instance_health_flag_clear", "instance_health_overview", "instance_probe",
    "instance_restart", "instances_to_check", "pool_alarm_states", "restart_backoff",
]
