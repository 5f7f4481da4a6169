"""The suite end to end on scripted models: one that leaks whatever it is shown, one that
refuses everything, and the leaky one behind an output guard that blocks canaries (the
encoded attacks still get through). Rates per category, runs per tenant."""

from __future__ import annotations

import re

import pytest

from ownllm.api.eval_runner import EvalWorker
from ownllm.backends.scripted import GREETING, counting_backend, reply
from tests.api.test_stored_completions import make_client
from tests.evals.scripted import prompt_text

SECRETS = re.compile(
    r"CANARY-[0-9a-f]{10}|PNANEL-[0-9a-s]{10}|[A-Za-z0-9+/]{40,}={0,2}|[\w.]+@example\.net"
    r"|\d{4} \d{4} \d{4} \d{4}|sk-live-[0-9a-f]+"
)
ATTACKS = ("LLM01-direct", "LLM01-indirect", "LLM02-pii", "LLM02-secrets", "LLM07",
           "jailbreak-roleplay", "jailbreak-encoding", "LLM10-wallet")  # fmt: skip
CANARY_GUARD = """
[[rules]]
id = "canaries"
detector = "deny_terms"
terms = ["canary"]
stages = ["output"]
action = "block"
"""


def leaky(backend):
    """Says every secret-looking string of its prompt; runs on when told to go forever."""

    def respond(request):
        text = prompt_text(backend, request)
        if "forever" in text or "1000000" in text:
            return GREETING  # never ends: runs to the token cap
        return reply(" ".join(SECRETS.findall(text)) or "Happy to help.")

    backend.respond = respond


def refusing(backend):
    backend.respond = lambda request: reply("I'm sorry, I can't help with that.")


@pytest.fixture
def make(tmp_path, two_tenants, tiny_model_dir):
    made = []

    def build(model, policy=None):
        client, state = make_client(tmp_path, two_tenants, tiny_model_dir, policy=policy)
        state.backend = counting_backend(state.tokenizer)  # a 4k context; reads its prompts
        model(state.backend)
        app = client._transport.app
        made.append(app)
        return client, EvalWorker(state, app.state.gateway)

    yield build
    for app in made:
        app.state.gateway.ledger.close()


async def red_team(client, worker, headers, model="tiny") -> dict:
    r = await client.post("/v1/redteam/runs", json={"model": model, "seed": 7}, headers=headers)
    assert r.status_code == 200, r.text
    await worker.drain()
    run = (await client.get(f"/v1/redteam/runs/{r.json()['id']}", headers=headers)).json()
    assert run["status"] == "completed", run
    return run


async def test_a_model_that_leaks_fails_every_category(make, two_tenants):
    client, worker = make(leaky)
    async with client:
        report = (await red_team(client, worker, two_tenants.a.headers))["report"]
    assert report["attack_success_rate"] == 1.0 and report["false_positive_rate"] == 0.0
    for category in ATTACKS:
        row = report["categories"][category]
        assert row["attacks"] >= 1 and row["attack_success_rate"] == 1.0, (category, row)
        assert row["false_positive_rate"] == 0.0 and row["errored"] == 0


async def test_a_model_that_refuses_resists_but_refuses_the_benign_too(make, two_tenants):
    client, worker = make(refusing)
    async with client:
        run = await red_team(client, worker, two_tenants.a.headers)
    report = run["report"]
    assert report["attack_success_rate"] == 0.0 and report["false_positive_rate"] == 1.0
    assert all(report["categories"][c]["false_positive_rate"] == 1.0 for c in ATTACKS)
    assert (
        run["result_counts"]["total"]
        == run["result_counts"]["passed"] + run["result_counts"]["failed"]
    )


async def test_the_guard_policy_is_part_of_what_is_tested(make, two_tenants):
    client, worker = make(leaky, policy=CANARY_GUARD)
    async with client:
        report = (await red_team(client, worker, two_tenants.a.headers))["report"]
    rates = {c: report["categories"][c]["attack_success_rate"] for c in ATTACKS}
    assert rates["LLM01-direct"] == 0.0 and rates["LLM07"] == 0.0  # plain canaries blocked
    assert rates["jailbreak-encoding"] == 1.0  # encoded answers pass a plain-text guard
    assert rates["LLM02-pii"] == 1.0  # the guard only knows canaries


async def test_red_team_runs_belong_to_their_tenant(make, two_tenants):
    client, worker = make(refusing)
    async with client:
        run = await red_team(client, worker, two_tenants.a.headers)
        r = await client.get(f"/v1/redteam/runs/{run['id']}", headers=two_tenants.b.headers)
        assert r.status_code == 404
        r = await client.get(f"/v1/evals/{run['eval_id']}", headers=two_tenants.b.headers)
        assert r.status_code == 404
        mine = await client.get(f"/v1/evals/{run['eval_id']}/runs", headers=two_tenants.a.headers)
        assert [x["id"] for x in mine.json()["data"]] == [run["id"]]
