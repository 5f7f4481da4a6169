"""JSON-constrained decoding: whatever the logits, the output parses and validates."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from ownllm.backends.base import SamplingParams
from ownllm.engine.constraints import (
    MAX_SCHEMA_CHARS,
    MAX_SCHEMA_DEPTH,
    JsonConstraint,
    check_schema_bounds,
    constraint_for_response_format,
)
from ownllm.engine.sampler import SamplingBatch, allocate_bitmask, fill_bitmask, sample
from ownllm.errors import InvalidRequestError
from ownllm.models.tiny import make_tokenizer
from ownllm.models.tokenizer import Tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b c", "\u00fc"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "pos": {
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": ["number", "null"]}},
            "required": ["x", "y"],
            "additionalProperties": False,
        },
        "kind": {"anyOf": [{"const": "cat"}, {"type": "integer", "exclusiveMaximum": 0}]},
    },
    "required": ["name", "age", "tags", "ok", "pos", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(path)
    return Tokenizer.from_dir(path)


def generate(tokenizer, constraint, seed: int, max_tokens: int = 600, bias=None):
    """Random logits through the real sampler: the constraint alone decides what is valid."""
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(max_tokens):
        bitmask = fill_bitmask(allocate_bitmask(1, tokenizer.vocab_size), [constraint])
        logits = torch.randn(1, tokenizer.vocab_size, generator=gen) * 3
        if bias is not None:
            logits += bias
        batch = SamplingBatch.build([SamplingParams(temperature=1.0)], [[]], [ids])
        token_id = int(sample(logits, batch, bitmask).token_ids)
        if token_id in tokenizer.eos_token_ids:
            assert constraint.is_accepting()
            break
        assert constraint.accept_token(token_id)
        ids.append(token_id)
        if constraint.is_terminated():
            break
    else:
        pytest.fail("the constraint did not finish the document")
    return tokenizer.decode(ids)


@pytest.mark.parametrize("seed", range(8))
def test_random_logits_always_give_json_valid_under_the_schema(tokenizer, seed):
    text = generate(tokenizer, JsonConstraint.from_schema(tokenizer, PERSON), seed)
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("seed", range(6))
def test_json_object_mode_gives_an_object(tokenizer, seed):
    # Favour closing tokens so random documents end in a few hundred tokens.
    bias = torch.zeros(tokenizer.vocab_size)
    for token in ['"', "}", "]", "<|im_end|>"]:
        bias[tokenizer.token_to_id(token)] = 4.0
    constraint = constraint_for_response_format(tokenizer, {"type": "json_object"})
    text = generate(tokenizer, constraint, seed, bias=bias)
    assert isinstance(json.loads(text), dict)


def test_disallowed_token_is_rejected(tokenizer):
    constraint = JsonConstraint.json_object(tokenizer)
    bitmask = fill_bitmask(allocate_bitmask(1, tokenizer.vocab_size), [constraint])
    letter = tokenizer.encode("x")[0]
    assert not bitmask[0, letter // 32] >> (letter % 32) & 1
    assert constraint.accept_token(letter) is False
    assert constraint.is_terminated()


def test_fork_is_independent(tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    first = JsonConstraint.from_schema(tokenizer, schema)
    for token_id in tokenizer.encode('{"a":1'):
        assert first.accept_token(token_id)
    second = first.fork()
    for token_id in tokenizer.encode("2}"):
        assert first.accept_token(token_id)
    assert first.is_terminated() and not second.is_terminated()
    for token_id in tokenizer.encode("}"):
        assert second.accept_token(token_id)
    assert second.is_terminated()


def test_complete_document_ends_the_constraint(tokenizer):
    constraint = JsonConstraint.json_object(tokenizer)
    for token_id in tokenizer.encode('{"k":[true,null]}'):
        assert not constraint.is_terminated()
        assert constraint.accept_token(token_id)
    assert constraint.is_terminated() and constraint.is_accepting()
    bitmask = fill_bitmask(allocate_bitmask(1, tokenizer.vocab_size), [constraint])
    allowed = [t for t in range(tokenizer.vocab_size) if bitmask[0, t // 32] >> (t % 32) & 1]
    assert allowed == list(tokenizer.eos_token_ids)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "frobnicate"},
        {"type": "object", "properties": {"a": {"minimum": "zero"}}},
        {"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}},
        ["not", "an", "object"],
    ],
    ids=["unknown type", "bad keyword value", "unenforceable keyword", "not an object"],
)
def test_invalid_schema_is_a_400_on_response_format(tokenizer, schema):
    with pytest.raises(InvalidRequestError) as e:
        JsonConstraint.from_schema(tokenizer, schema)
    assert e.value.param == "response_format" and e.value.status_code == 400


def nested(levels: int) -> dict:
    """A schema of `levels` nested objects: 2 * levels + 1 levels of JSON."""
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def deep_list(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "schema",
    [
        nested(400),  # RecursionError inside jsonschema before the bound
        nested(MAX_SCHEMA_DEPTH // 2),  # 2 levels each, and the innermost schema
        {"enum": [deep_list(5000)]},
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(4000)}},
        {"type": "string", "description": "x" * MAX_SCHEMA_CHARS},
    ],
    ids=["400 levels", "just past the bound", "5000 levels in an enum", "4000 properties", "long"],
)
def test_deep_or_huge_schema_is_a_400_on_json_schema(tokenizer, schema):
    with pytest.raises(InvalidRequestError) as e:
        JsonConstraint.from_schema(tokenizer, schema)
    assert e.value.param == "response_format.json_schema" and e.value.status_code == 400


def test_schema_bounds_admit_what_openai_accepts(tokenizer):
    ten_levels = nested(10)  # OpenAI's structured-outputs nesting limit
    check_schema_bounds(ten_levels)
    check_schema_bounds({"type": "array", "items": nested(MAX_SCHEMA_DEPTH // 2 - 1)})  # 64
    assert JsonConstraint.from_schema(tokenizer, ten_levels) is not None
    compact = json.dumps(PERSON, separators=(",", ":"))
    padded = {**PERSON, "description": "x" * (MAX_SCHEMA_CHARS - len(compact) - 100)}
    check_schema_bounds(padded)


def test_response_format_dispatch(tokenizer):
    assert constraint_for_response_format(tokenizer, None) is None
    assert constraint_for_response_format(tokenizer, {"type": "text"}) is None
    spec = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}}
    assert isinstance(constraint_for_response_format(tokenizer, spec), JsonConstraint)
    with pytest.raises(InvalidRequestError):
        constraint_for_response_format(tokenizer, {"type": "yaml"})


def test_bitmask_width_follows_a_padded_model_vocabulary(tokenizer):
    padded = tokenizer.vocab_size + 75  # models often pad the embedding past the tokenizer
    constraint = JsonConstraint.json_object(tokenizer, vocab_size=padded)
    bitmask = fill_bitmask(allocate_bitmask(1, padded), [constraint])
    assert bitmask.shape[1] == (padded + 31) // 32
    brace = tokenizer.token_to_id("{")
    assert bitmask[0, brace // 32] >> (brace % 32) & 1
    padding = range(tokenizer.vocab_size, padded)
    assert not any(bitmask[0, t // 32] >> (t % 32) & 1 for t in padding)
