"""`build_backend(cfg, context)`: one configured backend (`[[backends]]`) made real.

`BackendContext` is what the app has prepared for every backend: the served model (id,
Hugging Face directory, tokenizer), the engine and model settings of the
embedded engine, the data dir, the registry's adapter resolver and the `cat` composer.
Dependencies are handed in here, so the backends import nothing above them. Only the
embedded backend loads the model (and torch); a `vllm` or `openai` backend reads the
model directory's config.json for the context length and vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownllm.backends.base import Backend, ModelInfo
from ownllm.config import BackendConfig, ConfigError, EngineConfig, ModelConfig


@dataclass(frozen=True)
class BackendContext:
    model_id: str
    model_dir: Path | None
    tokenizer: Any
    data_dir: Path
    engine: EngineConfig = field(default_factory=EngineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter_resolver: Callable[[str], str | None] | None = None
    composer: Callable[..., Path] | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


def api_key(cfg: BackendConfig, env: Mapping[str, str]) -> str:
    """The backend's API key from `api_key_env`; ConfigError when that variable is unset."""
    if not cfg.api_key_env:
        return ""
    key = env.get(cfg.api_key_env, "")
    if not key:
        raise ConfigError(
            f"backend {cfg.name}: api_key_env names {cfg.api_key_env}, which is not set"
        )
    return key


def build_backend(cfg: BackendConfig, context: BackendContext) -> Backend:
    """The backend `cfg` describes (not started: the app's lifespan starts it)."""
    if cfg.kind == "embedded":
        return _embedded(context)
    key = api_key(cfg, context.env)
    info = remote_model_info(context, cfg.max_model_len)
    if cfg.kind == "openai":
        from ownllm.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(cfg, model_info=info, tokenizer=context.tokenizer, api_key=key)
    from ownllm.backends.vllm import (
        VLLMBackend,
        VllmProcess,
        base_url,
        expand_command,
        vllm_model_dir,
    )

    process = None
    if cfg.command:
        url = base_url(cfg.url)
        host_port = url.split("://", 1)[1]
        model_dir = ""
        if context.model_dir is not None:  # without ownllm's quantised blocks
            model_dir = str(
                vllm_model_dir(
                    context.model_dir,
                    context.data_dir / "cache" / "vllm-model" / context.model_dir.name,
                )
            )
        values = {
            "model_dir": model_dir,
            "model": cfg.upstream_model or context.model_id,
            "host": host_port.rsplit(":", 1)[0],
            "port": host_port.rsplit(":", 1)[-1] if ":" in host_port else "80",
        }
        process = VllmProcess(
            expand_command(cfg.command, values),
            url,
            context.data_dir / "logs" / f"vllm-{cfg.name}.log",
            start_timeout_s=cfg.start_timeout_s,
        )
    return VLLMBackend(
        cfg,
        model_info=info,
        tokenizer=context.tokenizer,
        api_key=key,
        adapter_resolver=context.adapter_resolver,
        composer=context.composer,
        cache_dir=context.data_dir / "cache" / "compositions",
        process=process,
    )


def remote_model_info(context: BackendContext, max_model_len: int = 0) -> ModelInfo:
    """The served model as a remote backend starts out knowing it: from the model
    directory's config.json (the server's /v1/models may correct the length at start)."""
    config: dict[str, Any] = {}
    if context.model_dir is not None and (context.model_dir / "config.json").is_file():
        config = json.loads((context.model_dir / "config.json").read_text())
    length = max_model_len or context.model.max_model_len
    length = length or int(config.get("max_position_embeddings") or 2048)
    vocab = int(config.get("vocab_size") or getattr(context.tokenizer, "vocab_size", 0) or 0)
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    return ModelInfo(
        id=context.model_id,
        max_model_len=length,
        vocab_size=vocab,
        dtype=str(config.get("torch_dtype") or "unknown"),
        architecture=str(architectures[0]),
    )


def _embedded(context: BackendContext) -> Backend:
    """The in-process engine over the prepared model (torch imported here: it is heavy)."""
    import torch

    from ownllm.backends.embedded import EmbeddedBackend

    if context.model_dir is None:
        raise ConfigError("the embedded backend needs the served model's directory")
    device = context.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EmbeddedBackend(
        model_dir=context.model_dir,
        model_id=context.model_id,
        engine_config=context.engine,
        dtype=context.model.dtype,
        quantization=context.model.quantization,
        device=device,
        max_model_len=context.model.max_model_len,
        adapter_resolver=context.adapter_resolver,
    )
