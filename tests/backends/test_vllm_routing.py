"""One ownllm gateway in front of two real vLLM servers (its CPU build, LoRA enabled,
VLLM_CPU_KVCACHE_SPACE=1 each; tests/vllm_servers.py, both started at once for the module):
requests spread over the replicas, an adapter is loaded on demand on the replica its request
went to (and only there), adapter and prefix affinity show in the gateway's /metrics (and the
prefix reuse in vLLM's own), and `kill -9` of a replica under load: its streams end with an
error event (and error ledger rows naming it), the other replica's streams carry on, every
request sent after the kill is answered, /ready shows the replica down, and traffic returns
once it is back.

Greedy decoding with ignore_eos throughout: every answer is exactly max_tokens long. The
long streams fill the context (about 1,650 tokens, a minute or more of decoding on these
machines) and are opened at once, each one's replica read when its first token arrives, so
the kill that follows the last first token finds them running; each server's engine has its
own core (tests/vllm_servers.py), so one cannot stall the other. Waits poll for an event
with a deadline that only bounds a hang."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select

from ownllm.gateway.routing import Router
from ownllm.store.schema import UsageRecord
from tests.vllm_servers import MAX_MODEL_LEN, SERVED_NAME

pytestmark = pytest.mark.slow

DEADLINE_S = 120.0
LONG_TOKENS = MAX_MODEL_LEN - 400  # the context less the prompt: still running when acted on
WORDS = [
    "river",
    "stone",
    "cloud",
    "maple",
    "harbor",
    "lantern",
    "copper",
    "meadow",
    "violet",
    "anchor",
    "ember",
    "quartz",
]


def prompt(seed: int, num_words: int = 120) -> list[dict[str, str]]:
    """A distinct ~250-token chat: besides the template's first block, nothing shared."""
    rng = random.Random(seed)
    text = " ".join(f"{rng.choice(WORDS)}{rng.randrange(10_000)}" for _ in range(num_words))
    return [{"role": "user", "content": f"Summarise these notes: {text}"}]


def body(messages, max_tokens: int, model: str = SERVED_NAME, stream: bool = False) -> dict:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}  # fmt: skip


@pytest.fixture(scope="module")
def servers(vllm_server):
    a, b = vllm_server.start("a", "b")  # both at once (reused if the session has them)
    return {"vllm-a": a, "vllm-b": b}


@pytest.fixture(scope="module")
def fleet(servers, tmp_path_factory):
    from ownllm.adapters.registry import register_adapter
    from ownllm.api.app import create_app
    from ownllm.api.state import AppState
    from ownllm.config import load_config
    from ownllm.gateway.principal import ADMIN_TENANT
    from ownllm.models.cache import PreparedModel
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database
    from tests.adapters.conftest import make_peft_adapter
    from tests.server import serve_app

    model_dir = servers["vllm-a"].model_dir
    home = tmp_path_factory.mktemp("routing-gateway")
    overrides = {
        "store": {"data_dir": str(home)},
        "model": {"name": SERVED_NAME},
        "backends": [{"name": n, "kind": "vllm", "url": s.url} for n, s in servers.items()],
        "routing": {"health_interval_s": 0.5, "health_timeout_s": 15.0, "cooldown_s": 1.0},
    }
    config = load_config(env={}, overrides=overrides)
    data_dir = DataDir(home).ensure()
    db = Database.open(config.store.url)
    adapters = []
    for seed in (11, 12):
        path = make_peft_adapter(model_dir, home / f"peft-{seed}", r=8, seed=seed)
        record = register_adapter(db, data_dir, path, name=f"route-{seed}", tenant_id=ADMIN_TENANT,
                                  base_model=SERVED_NAME, base_sha256="", source="imported")  # fmt: skip
        adapters.append(record.id)
    state = AppState(
        config,
        data_dir,
        db=db,
        model=PreparedModel(SERVED_NAME, model_dir, "", from_cache=True, seconds=0.0),
        tokenizer=Tokenizer.from_dir(model_dir),
    )
    app = create_app(state)
    with serve_app(app) as url:
        assert isinstance(state.backend, Router)
        yield {"url": url, "app": app, "router": state.backend, "adapters": adapters}
    db.close()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def counter(url: str, name: str, replica: str) -> float:
    """A per-replica counter of the gateway's /metrics."""
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(f'{name}_total{{replica="{replica}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def vllm_counter(server, name: str) -> float:
    """A vLLM counter summed over its labels (`vllm:prefix_cache_hits`, in tokens)."""
    total, found = 0.0, False
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "_total{") or line.startswith(name + "_total "):
            total, found = total + float(line.rsplit(" ", 1)[1]), True
    assert found, f"vLLM's /metrics has no {name}_total"
    return total


def served_models(server) -> set[str]:
    return {m["id"] for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]}


def replica_states(url: str) -> dict[str, str]:
    return {r["name"]: r["state"] for r in httpx.get(url + "/ready", timeout=30).json()["replicas"]}


def ask(url: str, messages, max_tokens: int = 4, model: str = SERVED_NAME) -> dict:
    response = httpx.post(url + "/v1/chat/completions", json=body(messages, max_tokens, model),
                          timeout=DEADLINE_S)  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["completion_tokens"] == max_tokens
    assert answer["choices"][0]["finish_reason"] == "length"
    return answer


class Stream:
    """A long streamed chat on the gateway, opened up to its first token; `replica` is where
    the router runs it, read as that token arrives."""

    def __init__(self, url: str, router: Router, messages) -> None:
        self._http = httpx.Client(timeout=DEADLINE_S)
        self._cm = self._http.stream("POST", url + "/v1/chat/completions",
                                     json=body(messages, LONG_TOKENS, stream=True))  # fmt: skip
        response = self._cm.__enter__()
        assert response.status_code == 200, response.read()
        self._lines = response.iter_lines()
        first = self.next_event()
        assert first is not None and "choices" in first, first
        self.id = first["id"]
        self.replica = router.running_on(self.id)

    def next_event(self) -> dict | None:
        for line in self._lines:
            if line.startswith("data: {"):
                return json.loads(line[6:])
        return None

    def rest(self) -> list[dict]:
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._http.close()


def open_streams(url: str, router: Router, seeds) -> list[Stream]:
    """Long streams sent at once (each on its own connection), returned once every one has
    its first token: a replica slow to start one does not hold up sending the others."""
    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(lambda seed: Stream(url, router, prompt(seed)), seeds))


def wait_idle(url: str) -> None:
    """Until no replica runs or queues anything (the gateway's count and the scraped one)."""

    def idle() -> bool:
        replicas = httpx.get(url + "/ready", timeout=30).json()["replicas"]
        return all(r["in_flight"] == 0 and r["running"] == 0 and r["queued"] == 0
                   for r in replicas)  # fmt: skip

    wait_for(idle, "the replicas to be idle")


def test_requests_spread_and_adapters_load_on_demand_with_affinity_in_metrics(fleet, servers):
    url, router = fleet["url"], fleet["router"]
    first, second = fleet["adapters"]
    assert all(first not in served_models(s) and second not in served_models(s)
               for s in servers.values())  # fmt: skip

    # an adapter is loaded on the replica its first request went to, and only there
    ask(url, prompt(1), model=first)
    holders = [n for n, s in servers.items() if first in served_models(s)]
    assert len(holders) == 1, holders
    holder = holders[0]
    hits = counter(url, "ownllm_routing_adapter_affinity_hits", holder)
    ask(url, prompt(2), model=first)  # adapter affinity: back to its replica
    assert counter(url, "ownllm_routing_adapter_affinity_hits", holder) == hits + 1
    assert [n for n, s in servers.items() if first in served_models(s)] == [holder]
    ask(url, prompt(3), model=second)
    assert len([n for n, s in servers.items() if second in served_models(s)]) == 1

    # prefix affinity: the same conversation again goes where its KV cache is, which vLLM
    # reuses there
    ask(url, prompt(4))
    before = {n: counter(url, "ownllm_routing_prefix_affinity_hits", n) for n in servers}
    cached = {n: vllm_counter(s, "vllm:prefix_cache_hits") for n, s in servers.items()}
    routed = {n: counter(url, "ownllm_routed_requests", n) for n in servers}
    ask(url, prompt(4))
    again = [n for n in servers if counter(url, "ownllm_routed_requests", n) > routed[n]]
    assert len(again) == 1
    where = again[0]
    assert counter(url, "ownllm_routing_prefix_affinity_hits", where) == before[where] + 1
    assert counter(url, "ownllm_routing_prefix_blocks_hit", where) > 0
    assert vllm_counter(servers[where], "vllm:prefix_cache_hits") > cached[where]

    # concurrent long streams spread over both replicas (the load term of the score)
    routed = {n: counter(url, "ownllm_routed_requests", n) for n in servers}
    streams = open_streams(url, router, [100 + i for i in range(4)])
    for s in streams:
        s.close()  # the gateway aborts them on the replicas
    assert {s.replica for s in streams} == set(servers), [s.replica for s in streams]
    assert all(counter(url, "ownllm_routed_requests", n) > routed[n] for n in servers)
    wait_idle(url)  # the closed streams were aborted there


def test_kill_9_of_a_vllm_replica_under_load(fleet, servers):
    url, router, app = fleet["url"], fleet["router"], fleet["app"]
    victim, survivor = "vllm-b", "vllm-a"
    wait_idle(url)  # nothing left from another test weighs on the load term
    streams = open_streams(url, router, [200 + i for i in range(4)])
    on = {s.id: s.replica for s in streams}
    assert set(on.values()) == {survivor, victim}, on  # spread by load
    num_cut = list(on.values()).count(victim)

    servers[victim].kill()
    for s in (s for s in streams if on[s.id] == victim):
        events = s.rest()
        assert events and events[-1]["error"]["code"] == "replica_failed", events[-1:]
        tokens = sum(1 for e in events[:-1] for c in e.get("choices", ()) if c["delta"])
        assert tokens < LONG_TOKENS  # it was cut, and said so: no silent truncation

    # nothing that had not started is lost: all of these are answered (by the survivor,
    # after a retry where one went to the dead replica first)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: ask(url, prompt(300 + i)), range(6)))
    assert len(answers) == 6
    # the survivor's streams carry on
    assert all(router.running_on(s.id) == survivor for s in streams if on[s.id] == survivor)
    for s in (s for s in streams if on[s.id] == survivor):
        assert "choices" in s.next_event()
        s.close()
    for s in (s for s in streams if on[s.id] == victim):
        s.close()

    wait_for(lambda: replica_states(url)[victim] == "down", f"/ready to show {victim} down")
    ready = httpx.get(url + "/ready", timeout=30)
    assert ready.status_code == 200  # the survivor still serves
    app.state.gateway.ledger.flush()
    with app.state.ownllm.db.session() as session:
        rows = session.scalars(select(UsageRecord).where(UsageRecord.status == "error")).all()
    assert [(r.http_status, r.error_code, r.backend) for r in rows] == [
        (502, "replica_failed", victim)
    ] * num_cut

    servers[victim].restart()  # back on the same port
    wait_for(lambda: replica_states(url)[victim] == "healthy", f"{victim} to be healthy again")
    before = counter(url, "ownllm_routed_requests", victim)
    wait_idle(url)
    streams = open_streams(url, router, [400 + i for i in range(3)])
    on_victim = [s for s in streams if s.replica == victim]
    assert on_victim, [s.replica for s in streams]  # traffic returns, and it answers
    assert "choices" in on_victim[0].next_event()
    for s in streams:
        s.close()
    assert counter(url, "ownllm_routed_requests", victim) > before
