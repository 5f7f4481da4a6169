"""One real `ownllm serve` (tiny model, in-process fine-tuning worker) and one headless
Chromium per test module."""

from __future__ import annotations

import pytest

from tests.server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("dashboard")
    # the in-process fine-tuning worker on; CPU like the rest of the suite
    env = {"OWNLLM_SERVER_RUN_WORKER": "true", "OWNLLM_MODEL_DEVICE": "cpu"}
    server = Server("--model", str(tiny_model_dir), "--name", "tiny", data_dir=data_dir, env=env)
    server.wait_ready()
    server.data_dir = data_dir
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from tests.web.browser import launch

    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    from tests.web.browser import VIEWPORT

    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
