"""The real shipped default model (SmolLM2-135M-Instruct) answers a chat end to end."""

from __future__ import annotations

import pytest

from tests.server import Server


@pytest.mark.slow
def test_shipped_model_answers_a_chat(tmp_path):
    from openai import OpenAI

    server = Server("--model", "smollm2-135m-instruct", data_dir=tmp_path)
    try:
        server.wait_ready(timeout=600)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
        )
        answer = completion.choices[0].message.content
        assert "Paris" in answer, answer
        assert completion.usage.completion_tokens <= 24
        chunks = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer
    finally:
        server.stop()
