"""A real service with a real worker, and Debian's Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import stack  # noqa: F401 - the same service and worker as the integration tests
from tests.integration.stack import ADMIN_TOKEN

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("TRAINQ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def signed_in(browser, stack):
    """The admin's session, signed in once through the form (the API token pasted as the password): each test's
    page starts from it, so a module of tests stays under the sign-in rate limit (10 a minute per address)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(stack.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/")
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture()
def page(browser, stack, signed_in, request):
    """A signed-in page of its own; a screenshot is saved after."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, storage_state=signed_in)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.locator("#runs").wait_for()
    page.errors = errors
    yield page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
