"""The app factory's lifespan: while the server runs, the objects built at startup are out
of the garbage collector's reach (a full collection walks only what requests created);
after shutdown they are collectable again."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from ownllm.api.app import create_app


def test_startup_heap_is_frozen_while_serving_and_released_at_shutdown(fake_state):
    app = create_app(fake_state, start_engine=False)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000  # FastAPI, SQLAlchemy, the app's own objects
    assert gc.get_freeze_count() == 0
