"""Fixtures for tuning tests: a tiny model that can learn, and chat JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import make_tiny_model


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


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [
            *messages,
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


REPLY = "Hello world!"  # three tokens of the tiny tokenizer: learnable in seconds


@pytest.fixture
def reply_file(tmp_path) -> Path:
    """20 examples: whatever the user says, the assistant answers REPLY."""
    return write_jsonl(tmp_path / "reply.jsonl", [chat(f"question {i}", REPLY) for i in range(20)])
