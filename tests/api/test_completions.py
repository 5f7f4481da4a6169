"""POST /v1/completions over a scripted backend: prompt lists, echo, logprobs, streaming."""

from __future__ import annotations

from tests.api.test_chat import sse_events

COMPLETION = {"model": "tiny", "prompt": "Once", "max_tokens": 3}


async def test_completion_shape(client, fake_state):
    r = await client.post("/v1/completions", json=COMPLETION)
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "Hello there,", "logprobs": None, "finish_reason": "length"}
    ]
    num_prompt = len(fake_state.tokenizer.encode("Once", add_special_tokens=True))
    assert body["usage"]["prompt_tokens"] == num_prompt
    assert body["usage"]["completion_tokens"] == 3


async def test_prompt_list_with_n_gives_prompt_major_choices(client, fake_state):
    r = await client.post("/v1/completions", json={**COMPLETION, "prompt": ["a", "b"], "n": 2})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert [c["text"][:2] for c in choices] == ["He", "1:", "He", "1:"]
    assert len(fake_state.backend.requests) == 2
    assert r.json()["usage"]["completion_tokens"] == 12


async def test_echo_and_logprobs(client):
    r = await client.post("/v1/completions", json={**COMPLETION, "echo": True})
    assert r.json()["choices"][0]["text"] == "OnceHello there,"
    r = await client.post("/v1/completions", json={**COMPLETION, "logprobs": 1})
    logprobs = r.json()["choices"][0]["logprobs"]
    assert logprobs == {
        "tokens": ["Hello", " there", ","],
        "token_logprobs": [-0.5, -0.5, -0.5],
        "top_logprobs": [{"alt0": -1.0}] * 3,
        "text_offset": [0, 5, 11],
    }


async def test_streamed_completion_concatenates_to_the_whole_one(client):
    whole = (await client.post("/v1/completions", json={**COMPLETION, "n": 2})).json()
    r = await client.post("/v1/completions", json={**COMPLETION, "n": 2, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for chunk in events[:-1]:
        assert chunk["object"] == "text_completion"
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert [texts[0], texts[1]] == [c["text"] for c in whole["choices"]]
