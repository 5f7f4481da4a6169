"""The dashboard's static routes: the page and its assets are served, and nothing else moves."""

from __future__ import annotations

import re

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.web.routes import STATIC_DIR
from tests.tenants import gateway_state


@pytest.fixture
async def client(tmp_path, two_tenants):
    state = gateway_state(tmp_path, two_tenants)
    app = create_app(state, start_engine=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    app.state.gateway.ledger.close()


async def test_index_is_the_dashboard_with_a_strict_policy(client):
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/app.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_assets_are_served_with_their_types(client):
    script = await client.get("/static/js/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    style = await client.get("/static/css/app.css")
    assert style.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/../routes.py", "/static/%2e%2e/routes.py", "/static/js"]
)
async def test_missing_or_outside_files_are_openai_404s(client, path):
    response = await client.get(path)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_api_routes_are_not_shadowed(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "ownllm"
    assert (await client.get("/docs")).status_code == 200
    unknown = await client.get("/v1/nothing-here")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert (await client.get("/v1/models")).status_code == 401  # auth still applies


def test_every_module_the_page_imports_is_shipped():
    """Follow the ES-module imports from app.js: a missing file would blank the page."""
    pending, seen = ["js/app.js"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = STATIC_DIR / name
        assert path.is_file(), f"{name} is imported but not shipped"
        for target in re.findall(r'^import .* from "(\.[^"]+)";$', path.read_text(), re.M):
            pending.append(str((path.parent / target).resolve().relative_to(STATIC_DIR)))
    assert {"js/pages/playground.js", "js/pages/tuning.js", "js/chart.js"} <= seen
