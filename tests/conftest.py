"""Fixtures shared across packages: tiny random model directories (one that can learn) and
PEFT adapters on them, databases (SQLite always, PostgreSQL when OWNLLM_TEST_DATABASE_URL
or OWNLLM_DATABASE_URL points at one), the two tenants, `fake_state` (an app state over a
ScriptedBackend), a chat file to tune on, and real vLLM servers (`vllm_server`, over
tests/vllm_servers.py: the slow tests of the vllm backend and the router)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ownllm.models.tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def learnable_model_dir(tmp_path_factory) -> Path:
    """The tiny random Llama with embeddings scaled up (std 0.12 instead of 0.02).

    With tied embeddings of std 0.02, logits can move by only ~±1 whatever the
    hidden state is, so no adapter could drive the loss far down; scaled, a
    rank-8 adapter learns a fixed reply in a few seconds. The row of token 2
    (`<|im_end|>`, also the pad id, which transformers initialises to zeros) gets
    random values too: a zero row in the tied lm_head could never be predicted,
    so the model could not learn to stop.
    """
    import torch
    from safetensors.torch import load_file, save_file

    out = make_tiny_model(tmp_path_factory.mktemp("learnable-model"))
    weights = load_file(str(out / "model.safetensors"))
    weights = {k: v * 6 if "embed_tokens" in k else v for k, v in weights.items()}
    embed = weights["model.embed_tokens.weight"]
    embed[2] = torch.randn(embed.shape[1], generator=torch.Generator().manual_seed(0)) * 0.12
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def adapter_a(tiny_model_dir, tmp_path_factory) -> Path:
    from tests.adapters.conftest import make_peft_adapter

    return make_peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter-a"), seed=1)


@pytest.fixture(scope="session")
def adapter_b(tiny_model_dir, tmp_path_factory) -> Path:
    from tests.adapters.conftest import ALL, make_peft_adapter

    out = tmp_path_factory.mktemp("adapter-b")
    return make_peft_adapter(tiny_model_dir, out, r=8, alpha=4.0, targets=ALL, seed=2)


@pytest.fixture
def reply_file(tmp_path) -> Path:
    """20 examples: whatever the user says, the assistant answers REPLY."""
    from tests.tuning.conftest import REPLY, chat, write_jsonl

    return write_jsonl(tmp_path / "reply.jsonl", [chat(f"question {i}", REPLY) for i in range(20)])


def postgres_admin_url() -> str | None:
    for name in ("OWNLLM_TEST_DATABASE_URL", "OWNLLM_DATABASE_URL"):
        url = os.environ.get(name, "")
        if url.startswith("postgresql"):
            return url
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("no PostgreSQL: set OWNLLM_TEST_DATABASE_URL (.ci/run starts one)")
    from sqlalchemy import create_engine, text

    name = f"ownllm_t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with engine.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def two_tenants(db_url):
    """Tenants `acme` (.a) and `globex` (.b) with one key each, plus an admin key, on a
    fresh SQLite / PostgreSQL database; see tests/tenants.py (`gateway_state`)."""
    from ownllm.store.db import Database
    from tests.tenants import make_two_tenants

    db = Database.open(db_url)
    yield make_two_tenants(db, db_url)
    db.close()


@pytest.fixture
def fake_state(tmp_path, tiny_model_dir):
    """An app state over a ScriptedBackend (GREETING) and the tiny model's tokenizer: no
    database (open development mode), no engine, no torch."""
    from ownllm.api.state import AppState
    from ownllm.backends.scripted import ScriptedBackend
    from ownllm.config import load_config
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir

    overrides = {"store": {"data_dir": str(tmp_path)}, "model": {"name": "tiny"}}
    config = load_config(env={}, overrides=overrides)
    state = AppState(
        config=config,
        data_dir=DataDir(tmp_path).ensure(),
        tokenizer=Tokenizer.from_dir(tiny_model_dir),
    )
    state.backend = ScriptedBackend()
    return state


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory) -> Path:
    """The shipped model as the HF directory ownllm's cache writes, as vLLM reads it
    (`vllm_model_dir`: without the cache's quantised blocks)."""
    from ownllm.backends.vllm import vllm_model_dir
    from ownllm.models import prepare_model, resolve_model
    from tests.vllm_servers import SERVED_NAME

    home = tmp_path_factory.mktemp("vllm-home")
    model_dir = prepare_model(resolve_model(SERVED_NAME), home).path
    return vllm_model_dir(model_dir, home / "vllm-model")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, vllm_model_dir):
    """The session's vLLM servers (tests/vllm_servers.py): `vllm_server("a")` is server "a",
    started on first use; `vllm_server.start("a", "b")` starts both at once. All stop at the
    end of the session; a test that needs no vLLM never starts one."""
    from tests.vllm_servers import VllmServers

    servers = VllmServers(vllm_model_dir, tmp_path_factory.mktemp("vllm-logs"))
    yield servers
    servers.stop()
