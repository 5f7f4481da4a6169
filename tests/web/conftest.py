"""One real `ownllm serve` (tiny model) and one headless Chromium per test module; the
fine-tuning worker that server would run, in a thread here, able to hold a job mid-way;
and the dashboard over a scripted backend whose tokens leave when the test says.

Waits are on events (text shown, a job step reached); their 120 s timeouts only bound a
hang, so a loaded machine is slow, never wrong.
"""

from __future__ import annotations

import threading

import pytest

from tests.server import READY_TIMEOUT_S, Server, serve_app

HOLD_AT_STEP = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("dashboard")
    # no worker in the server: `fine_tuning_worker` trains its jobs; CPU like the rest
    env = {"OWNLLM_SERVER_RUN_WORKER": "false", "OWNLLM_MODEL_DEVICE": "cpu"}
    server = Server("--model", str(tiny_model_dir), "--name", "tiny", data_dir=data_dir, env=env)
    server.wait_ready()
    server.data_dir = data_dir
    yield server
    server.stop()


@pytest.fixture
def fine_tuning_worker(server, tiny_model_dir, monkeypatch):
    """The server's fine-tuning worker (the same `Worker`, database and data directory) in a
    thread. After reporting step HOLD_AT_STEP of a job it waits for the yielded event to
    be set, so the job is running, mid-way, for as long as the test looks at it."""
    from ownllm.config import load_config
    from ownllm.models import prepare_model, resolve_model
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database
    from ownllm.tuning import worker as worker_module

    overrides = {
        "store": {"data_dir": str(server.data_dir)},
        "model": {"model": str(tiny_model_dir), "name": "tiny"},
        "tuning": {"poll_interval_s": 0.2},
    }
    config = load_config(env={}, overrides=overrides)
    data_dir = DataDir(config.store.home).ensure()
    prepared = prepare_model(resolve_model(config.model.model, config.model.name), data_dir.root)
    base = worker_module.BaseModel(prepared.id, prepared.path, prepared.weights_sha256)
    db = Database.open(config.store.url)
    worker = worker_module.Worker(db, data_dir, base, config.tuning, worker_id="test-worker")

    resume = threading.Event()
    report_step = worker_module.Progress.on_step

    def on_step(progress, metrics: dict) -> None:
        report_step(progress, metrics)
        if metrics["step"] == HOLD_AT_STEP and not resume.wait(READY_TIMEOUT_S):
            raise TimeoutError(f"the test never let the job past step {HOLD_AT_STEP}")

    monkeypatch.setattr(worker_module.Progress, "on_step", on_step)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    yield resume
    resume.set()
    stop.set()
    worker.stop_current()
    thread.join(timeout=READY_TIMEOUT_S)
    db.close()


@pytest.fixture
def scripted_server(fake_state):
    """The dashboard and API over a ScriptedBackend on real HTTP, with its `gate`
    set: each token after the first leaves only when the test releases it."""
    from ownllm.api.app import create_app

    fake_state.backend.gate = threading.Semaphore(0)
    with serve_app(create_app(fake_state, start_engine=False), lifespan="off") as url:
        yield url, fake_state.backend


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
    from tests.web.browser import new_context

    context = new_context(browser)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
