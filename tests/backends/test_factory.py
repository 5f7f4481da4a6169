"""build_backend: each kind from its config, keys from the environment, no model loaded
for a remote kind."""

from __future__ import annotations

import json

import pytest

from ownllm.backends.factory import BackendContext, build_backend
from ownllm.backends.openai_compat import OpenAIBackend
from ownllm.backends.vllm import VLLMBackend
from ownllm.config import BackendConfig, ConfigError
from ownllm.models.tokenizer import Tokenizer


@pytest.fixture
def context(tmp_path, tiny_model_dir):
    return BackendContext(
        model_id="tiny",
        model_dir=tiny_model_dir,
        tokenizer=Tokenizer.from_dir(tiny_model_dir),
        data_dir=tmp_path,
        env={"PAID_KEY": "sk-paid"},
    )


def test_an_openai_backend_takes_its_key_and_the_models_context(context):
    cfg = BackendConfig(name="paid", kind="openai", url="https://api.example.com/v1/",
                        api_key_env="PAID_KEY")  # fmt: skip
    backend = build_backend(cfg, context)
    assert isinstance(backend, OpenAIBackend) and not isinstance(backend, VLLMBackend)
    assert backend.url == "https://api.example.com"
    assert backend._headers == {"Authorization": "Bearer sk-paid"}
    info, config = backend.model_info, json.loads((context.model_dir / "config.json").read_text())
    assert (info.id, info.max_model_len) == ("tiny", config["max_position_embeddings"])
    assert info.vocab_size == config["vocab_size"]
    assert not backend.uses_token_constraints


def test_an_unset_key_variable_is_a_config_error(context):
    cfg = BackendConfig(name="paid", kind="openai", url="http://x", api_key_env="NOT_SET")
    with pytest.raises(ConfigError, match="api_key_env names NOT_SET, which is not set"):
        build_backend(cfg, context)


def test_a_managed_vllm_gets_its_command_filled_in_and_a_log_in_the_data_dir(context):
    cfg = BackendConfig(
        name="gpu0",
        kind="vllm",
        url="http://127.0.0.1:8123",
        command=("py", "--model", "{model_dir}", "--served-model-name", "{model}",
                 "--port", "{port}"),
    )  # fmt: skip
    backend = build_backend(cfg, context)
    assert isinstance(backend, VLLMBackend)
    process = backend.process
    served_dir = context.data_dir / "cache" / "vllm-model" / context.model_dir.name
    assert process.argv == ["py", "--model", str(served_dir), "--served-model-name",
                            "tiny", "--port", "8123"]  # fmt: skip
    assert (served_dir / "config.json").read_bytes() == (
        context.model_dir / "config.json"
    ).read_bytes()
    assert process.log_path == context.data_dir / "logs" / "vllm-gpu0.log"
    assert backend.cache_dir == context.data_dir / "cache" / "compositions"


def test_an_external_vllm_has_no_process(context):
    backend = build_backend(BackendConfig(kind="vllm", url="http://10.0.0.5:8000"), context)
    assert backend.process is None and backend.health_path == "/health"


def test_vllm_reads_the_model_cache_without_its_quant_file(tmp_path):
    """vLLM loads every *.safetensors of its model directory: the cache's GGUF blocks
    (QUANT_FILE) are left out of the directory it is given, the rest linked."""
    from ownllm.backends.vllm import vllm_model_dir

    cache = tmp_path / "models" / "m"
    cache.mkdir(parents=True)
    from ownllm.formats.quant import QUANT_FILE

    for name, data in [("config.json", b"{}"), ("model.safetensors", b"dense"),
                       (QUANT_FILE, b"blocks"), ("tokenizer.json", b"{}")]:  # fmt: skip
        (cache / name).write_bytes(data)
    out = vllm_model_dir(cache, tmp_path / "served")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json"
    ]  # fmt: skip
    assert (out / "model.safetensors").read_bytes() == b"dense"
    (cache / "tokenizer.json").unlink()  # a rebuilt cache: the view follows it
    assert vllm_model_dir(cache, out) == out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
