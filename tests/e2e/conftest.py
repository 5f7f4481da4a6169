"""A real `ownllm serve` subprocess per module (tiny random model, temp data dir)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.engine.tiny_models import make_model
from tests.server import Server


@pytest.fixture(scope="session")
def e2e_model_dir(tmp_path_factory):
    # A large init range keeps greedy decoding far from ties, so batching never flips a token.
    return make_model(tmp_path_factory.mktemp("e2e-model"), seed=1, max_position_embeddings=4096)


def start_server(tmp_path_factory, model_dir, *args: str, env: dict | None = None) -> Server:
    data_dir = tmp_path_factory.mktemp("e2e-data")
    server = Server("--model", str(model_dir), "--name", "tiny", *args, data_dir=data_dir, env=env)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory, e2e_model_dir):
    server = start_server(tmp_path_factory, e2e_model_dir)
    yield server
    server.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server):
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def metric(base_url: str, name: str, labels: str = "") -> float:
    """One sample of /metrics (`labels` as Prometheus writes them, e.g. 'endpoint="x"')."""
    text = httpx.get(f"{base_url}/metrics", timeout=60).text
    key = f"{name}{{{labels}}}" if labels else name
    match = re.search(rf"^{re.escape(key)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


ADMIN_KEY = "sk-fuzz-admin"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, e2e_model_dir):
    """A server with a short context (quick generations) and an admin key, for fuzzing."""
    env = {
        "OWNLLM_MODEL_MAX_MODEL_LEN": "128",
        "OWNLLM_ENGINE_MAX_NUM_SEQS": "32",
        "OWNLLM_ADMIN_KEY": ADMIN_KEY,  # requests are authorised, so they reach the routes
        "OWNLLM_BATCH_RUN_WORKER": "false",  # batches stay validating: each answer is known
    }
    server = start_server(tmp_path_factory, e2e_model_dir, env=env)
    yield server
    server.stop()
