"""The reconciler on real local drivers and PostgreSQL: it finds a planted orphan of each kind and an instance whose
resource is missing, deletes nothing by itself, and cleans an orphan only after staff confirm."""
import psycopg
import pytest
import yaml

from cells.choices import PoolKind, Provider
from cells.errors import Refused
from cells.models import AuditEvent, Reef
from provisioning import drivers
from provisioning.models import Orphan, OrphanDirection, OrphanKind, OrphanState
from provisioning.reconcile import orphan_clean, reconcile_pass
from tests.conftest import ADMIN_DSN, RUN_PREFIX
from tests.factories import POSTGRES_POOL_CONFIG, make_cell, make_instance, make_pool
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
run = shared.run
CHANGELIST = "/admin/provisioning/orphan/"
STRAY_DATABASE = f"{RUN_PREFIX}_i987654321"
STRAY_DEPLOYMENT = f"{RUN_PREFIX}-i987654321"


@pytest.fixture
def fleet(run):
    cell = make_cell(capacity=3, database_provider=Provider.POSTGRES)
    alive, lacking = signup(run, cell, name="alive"), signup(run, cell, name="lacking")
    return {"cell": cell, "alive": alive, "lacking": lacking, "region": cell["reef"].region}


def _database_exists(name):
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


@pytest.fixture
def planted(fleet):
    """One orphan of each kind, and two resources of ``lacking`` gone."""
    cell = fleet["cell"]
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{STRAY_DATABASE}"')
        admin.execute(f'CREATE DATABASE "{STRAY_DATABASE}"')
    storage, compute = drivers.for_pool(cell["storage"]), drivers.for_pool(cell["compute"])
    stray_share = storage._root() / "stray-share"
    stray_share.mkdir()
    (stray_share / "left-behind.txt").write_text("data nobody owns")
    manifests = compute.read_manifests(fleet["alive"])
    stray_deployment = compute.manifest_path(fleet["alive"]).parent.with_name(STRAY_DEPLOYMENT)
    stray_deployment.mkdir()
    (stray_deployment / "manifests.yaml").write_text(yaml.safe_dump_all(manifests))
    (stray_deployment / "spec.json").write_text(compute.spec_path(fleet["alive"]).read_text())
    dns = drivers.for_dns(fleet["region"])
    dns.upsert_record(name="ghost", address="127.0.0.1")
    dns.delete_record(name="lacking")
    compute.delete(instance=fleet["lacking"])
    yield {"share": stray_share, "deployment": stray_deployment, "dns": dns, "compute": compute, "storage": storage}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{STRAY_DATABASE}"')


def _finding(kind, direction, name):
    return Orphan.objects.get(kind=kind, direction=direction, resource_name=name)


def test_a_pass_finds_an_orphan_of_each_kind_and_each_missing_resource_and_deletes_nothing(fleet, planted):
    summary = reconcile_pass()
    assert summary["errors"] == []
    cell, alive, lacking = fleet["cell"], fleet["alive"], fleet["lacking"]
    unclaimed = OrphanDirection.UNCLAIMED
    database = _finding(OrphanKind.DATABASE, unclaimed, STRAY_DATABASE)
    assert database.pool == cell["database"] and database.state == OrphanState.OPEN and database.instance is None
    assert _finding(OrphanKind.SHARE, unclaimed, "stray-share").pool == cell["storage"]
    assert _finding(OrphanKind.DEPLOYMENT, unclaimed, STRAY_DEPLOYMENT).pool == cell["compute"]
    assert _finding(OrphanKind.DNS_RECORD, unclaimed, "ghost").region == fleet["region"]
    missing = Orphan.objects.filter(direction=OrphanDirection.MISSING).order_by("kind")
    assert [(o.kind, o.instance, o.resource_name) for o in missing] == [
        (OrphanKind.DEPLOYMENT, lacking, "lacking (deployment)"),
        (OrphanKind.DNS_RECORD, lacking, "lacking (DNS record)"),
    ]
    assert "lacking is running but its DNS record lacking is missing" == missing[1].detail

    # What the live instances use is nobody's orphan; every unclaimed share is a folder no Share row names.
    database_driver = drivers.for_pool(cell["database"])
    names = set(Orphan.objects.values_list("resource_name", flat=True))
    assert database_driver.database_name(alive) not in names and database_driver.database_name(lacking) not in names
    assert set(Orphan.objects.filter(kind=OrphanKind.SHARE).values_list("resource_name", flat=True)) == {"stray-share"}
    assert set(Orphan.objects.filter(kind=OrphanKind.DNS_RECORD, direction=unclaimed).values_list(
        "resource_name", flat=True)) == {"ghost"}
    # Nothing was deleted by the pass.
    assert _database_exists(STRAY_DATABASE) and planted["share"].is_dir() and planted["deployment"].is_dir()
    assert planted["dns"].lookup(name="ghost") == "127.0.0.1"

    # A second pass finds the same things: it touches them, it does not add rows.
    count = Orphan.objects.count()
    reconcile_pass()
    assert Orphan.objects.count() == count


def test_staff_clean_orphans_only_after_confirming(fleet, planted, staff_client, staff_user):
    reconcile_pass()
    unclaimed = OrphanDirection.UNCLAIMED
    chosen = [
        _finding(OrphanKind.DATABASE, unclaimed, STRAY_DATABASE),
        _finding(OrphanKind.SHARE, unclaimed, "stray-share"),
        _finding(OrphanKind.DEPLOYMENT, unclaimed, STRAY_DEPLOYMENT),
        _finding(OrphanKind.DNS_RECORD, unclaimed, "ghost"),
    ]
    selected = {"action": "clean_up", "_selected_action": [o.pk for o in chosen]}
    page = staff_client.post(CHANGELIST, selected)
    assert page.status_code == 200 and b"for good" in page.content and STRAY_DATABASE.encode() in page.content
    unconfirmed = staff_client.post(CHANGELIST, {**selected, "apply": "1"})
    assert unconfirmed.status_code == 200  # the box was not ticked: asked again
    assert _database_exists(STRAY_DATABASE) and planted["share"].is_dir() and planted["deployment"].is_dir()
    assert planted["dns"].lookup(name="ghost") and not AuditEvent.objects.filter(action="orphan.clean").exists()

    response = staff_client.post(CHANGELIST, {**selected, "apply": "1", "confirm": "on"})
    assert response.status_code == 302
    assert not _database_exists(STRAY_DATABASE)
    assert not planted["share"].exists() and not planted["deployment"].exists()
    assert planted["dns"].lookup(name="ghost") is None
    for orphan in chosen:
        orphan.refresh_from_db()
        assert (orphan.state, orphan.confirmed_by) == (OrphanState.CLEANED, staff_user), orphan
        assert orphan.confirmed_at and orphan.closed_at and orphan.note
    rows = {row.target_id: row for row in AuditEvent.objects.filter(action="orphan.clean")}
    assert sorted(rows) == sorted(str(orphan.pk) for orphan in chosen)
    assert {(row.actor, row.outcome) for row in rows.values()} == {(staff_user, "succeeded")}
    pool = fleet["cell"]["database"].name
    assert rows[str(chosen[0].pk)].reason == f"database {STRAY_DATABASE} dropped from pool {pool} with its login"
    # The live instances kept everything.
    alive = fleet["alive"]
    assert drivers.for_pool(fleet["cell"]["database"]).database_exists(instance=alive)
    assert planted["compute"].status(instance=alive).exists and planted["dns"].lookup(name="alive")


def test_a_missing_resource_is_flagged_never_cleaned_and_resolves_when_it_is_back(fleet, planted, staff_client):
    reconcile_pass()
    missing_dns = _finding(OrphanKind.DNS_RECORD, OrphanDirection.MISSING, "lacking (DNS record)")
    response = staff_client.post(CHANGELIST, {
        "action": "clean_up", "_selected_action": [missing_dns.pk], "apply": "1", "confirm": "on",
    })
    assert response.status_code == 302
    missing_dns.refresh_from_db()
    assert missing_dns.state == OrphanState.OPEN
    refused = AuditEvent.objects.get(action="orphan.clean")
    assert refused.outcome == "refused" and "never cleaned up here" in refused.reason

    planted["dns"].upsert_record(name="lacking", address="127.0.0.1")  # staff put it back
    summary = reconcile_pass()
    missing_dns.refresh_from_db()
    assert missing_dns.state == OrphanState.RESOLVED and summary["resolved"] >= 1
    still = _finding(OrphanKind.DEPLOYMENT, OrphanDirection.MISSING, "lacking (deployment)")
    assert still.state == OrphanState.OPEN

    response = staff_client.post(CHANGELIST, {
        "action": "dismiss", "_selected_action": [still.pk], "apply": "1", "reason": "being rebuilt by hand",
    })
    still.refresh_from_db()
    assert still.state == OrphanState.DISMISSED and still.note.endswith("being rebuilt by hand")
    assert AuditEvent.objects.get(action="orphan.dismiss").reason == "being rebuilt by hand"


def test_a_resource_claimed_since_the_pass_is_left_alone(fleet, planted, staff_user):
    reconcile_pass()
    ghost = _finding(OrphanKind.DNS_RECORD, OrphanDirection.UNCLAIMED, "ghost")
    make_instance(name="ghost", region=fleet["region"])  # a signup took the name meanwhile
    note = orphan_clean(orphan=ghost, confirmed_by=staff_user)
    assert note == "ghost is claimed by the hub now; nothing deleted"
    assert planted["dns"].lookup(name="ghost") == "127.0.0.1"
    ghost.refresh_from_db()
    assert ghost.state == OrphanState.RESOLVED and ghost.confirmed_by == staff_user
    with pytest.raises(Refused, match="is resolved"):
        orphan_clean(orphan=ghost, confirmed_by=staff_user)


def test_a_pool_that_cannot_be_listed_is_reported_and_judges_nothing(fleet, planted):
    broken = make_pool(fleet["cell"]["reef"], PoolKind.DATABASE, provider=Provider.POSTGRES, name="broken",
                       config={**POSTGRES_POOL_CONFIG, "port": 1, "connect_timeout": 2})
    summary = reconcile_pass()
    assert [error.split(":")[0] for error in summary["errors"]] == ["pool broken"]
    assert not Orphan.objects.filter(pool=broken).exists()
    assert _finding(OrphanKind.SHARE, OrphanDirection.UNCLAIMED, "stray-share")  # the others were judged


def test_the_reconcile_now_button_runs_a_pass_and_is_audited(fleet, planted, staff_client, staff_user):
    page = staff_client.get(CHANGELIST)
    assert b"Reconcile now" in page.content
    response = staff_client.post("/admin/provisioning/orphan/reconcile/")
    assert response.status_code == 302
    assert Orphan.objects.filter(resource_name="ghost").exists()
    row = AuditEvent.objects.get(action="reconcile.run")
    assert row.actor == staff_user and row.details["found"]["dns_record/unclaimed"] == 1


def test_a_drifted_slot_counter_is_reported_by_the_pass(fleet, caplog):
    reef = fleet["cell"]["reef"]
    assert reconcile_pass()["counter_drift"] == []
    Reef.objects.filter(pk=reef.pk).update(placed_instances=0)  # two instances hold slots in it
    summary = reconcile_pass()
    assert summary["counter_drift"] == [f"reef {reef.pk}: placed_instances is 0, the rows say 2"]
    assert "slot counter drift" in caplog.text
