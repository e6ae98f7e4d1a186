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


@pytest.fixture()
def page(browser, stack, request):
    """A signed-in page (the admin, with the API token pasted as the password); a screenshot is saved after."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/")
    page.errors = errors
    yield page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
