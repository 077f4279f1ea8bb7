"""Gradual rollouts on the local drivers with a clock the tests control: ring order, maintenance windows,
halting on a failing canary, pause/resume, rollback of a failed upgrade, and concurrent ticks."""
import threading
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from django.db import connection

from cells.choices import (
    InstanceState,
    OperationKind,
    OperationState,
    ReleaseState,
    RolloutState,
    TargetState,
    WaveState,
)
from cells.errors import IllegalTransition
from cells.models import Instance, Operation, Release, RolloutTarget
from provisioning import drivers, faults
from provisioning.lifecycle import instance_signup
from provisioning.rollouts import (
    instance_upgrade,
    next_window,
    rollout_cancel,
    rollout_create,
    rollout_pause,
    rollout_resume,
    rollout_start,
    rollouts_tick,
)
from tests.factories import make_cell, make_instance, make_reef, make_region, make_user

pytestmark = pytest.mark.django_db
BACKUP_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA="
SUNDAY_0230 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # region default window: Sunday 02:00–04:00
MONDAY_1015 = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
OLD, NEW = "2026.4.1", "2026.5.0"


@pytest.fixture(autouse=True)
def backup_key(settings):
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": BACKUP_KEY}


@pytest.fixture
def run(django_capture_on_commit_callbacks, sync_tasks):
    """Call ``fn`` and run the work it queued (django-q2 tasks inline, as a worker would)."""

    def call(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    return call


@pytest.fixture
def fleet(run):
    """Three reefs in two rings (reef a is the canary ring 0), two running instances each, all on OLD."""
    Release.objects.create(version=OLD, image="ghcr.io/cellhub/server", state=ReleaseState.DEFAULT)
    new = Release.objects.create(version=NEW, image="ghcr.io/cellhub/server", state=ReleaseState.AVAILABLE)
    region = make_region()
    owner = make_user()
    names = {}
    for ring, reef_name in [(0, "a"), (1, "b"), (1, "c")]:
        reef = make_reef(region, slug=f"reef-{reef_name}", rollout_ring=ring)
        make_cell(reef, capacity=4)
        for n in (1, 2):
            # Each reef fills before the next: only this reef has room while its instances sign up.
            name = f"i{reef_name}{n}"
            run(instance_signup, name=name, region=region, owner=owner)
            names[name] = reef
        reef.max_instances = 2
        reef.save(update_fields=["max_instances"])
    assert {i.name: i.reef.slug for i in Instance.objects.all()} == {n: r.slug for n, r in names.items()}
    assert set(Instance.objects.values_list("state", flat=True)) == {InstanceState.RUNNING}
    # ic1 keeps Monday 10:00 as its own window.
    Instance.objects.filter(name="ic1").update(maintenance_weekday=0, maintenance_hour=10)
    return {"release": new, "region": region}


def _image(name):
    instance = Instance.objects.select_related("compute_pool").get(name=name)
    documents = yaml.safe_load_all(drivers.for_pool(instance.compute_pool).manifest_path(instance).read_text())
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def _versions():
    return dict(Instance.objects.values_list("name", "server_version"))


def _upgrade_order():
    return list(
        Operation.objects.filter(kind=OperationKind.UPGRADE).order_by("pk").values_list("instance__name", flat=True)
    )


def test_rollout_reaches_every_instance_ring_by_ring_inside_windows(fleet, run):
    rollout = rollout_create(release=fleet["release"], batch_size=10, bake_minutes=30)
    waves = list(rollout.waves.order_by("position"))
    assert [(w.ring, w.total) for w in waves] == [(0, 2), (1, 4)]
    rollout_start(rollout=rollout)

    run(rollouts_tick, now=SUNDAY_0230)  # canary wave: both upgraded (inline worker)
    assert {n for n, v in _versions().items() if v == NEW} == {"ia1", "ia2"}
    assert _image("ia1") == f"ghcr.io/cellhub/server:{NEW}" and _image("ib1") == f"ghcr.io/cellhub/server:{OLD}"

    run(rollouts_tick, now=SUNDAY_0230)  # outcomes recorded; the canary wave bakes
    waves[0].refresh_from_db()
    assert waves[0].state == WaveState.BAKING and waves[0].succeeded == 2
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=20))  # still baking: ring 1 untouched
    assert {n for n, v in _versions().items() if v == NEW} == {"ia1", "ia2"}

    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=31))  # bake over: ring 1, but ic1's window is shut
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=31))
    assert {n for n, v in _versions().items() if v == NEW} == {"ia1", "ia2", "ib1", "ib2", "ic2"}
    assert RolloutTarget.objects.get(rollout=rollout, instance__name="ic1").state == TargetState.PENDING

    run(rollouts_tick, now=SUNDAY_0230 + timedelta(hours=3))  # Sunday 05:30: nobody's window is open
    assert _versions()["ic1"] == OLD
    run(rollouts_tick, now=MONDAY_1015)  # ic1's own window
    assert _versions()["ic1"] == NEW

    for minutes in (0, 31):
        run(rollouts_tick, now=MONDAY_1015 + timedelta(minutes=minutes))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.COMPLETED and rollout.finished_at
    order = _upgrade_order()
    assert set(order[:2]) == {"ia1", "ia2"} and order[-1] == "ic1" and len(order) == 6  # ring order, each once
    assert all(s == InstanceState.RUNNING for s in Instance.objects.values_list("state", flat=True))


def test_a_failing_canary_halts_before_ring_one(fleet, run):
    rollout = rollout_create(release=fleet["release"], batch_size=10, bake_minutes=0)
    rollout_start(rollout=rollout)
    faults.arm("upgrade.wait for health.before", "permanent")  # the first canary upgrade fails

    run(rollouts_tick, now=SUNDAY_0230)
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=1))
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=2))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.HALTED
    failed = RolloutTarget.objects.get(rollout=rollout, state=TargetState.FAILED).instance.name
    assert failed in rollout.halt_reason and "1 of 2 upgrades failed" in rollout.halt_reason
    ring_one = RolloutTarget.objects.filter(rollout=rollout, wave__ring=1)
    assert set(ring_one.values_list("state", flat=True)) == {TargetState.PENDING}
    assert not Operation.objects.filter(kind=OperationKind.UPGRADE, instance__reef__rollout_ring=1).exists()
    # The failed canary was rolled back to where it was.
    instance = Instance.objects.get(name=failed)
    assert (instance.state, instance.server_version, _image(failed)) == (
        InstanceState.RUNNING, OLD, f"ghcr.io/cellhub/server:{OLD}"
    )
    # A halted rollout does nothing more until staff resume it.
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=5))
    assert not Operation.objects.filter(kind=OperationKind.UPGRADE, instance__reef__rollout_ring=1).exists()


def test_pause_and_resume(fleet, run):
    rollout = rollout_create(release=fleet["release"], bake_minutes=0)
    rollout_start(rollout=rollout)
    rollout_pause(rollout=rollout)
    assert run(rollouts_tick, now=SUNDAY_0230) == []
    assert _upgrade_order() == []
    with pytest.raises(IllegalTransition, match="is paused"):
        rollout_pause(rollout=rollout)
    rollout_resume(rollout=rollout)
    assert run(rollouts_tick, now=SUNDAY_0230) == [rollout.pk]
    assert set(_upgrade_order()) == {"ia1", "ia2"}


def test_cancel_skips_what_has_not_started(fleet, run):
    rollout = rollout_create(release=fleet["release"], bake_minutes=0)
    rollout_start(rollout=rollout)
    run(rollouts_tick, now=SUNDAY_0230)
    rollout_cancel(rollout=rollout)
    assert set(RolloutTarget.objects.filter(rollout=rollout, wave__ring=1).values_list("state", flat=True)) == {
        TargetState.SKIPPED
    }
    with pytest.raises(IllegalTransition, match="is cancelled"):
        rollout_resume(rollout=rollout)


def test_batches_limit_upgrades_under_way(fleet):
    """Without a worker the upgrades stay queued: a batch of 1 starts one, and no more until it ends."""
    rollout = rollout_create(release=fleet["release"], batch_size=1, bake_minutes=0)
    rollout_start(rollout=rollout)
    rollouts_tick(now=SUNDAY_0230)
    rollouts_tick(now=SUNDAY_0230)
    assert len(_upgrade_order()) == 1


def test_pinned_instances_are_left_alone_and_signups_get_the_default(fleet, run):
    Instance.objects.filter(name="ia1").update(version_pinned=True)
    rollout = rollout_create(release=fleet["release"], bake_minutes=0)
    assert not RolloutTarget.objects.filter(rollout=rollout, instance__name="ia1").exists()
    from provisioning.rollouts import release_make_default

    release_make_default(release=fleet["release"])
    assert Release.objects.get(version=OLD).state == ReleaseState.AVAILABLE
    Instance.objects.filter(name="ia2").update(state=InstanceState.DECOMMISSIONED)  # frees a slot in reef a
    operation = run(instance_signup, name="fresh", region=fleet["region"], owner=make_user())
    assert operation.instance.server_version == NEW
    assert _image("fresh") == f"ghcr.io/cellhub/server:{NEW}"


def test_a_failed_upgrade_rolls_back_version_image_and_database(fleet, run):
    instance = Instance.objects.get(name="ib1")
    faults.arm("upgrade.record version.before", "permanent")  # after the new image ran
    operation = run(instance_upgrade, instance=instance, release=fleet["release"])
    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == OperationState.FAILED and "rolled back" in operation.error
    assert (instance.state, instance.server_version, _image("ib1")) == (
        InstanceState.RUNNING, OLD, f"ghcr.io/cellhub/server:{OLD}"
    )
    restore = Operation.objects.get(instance=instance, kind=OperationKind.RESTORE)
    assert restore.state == OperationState.SUCCEEDED
    assert f"operation #{restore.pk}" in operation.error
    from provisioning.backups.selectors import current_database
    from provisioning.models import Backup, BackupReason, Restore

    pre_upgrade = Backup.objects.get(pk=operation.params["backup_id"])
    assert pre_upgrade.reason == BackupReason.PRE_UPGRADE
    assert Restore.objects.get(operation=restore).backup == pre_upgrade  # back to the copy taken before
    assert current_database(instance) == Restore.objects.get(operation=restore).new_database


def test_a_failure_before_the_new_image_ran_does_not_touch_the_database(fleet, run):
    instance = Instance.objects.get(name="ib2")
    faults.arm("upgrade.patch image.before", "permanent")
    operation = run(instance_upgrade, instance=instance, release=fleet["release"])
    operation.refresh_from_db()
    assert operation.state == OperationState.FAILED
    assert not Operation.objects.filter(instance=instance, kind=OperationKind.RESTORE).exists()
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, OLD)


def test_upgrade_refused_for_a_decommissioned_instance(fleet):
    instance = Instance.objects.get(name="ia1")
    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.DECOMMISSIONED)
    with pytest.raises(IllegalTransition, match="is decommissioned"):
        instance_upgrade(instance=instance, release=fleet["release"])


def test_next_window_is_the_open_one_or_the_coming_one(fleet):
    instance = Instance.objects.get(name="ia1")  # region default: Sunday 02:00
    assert next_window(instance, SUNDAY_0230)[0] == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    assert next_window(instance, SUNDAY_0230 + timedelta(hours=2))[0] == datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    ic1 = Instance.objects.get(name="ic1")
    assert next_window(ic1, SUNDAY_0230) == (MONDAY_1015.replace(minute=0), MONDAY_1015.replace(hour=12, minute=0))


@pytest.mark.django_db(transaction=True)
def test_two_ticks_at_once_never_upgrade_one_instance_twice():
    region = make_region()
    Release.objects.create(version=NEW, image="img", state=ReleaseState.AVAILABLE)
    cell = make_cell(make_reef(region, rollout_ring=0), capacity=30)
    owner = make_user()
    for n in range(20):
        make_instance(owner=owner, region=region, name=f"t{n:02d}", reef=cell["reef"], database_pool=cell["database"],
                      compute_pool=cell["compute"], state=InstanceState.RUNNING, server_version=OLD)
    rollout = rollout_create(release=Release.objects.get(version=NEW), batch_size=20, bake_minutes=0)
    rollout_start(rollout=rollout)
    barrier, results = threading.Barrier(2), []

    def tick():
        try:
            barrier.wait()
            results.append(rollouts_tick(now=SUNDAY_0230))
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_instance = list(
        Operation.objects.filter(kind=OperationKind.UPGRADE).values_list("instance__name", flat=True)
    )
    assert len(per_instance) == 20 and len(set(per_instance)) == 20
    assert sorted(len(r) for r in results) in ([0, 1], [1, 1])
    assert RolloutTarget.objects.filter(rollout=rollout, state=TargetState.UPGRADING).count() == 20


def test_a_wave_halts_on_the_absolute_failure_count_while_the_ratio_stays_under_its_limit():
    """max_failures=1 with a 50% ratio limit, a wave of ten: one failed upgrade goes on, the second halts the rollout
    (20% failed, well under the ratio), with the reason: "more failed upgrades than max_failures halt" (the model's
    rule), so the count alone decides here."""
    region = make_region()
    Release.objects.create(version=NEW, image="img", state=ReleaseState.AVAILABLE)
    cell = make_cell(make_reef(region, rollout_ring=0), capacity=12)
    owner = make_user()
    for n in range(10):
        make_instance(owner=owner, region=region, name=f"t{n:02d}", reef=cell["reef"], database_pool=cell["database"],
                      compute_pool=cell["compute"], state=InstanceState.RUNNING, server_version=OLD)
    rollout = rollout_create(release=Release.objects.get(version=NEW), batch_size=10, bake_minutes=60,
                             max_failures=1, max_failure_ratio=0.5)
    rollout_start(rollout=rollout)
    rollouts_tick(now=SUNDAY_0230)  # every target's upgrade starts (the worker is not run: outcomes are set below)
    upgrades = {o.instance.name: o for o in Operation.objects.filter(kind=OperationKind.UPGRADE)}
    assert sorted(upgrades) == [f"t{n:02d}" for n in range(10)]

    def outcome(names, state):
        Operation.objects.filter(pk__in=[upgrades[n].pk for n in names]).update(state=state)

    outcome([f"t{n:02d}" for n in range(1, 9)], OperationState.SUCCEEDED)
    outcome(["t00"], OperationState.FAILED)
    rollouts_tick(now=SUNDAY_0230 + timedelta(minutes=1))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING and rollout.halt_reason == ""  # one failure: not more than 1

    outcome(["t09"], OperationState.FAILED)
    rollouts_tick(now=SUNDAY_0230 + timedelta(minutes=2))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.HALTED
    assert rollout.halt_reason == "wave 1 (ring 0): 2 of 10 upgrades failed (limit 1 or 50%): t00, t09"
    wave = rollout.waves.get()
    assert (wave.failed, wave.succeeded, wave.state) == (2, 8, WaveState.RUNNING)  # halted, never baked


def _ask(name, path="/api/health", **kwargs):
    """The instance's own server, at its own address (``*.localhost`` is the loopback)."""
    import requests

    from provisioning.ports import instance_port

    instance = Instance.objects.get(name=name)
    port = instance_port(instance)
    method = requests.post if "data" in kwargs else requests.get
    return method(f"http://127.0.0.1:{port}{path}", headers={"Host": f"{instance.hostname}:{port}"}, timeout=5,
                  allow_redirects=False, **kwargs)


def test_a_release_whose_server_fails_health_halts_at_the_canary_which_is_rolled_back_with_its_data(
    fleet, run, settings
):
    """No fault injected: the release's own server fails its health check (``Release.fails_health``)."""
    settings.CELLHUB = {**settings.CELLHUB, "STEP_ATTEMPTS": 2, "UPGRADE_HEALTH_WAIT_SECONDS": 1.5}
    Release.objects.filter(pk=fleet["release"].pk).update(fails_health=True)
    for name in ("ia1", "ia2"):
        assert _ask(name, "/notes", data={"body": f"{name} kept this"}).status_code == 303
    rollout = rollout_create(release=fleet["release"], batch_size=10, bake_minutes=0)
    rollout_start(rollout=rollout)

    run(rollouts_tick, now=SUNDAY_0230)
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=1))
    run(rollouts_tick, now=SUNDAY_0230 + timedelta(minutes=2))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.HALTED and "2 of 2 upgrades failed" in rollout.halt_reason
    upgrades = Operation.objects.filter(kind=OperationKind.UPGRADE)
    assert set(upgrades.values_list("instance__name", flat=True)) == {"ia1", "ia2"}  # ring 1 never touched
    assert all("marked to fail its health check" in op.error for op in upgrades)

    for name in ("ia1", "ia2"):
        instance = Instance.objects.get(name=name)
        assert (instance.state, instance.server_version, _image(name)) == (
            InstanceState.RUNNING, OLD, f"ghcr.io/cellhub/server:{OLD}"
        )
        # The new version had changed the database; the pre-upgrade backup was restored, so the old server
        # runs healthy on it, with the customer's data.
        restore = Operation.objects.get(kind=OperationKind.RESTORE, instance=instance)
        assert restore.state == OperationState.SUCCEEDED, restore.error
        health = _ask(name)
        assert health.status_code == 200 and health.json() == {"status": "ok", "version": OLD, "name": name,
                                                               "schema": 1}
        notes = _ask(name, "/api/notes").json()["notes"]
        assert [note["body"] for note in notes] == [f"{name} kept this"]
    for name in ("ib1", "ib2", "ic1", "ic2"):
        assert _ask(name).json()["version"] == OLD
