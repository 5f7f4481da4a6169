"""The dashboard on a server with keys: a wrong key is refused, a tenant key sees its own
tenant, and a key the server revokes mid-session sends the user back to sign in."""

from __future__ import annotations

import httpx
import pytest

from tests.server import Server
from tests.web.browser import sign_in

ADMIN_KEY = "sk-admin-dashboard-test-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, tiny_model_dir):
    env = {"OWNLLM_ADMIN_KEY": ADMIN_KEY, "OWNLLM_MODEL_DEVICE": "cpu"}
    server = Server(
        "--model",
        str(tiny_model_dir),
        "--name",
        "tiny",
        data_dir=tmp_path_factory.mktemp("keyed"),
        env=env,
    )
    server.wait_ready()
    yield server
    server.stop()


def _tenant_key(server: Server, tenant: str) -> dict:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(f"{server.base_url}/v1/admin/tenants", json={"id": tenant}, headers=admin)
    created = httpx.post(
        f"{server.base_url}/v1/admin/keys", json={"tenant": tenant, "name": "web"}, headers=admin
    )
    return created.json()


def test_a_wrong_key_is_refused_with_the_servers_message(keyed_server, page):
    page.goto(f"{keyed_server.base_url}/")
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    assert "Incorrect API key" in page.get_by_role("alert").text_content()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#nav").is_hidden()


def test_a_tenant_key_sees_its_tenant_and_a_revoked_key_signs_out(keyed_server, page):
    key = _tenant_key(keyed_server, "acme")
    sign_in(page, keyed_server.base_url, key=key["key"])
    assert page.locator("#who-text").text_content() == f"Tenant acme (key {key['id']})"
    page.goto(f"{keyed_server.base_url}/#/usage")
    page.locator("#stat-requests").wait_for()
    assert page.locator("select[name=by] option[value=tenant]").count() == 0  # admin only

    httpx.delete(
        f"{keyed_server.base_url}/v1/admin/keys/{key['id']}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    page.get_by_role("button", name="Refresh").click()
    page.get_by_label("API key").wait_for()
    assert "sign in again" in page.get_by_role("alert").text_content()


def test_the_admin_key_sees_every_tenant(keyed_server, page):
    sign_in(page, keyed_server.base_url, key=ADMIN_KEY)
    assert page.locator("#who-text").text_content() == "Tenant @admin (admin)"
    page.goto(f"{keyed_server.base_url}/#/usage")
    page.locator("select[name=by] option[value=tenant]").wait_for(state="attached")
