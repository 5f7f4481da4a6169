"""Two `ownllm serve` replicas sharing one database: a key's monthly token budget holds
across them under concurrent load (SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio

import httpx

from ownllm.gateway.keys import create_key
from ownllm.gateway.limits import Limiter
from ownllm.gateway.principal import Limits
from ownllm.gateway.usage import summarize
from ownllm.store.db import Database
from tests.server import Server

BUDGET = 400


async def _hammer(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions", json=body, headers=headers
                )
                for i in range(n)
            )
        )


def test_monthly_budget_holds_across_two_replicas(tmp_path, tiny_model_dir, db_url):
    db = Database.open(db_url)
    key = create_key(db, "acme", "shared", limits=Limits(monthly_tokens=BUDGET))
    config = tmp_path / "ownllm.toml"
    config.write_text(f'[store]\ndatabase_url = "{db_url}"\n')
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(
                Server(
                    "--model",
                    str(tiny_model_dir),
                    "--name",
                    "tiny",
                    "--config",
                    str(config),
                    data_dir=tmp_path / name,
                    env={"OWNLLM_MODEL_DEVICE": "cpu"},
                )
            )
        for server in servers:
            server.wait_ready()
        responses = asyncio.run(_hammer([s.base_url for s in servers], key.secret, 40))
    finally:
        for server in servers:
            server.stop()  # flushes each replica's ledger and settlements
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert ok and refused and len(ok) + len(refused) == 40
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_quota"}
    served = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert served <= BUDGET
    [row] = summarize(db, by="key")
    assert row["ok"] == len(ok) and row["total_tokens"] == served  # what clients saw
    assert Limiter(db).used_tokens(f"key:{key.info.id}") == served  # settled exactly
    db.close()
