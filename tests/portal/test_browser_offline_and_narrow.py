"""A real browser (Debian's chromium through Playwright): the API docs render with every request staying on the hub,
and the customer pages and the capacity page fit a 375 px wide screen without horizontal scrolling."""
import os
from urllib.parse import urlsplit

import pytest

from cells.choices import InstanceState
from portal.models import ApiToken
from tests.factories import make_cell, make_instance, make_user
from tests.portal.test_browser import CHROMIUM, browser_page  # noqa: F401 (the fixture)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed"),
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
PASSWORD = "correct horse battery staple"


def _record_requests(page):
    """Every request the page asks for (``request`` events, CSP-refused ones included), how each failed, and any
    leaving the machine aborted at the network layer (so a CDN could not quietly succeed)."""
    seen, failed = [], {}
    page.on("request", lambda request: seen.append(request.url))
    page.on("requestfailed", lambda request: failed.setdefault(request.url, request.failure))

    def route(route_):
        parts = urlsplit(route_.request.url)
        if parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname not in LOCAL_HOSTS:
            route_.abort()
        else:
            route_.continue_()

    page.route("**/*", route)
    return seen, failed


@pytest.mark.parametrize("path,rendered", [
    ("/api/docs/", ".swagger-ui .info .title"),
    ("/api/redoc/", "h1"),
])
def test_api_docs_render_with_no_request_leaving_the_hub(live_server, browser_page, path, rendered, tmp_path):  # noqa: F811
    page = browser_page
    seen, failed = _record_requests(page)
    page.goto(f"{live_server.url}{path}")
    page.wait_for_selector(rendered, timeout=30_000)
    assert "Cell Hub API" in page.locator(rendered).first.inner_text()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(tmp_path / "docs.png"))
    assert any("/static/drf_spectacular_sidecar/" in url for url in seen), seen
    assert any(url.endswith("/api/schema/") for url in seen)
    # Nothing went out: a request for another host (Redoc's footer asks its CDN for a logo) is refused by the
    # browser itself under the page's Content-Security-Policy, before any connection is made.
    outside = [url for url in seen if urlsplit(url).scheme in {"http", "https"}
               and urlsplit(url).hostname not in LOCAL_HOSTS]
    assert all("csp" in (failed.get(url) or "").lower() for url in outside), (outside, failed)
    if path == "/api/docs/":
        assert outside == []


def _fits(page, url) -> int:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376)
        .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert width <= 375, f"{url} is {width} px wide at 375 px: {wide}"
    return width


def test_customer_pages_and_the_capacity_page_fit_375_px(live_server, browser_page, tmp_path):  # noqa: F811
    cell = make_cell(capacity=3)
    owner = make_user(username="ada.lovelace@example.com", email="ada.lovelace@example.com", password=PASSWORD)
    instance = make_instance(
        owner=owner, reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"],
        name="a-rather-long-instance-name-for-phones", state=InstanceState.RUNNING,
        hostname="a-rather-long-instance-name-for-phones.cells.localhost",
    )
    ApiToken.issue(user=owner, name="continuous deployment from the main branch")
    make_user(username="staff", password=PASSWORD, is_staff=True, is_superuser=True)

    page = browser_page
    page.set_viewport_size({"width": 375, "height": 740})
    for path in ("/login/", "/signup/", "/password-reset/"):
        _fits(page, f"{live_server.url}{path}")

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "Ada.Lovelace@Example.com")  # any case logs in
    page.fill("input[name=password]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"{live_server.url}/instances/")
    # The progress bar has a name a screen reader can say.
    assert page.get_by_role("progressbar", name=f"Progress of {instance.name}").count() == 1
    for path in ("/instances/", f"/instances/{instance.name}/", "/account/", "/account/password/",
                 "/signup/"):
        _fits(page, f"{live_server.url}{path}")
        page.screenshot(path=str(tmp_path / f"{path.strip('/').replace('/', '_') or 'home'}.png"), full_page=True)

    page.context.clear_cookies()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("input[name=username]", "staff")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    _fits(page, f"{live_server.url}/admin/cells/reef/capacity/")
    page.screenshot(path=str(tmp_path / "capacity.png"), full_page=True)
