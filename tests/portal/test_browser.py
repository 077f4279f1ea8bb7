"""A real browser (Debian's chromium through Playwright): a new customer signs up on /signup/ and
watches the progress bar reach "running", the work done by a real qcluster worker."""
import os

import pytest
from django.db import connections

from cells.models import Instance
from tests.factories import make_cell

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed"),
]


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; our ORM calls here are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page()
        yield page
        browser.close()
        # Inside Playwright's greenlet Django sees another context, hence another connection: close it.
        connections.close_all()
    connections.close_all()


def test_customer_signs_up_and_watches_progress_reach_running(live_server, qcluster, browser_page, tmp_path):
    cell = make_cell(capacity=2)
    qcluster()
    page = browser_page
    page.goto(f"{live_server.url}/signup/")
    page.fill("input[name=email]", "grace@example.com")
    page.fill("input[name=password]", "a-long-enough-passphrase")
    page.fill("input[name=name]", "hopper")
    page.select_option("select[name=region]", str(cell["reef"].region.pk))
    page.click("form.card button[type=submit]")

    page.wait_for_url(f"{live_server.url}/instances/hopper/")
    bar = page.locator(".progress")
    # The page polls by itself: the bar fills and the state turns to Running without a reload.
    page.wait_for_function(
        "document.querySelector('[data-role=state]').textContent.trim() === 'Running'", timeout=60_000
    )
    assert bar.get_attribute("aria-valuenow") == "100"
    assert page.locator("[data-role=bar]").evaluate("el => el.style.width") == "100%"
    assert page.get_by_text("hopper.cells.localhost").first.is_visible()
    page.screenshot(path=str(tmp_path / "running.png"))
    assert Instance.objects.get(name="hopper").state == "running"

    # A bad name is refused on the form, with nothing created.
    page.goto(f"{live_server.url}/signup/")
    page.fill("input[name=name]", "admin")
    page.click("form.card button[type=submit]")
    assert "reserved" in page.locator("#error-name").inner_text()
    assert Instance.objects.count() == 1
