"""The official `openai` client, sync and async, against a real server process."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.conftest import start_server
from tests.engine.tiny_models import make_constant_model

MESSAGES = [{"role": "user", "content": "Tell me about the quick brown fox."}]
# EOS ignored: a random model may end at any token, so the length is set, not sampled
FULL_LENGTH = {"extra_body": {"ignore_eos": True}}
SAMPLED = {
    "model": "tiny",
    "messages": MESSAGES,
    "max_tokens": 24,
    "seed": 1234,
    "temperature": 1.0,
    **FULL_LENGTH,
}


def test_chat(client):
    completion = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=12, **FULL_LENGTH
    )
    assert completion.object == "chat.completion" and completion.model == "tiny"
    assert completion.id.startswith("chatcmpl-")
    assert completion.system_fingerprint.startswith("fp_")
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_concatenates_to_the_whole_answer_and_ends_with_usage(client):
    whole = client.chat.completions.create(**SAMPLED)
    again = client.chat.completions.create(**SAMPLED)
    assert again.choices[0].message.content == whole.choices[0].message.content  # seeded
    chunks = list(
        client.chat.completions.create(
            **SAMPLED, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, usage_chunk = chunks
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == whole.choices[0].message.content
    assert content[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage


async def test_async_chat_and_stream(aclient):
    whole = await aclient.chat.completions.create(**SAMPLED)
    stream = await aclient.chat.completions.create(**SAMPLED, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == whole.choices[0].message.content


def test_n_two_choices(client):
    completion = client.chat.completions.create(**{**SAMPLED, "n": 2})
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)
    assert completion.usage.completion_tokens == 2 * SAMPLED["max_tokens"]  # both choices count
    stream = client.chat.completions.create(**{**SAMPLED, "n": 2}, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert [texts[0], texts[1]] == [c.message.content for c in completion.choices]


def test_stop_cuts_before_the_stop_string(client):
    text = client.chat.completions.create(**SAMPLED).choices[0].message.content
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].strip())
    cut = client.chat.completions.create(**SAMPLED, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(client):
    completion = client.chat.completions.create(**SAMPLED, logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob


def test_completions_prompt_list(client):
    completion = client.completions.create(
        model="tiny", prompt=["The quick", "Hello"], max_tokens=6, n=2, seed=5
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.usage.completion_tokens <= 24


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates(client, seed):
    # The longest document SCHEMA allows is under 200 bytes (the name's 12 characters are at
    # most 12 bytes each, escaped; age 3 digits; 3 tags), and every token is at least a
    # byte: the grammar closes the object within max_tokens, whatever the model samples.
    completion = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "A person as JSON."}],
        max_tokens=200,
        seed=seed,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA},
        },
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


# The constant model's logits after any prompt: '"' leads '}', which leads '{' and ':',
# which lead every other token, each by 40. Unconstrained it says '"' forever; any JSON
# object the grammar allows it can only fill as {"":""}, the highest-ranked token each step.
CLOSING_LOGITS = {'"': 120.0, "}": 80.0, "{": 40.0, ":": 40.0}


@pytest.fixture(scope="module")
def closing_client(tmp_path_factory):
    from openai import OpenAI

    model_dir = make_constant_model(tmp_path_factory.mktemp("closing-model"), CLOSING_LOGITS)
    server = start_server(tmp_path_factory, model_dir)
    try:
        with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
            yield c
    finally:
        server.stop()


def test_json_object_output_parses(closing_client):
    free = closing_client.chat.completions.create(**SAMPLED)
    assert free.choices[0].message.content == '"' * SAMPLED["max_tokens"]
    assert free.choices[0].finish_reason == "length"  # the model alone never closes anything

    completion = closing_client.chat.completions.create(
        **{**SAMPLED, "max_tokens": 120}, response_format={"type": "json_object"}
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"  # the grammar ended it when the object closed
    assert isinstance(json.loads(choice.message.content), dict)
    assert choice.message.content == '{"":""}'
    assert completion.usage.completion_tokens == 7


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny"
    assert client.models.retrieve("tiny").id == "tiny"


# -- errors -----------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == 404 and info.value.code == "model_not_found"
    assert info.value.param == "model"


# -- logit_bias -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(e2e_model_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(e2e_model_dir / "tokenizer.json"))


def plain_token(vocab, skip: int = 0) -> tuple[int, str]:
    """A token id whose text is a plain ASCII word piece, so an answer of it repeated reads
    back exactly (`skip`: take a later one)."""
    found = [
        (i, vocab.decode([i]))
        for i in range(3, vocab.get_vocab_size())
        if vocab.decode([i]).isascii() and vocab.decode([i]).isalpha()
        and len(vocab.decode([i])) >= 2
    ]  # fmt: skip
    return found[skip]


def test_logit_bias_plus_100_makes_greedy_say_the_token(client, vocab):
    token_id, text = plain_token(vocab)
    completion = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=5, temperature=0,
        logit_bias={str(token_id): 100}, **FULL_LENGTH,
    )  # fmt: skip
    assert completion.choices[0].message.content == text * 5
    legacy = client.completions.create(
        model="tiny", prompt="The quick", max_tokens=4, temperature=0,
        logit_bias={str(token_id): 100}, **FULL_LENGTH,
    )  # fmt: skip
    assert legacy.choices[0].text == text * 4


def test_logit_bias_minus_100_on_the_greedy_token_changes_the_answer(client, vocab):
    ask = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "temperature": 0,
           "logprobs": True, **FULL_LENGTH}  # fmt: skip
    first = client.chat.completions.create(**ask).choices[0]
    greedy = first.logprobs.content[0].token
    banned = {str(i): -100 for i in range(vocab.get_vocab_size()) if vocab.decode([i]) == greedy}
    assert banned  # the greedy token's id (and any that reads the same)
    second = client.chat.completions.create(**ask, logit_bias=banned).choices[0]
    assert second.logprobs.content[0].token != greedy
    assert second.message.content != first.message.content


def test_logit_bias_with_n_seed_and_stream(client, vocab):
    token_id, text = plain_token(vocab, skip=1)
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, temperature=1.0, seed=7, n=2,
        logit_bias={str(token_id): 100}, stream=True, **FULL_LENGTH,
    )  # fmt: skip
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: text * 4, 1: text * 4}


async def test_async_logit_bias(aclient, vocab):
    token_id, text = plain_token(vocab, skip=2)
    completion = await aclient.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=3, temperature=0,
        logit_bias={str(token_id): 100}, **FULL_LENGTH,
    )  # fmt: skip
    assert completion.choices[0].message.content == text * 3
    with pytest.raises(openai.BadRequestError) as info:
        await aclient.chat.completions.create(
            model="tiny", messages=MESSAGES, logit_bias={str(token_id): 101}
        )
    assert info.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as info:
        await aclient.chat.completions.create(
            model="tiny", messages=MESSAGES, logit_bias={"100000": 5}
        )
    assert info.value.param == "logit_bias" and "0..511" in info.value.message


def test_logit_bias_under_a_constraint(closing_client, vocab):
    """The constant model fills any object as {"":""}; with '"' banned, '}' is the best
    token the grammar allows after '{', so the object closes empty and still parses."""
    (quote,) = vocab.encode('"', add_special_tokens=False).ids
    completion = closing_client.chat.completions.create(
        **{**SAMPLED, "max_tokens": 120}, response_format={"type": "json_object"},
        logit_bias={str(quote): -100},
    )  # fmt: skip
    assert completion.choices[0].message.content == "{}"
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "change,param",
    [
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_parameter_is_400_with_param(client, change, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**{"model": "tiny", "messages": MESSAGES, **change})
    assert info.value.status_code == 400 and info.value.param == param
    assert info.value.type == "invalid_request_error"


def test_context_too_long_is_400_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100_000)
    assert info.value.code == "context_length_exceeded"


def test_validation_errors_are_never_422(server):
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "tiny"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


# -- embeddings (the real all-MiniLM-L6-v2) ---------------------------------------------------


@pytest.mark.slow
def test_embeddings_related_sentences_are_closer(client):
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The central bank raised interest rates again.",
    ]
    result = client.embeddings.create(model="all-minilm-l6-v2", input=sentences)
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2] and len(vectors[0]) == 384

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))  # unit vectors

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.3
    assert abs(cos(vectors[0], vectors[0]) - 1) < 1e-4
    floats = client.embeddings.create(
        model="all-minilm-l6-v2", input=sentences[0], encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
