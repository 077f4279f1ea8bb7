"""The whole customer journey in a real browser (Debian's chromium through Playwright) on PostgreSQL, with a real
qcluster worker and the local runtime: the instance is a real process the browser opens at its own address.

sign up → running → open the instance → add a note and upload a file through it → back up → add a second note →
back up → restore to a time between the two notes → the instance serves the first note, not the second → upgrade to
a newer release → the instance itself reports the new version → decommission → its address stops answering and its
share is scrubbed."""
import math
import os
import socket
from datetime import UTC, datetime, timedelta

import pytest

from cells.choices import InstanceState, ReleaseState
from cells.models import Instance, Release
from provisioning import drivers
from provisioning.models import Backup, BackupKind, BackupState
from provisioning.ports import instance_port
from provisioning.rollouts import instance_upgrade
from tests.conftest import wait_for
from tests.factories import make_cell
from tests.portal.test_browser import CHROMIUM, browser_page  # noqa: F401  (the fixture)

BACKUP_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA="
OLD, NEW = "2026.4.1", "2026.5.0"
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed"),
]


def _state_is(page, label, timeout=90_000):
    try:
        page.wait_for_function(
            f"document.querySelector('[data-role=state]').textContent.trim() === '{label}'", timeout=timeout
        )
    except Exception:
        from cells.models import Operation

        pytest.fail(f"not {label}: {list(Operation.objects.values_list('kind', 'state', 'error'))}")


def _succeeded_backups(instance):
    return Backup.objects.filter(instance=instance, state=BackupState.SUCCEEDED, kind=BackupKind.DATABASE)


def _back_up(page, hub, instance, count):
    page.goto(f"{hub}/instances/{instance.name}/")
    page.click("#backups button[type=submit]")
    page.wait_for_url(f"{hub}/instances/{instance.name}/")
    done = Backup.objects.filter(instance=instance, state=BackupState.SUCCEEDED)
    wait_for(lambda: done.count() == 2 * count, timeout=90, message=f"backup {count}")
    # One operation backed up both the database and the files.
    assert done.values("operation").distinct().count() == count
    return _succeeded_backups(instance).order_by("-taken_at").first()


def test_the_whole_journey_in_a_browser(live_server, qcluster, browser_page, settings, tmp_path):  # noqa: F811
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": BACKUP_KEY}
    Release.objects.create(version=OLD, image="ghcr.io/cellhub/server", state=ReleaseState.DEFAULT)
    newer = Release.objects.create(version=NEW, image="ghcr.io/cellhub/server", state=ReleaseState.AVAILABLE)
    cell = make_cell(capacity=2)
    qcluster(CELLHUB_BACKUP_KEY=BACKUP_KEY, CELLHUB_UPGRADE_HEALTH_WAIT_SECONDS="20", Q_TIMEOUT="120", Q_RETRY="130",
             CELLHUB_OPERATION_LEASE_SECONDS="30")
    page, hub = browser_page, live_server.url

    # Sign up and watch it reach Running.
    page.goto(f"{hub}/signup/")
    page.fill("input[name=email]", "grace@example.com")
    page.fill("input[name=password]", "a-long-enough-passphrase")
    page.fill("input[name=name]", "hopper")
    page.select_option("select[name=region]", str(cell["reef"].region.pk))
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"{hub}/instances/hopper/")
    _state_is(page, "Running")
    instance = Instance.objects.get(name="hopper")
    port = instance_port(instance)
    address = f"http://hopper.cells.localhost:{port}/"
    link = page.locator("[data-role=address] a")
    link.wait_for()
    assert link.get_attribute("href") == address

    # The instance itself, at its own address: a note and a file, through its own page.
    page.goto(address)
    assert page.locator("[data-role=name]").inner_text() == "hopper"
    assert page.locator("[data-role=version]").inner_text() == OLD
    page.fill("input[name=body]", "the first note")
    page.click("form[action='/notes'] button")
    upload = tmp_path / "plans.txt"
    upload.write_text("the plans")
    page.set_input_files("input[type=file]", str(upload))
    page.click("form[action='/files'] button")
    assert page.locator("[data-role=note]").all_inner_texts()[0].startswith("the first note")
    assert page.locator("[data-role=file] a").inner_text() == "plans.txt"

    # Back up, add a second note, back up again: the restorable window spans both notes.
    first = _back_up(page, hub, instance, 1)
    between = datetime.fromtimestamp(math.ceil(first.taken_at.timestamp()), UTC)
    wait_for(lambda: datetime.now(UTC) > between + timedelta(seconds=1), timeout=5)
    page.goto(address)
    page.fill("input[name=body]", "the second note")
    page.click("form[action='/notes'] button")
    assert len(page.locator("[data-role=note]").all_inner_texts()) == 2
    _back_up(page, hub, instance, 2)

    # Restore to the moment between the two notes.
    page.goto(f"{hub}/instances/hopper/")
    page.fill("input[name=point_in_time]", between.strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("#restore form.card button[type=submit]")
    page.wait_for_url(f"{hub}/instances/hopper/")
    wait_for(lambda: instance.restores.filter(state="succeeded").exists(), timeout=90, message="the restore")
    page.goto(address)
    notes = page.locator("[data-role=note]").all_inner_texts()
    assert len(notes) == 1 and notes[0].startswith("the first note")
    assert page.locator("[data-role=file] a").inner_text() == "plans.txt"

    # Upgrade to the newer release; the customer's page shows it live, the instance itself reports it.
    instance_upgrade(instance=Instance.objects.get(name="hopper"), release=newer)
    page.goto(f"{hub}/instances/hopper/")
    wait_for(lambda: Instance.objects.get(name="hopper").server_version == NEW
             and Instance.objects.get(name="hopper").state == InstanceState.RUNNING, timeout=120, message="upgrade")
    page.goto(address)
    assert page.locator("[data-role=version]").inner_text() == NEW
    assert page.locator("[data-role=note]").all_inner_texts()[0].startswith("the first note")

    # Decommission: the address stops answering and the share is scrubbed.
    share = Instance.objects.get(name="hopper").share
    share_folder = drivers.for_pool(share.pool).share_path(share)
    assert (share_folder / "plans.txt").exists()
    page.goto(f"{hub}/instances/hopper/")
    page.fill("input[name=confirm_name]", "hopper")
    page.click("#decommission button[type=submit]")
    page.wait_for_url(f"{hub}/instances/hopper/")
    _state_is(page, "Decommissioned", timeout=120_000)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    probe = page.context.browser.new_page()  # a page of its own: the refused navigation never races the hub's page
    with pytest.raises(Exception, match="ERR_CONNECTION_REFUSED"):
        probe.goto(address)
    probe.close()
    assert instance_port(instance) is None  # its port is free again
    page.goto(f"{hub}/instances/hopper/")
    assert page.locator("[data-role=address]").inner_text() == "removed"
    assert list(share_folder.iterdir()) == []
