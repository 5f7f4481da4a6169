"""Tool-call constraints on real tokens with random logits: whatever the model would say,
a forced call names one of the tools and its arguments validate against that tool's
schema; `auto` constrains a call once the text opens one; `none` never opens one."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from ownllm.backends.base import SamplingParams
from ownllm.engine.constraints import ToolCallSpec, constraint_for_tools, tool_call_grammar
from ownllm.engine.sampler import SamplingBatch, allocate_bitmask, fill_bitmask, sample
from ownllm.models.tiny import make_tokenizer
from ownllm.models.tokenizer import Tokenizer
from ownllm.models.tool_format import FALLBACK_SYNTAX, HERMES_SYNTAX, ToolCallParser

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIMER = {
    "type": "object",
    "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 99}},
    "required": ["minutes"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "set_timer": TIMER}
FUNCTIONS = tuple((name, json.dumps(schema)) for name, schema in SCHEMAS.items())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(path)
    return Tokenizer.from_dir(path)


def generate(tokenizer, constraint, seed: int, prefix: str = "", max_tokens: int = 300) -> str:
    """`prefix` as the model's first tokens, then random logits through the real sampler
    until the constraint ends the answer (EOS only where it accepts)."""
    ids = tokenizer.encode(prefix) if prefix else []
    for token_id in ids:
        assert constraint.accept_token(token_id)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_tokens):
        bitmask = fill_bitmask(allocate_bitmask(1, tokenizer.vocab_size), [constraint])
        logits = torch.randn(1, tokenizer.vocab_size, generator=gen) * 3
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
        pytest.fail("the constraint did not end the answer")
    return tokenizer.decode(ids)


def read_calls(text: str, syntax=FALLBACK_SYNTAX) -> tuple[str, list[dict]]:
    parser = ToolCallParser(syntax)
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if e.kind == "content")
    return content, parser.calls


def assert_valid(calls: list[dict], names=SCHEMAS) -> None:
    assert calls
    for call in calls:
        assert call["name"] in names
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


@pytest.mark.parametrize("seed", range(6))
def test_required_forces_a_valid_call(tokenizer, seed):
    spec = ToolCallSpec(FUNCTIONS, mode="required", is_parallel=False)
    text = generate(tokenizer, constraint_for_tools(tokenizer, spec), seed)
    content, calls = read_calls(text)
    assert content == ""
    assert len(calls) == 1
    assert_valid(calls)


def test_required_parallel_takes_several_calls_and_nothing_else(tokenizer):
    spec = ToolCallSpec(FUNCTIONS, mode="required", is_parallel=True)
    constraint = constraint_for_tools(tokenizer, spec)
    one = '<tool_call>{"name":"set_timer","arguments":{"minutes":5}}</tool_call>'
    assert all(constraint.accept_token(t) for t in tokenizer.encode(one + "\n" + one))
    assert constraint.is_accepting()
    assert not constraint.accept_token(tokenizer.encode(" ")[0])  # no text around calls


@pytest.mark.parametrize("seed", range(4))
def test_a_named_function_is_the_only_call(tokenizer, seed):
    spec = ToolCallSpec(FUNCTIONS[1:], mode="required", is_parallel=False)
    _, calls = read_calls(generate(tokenizer, constraint_for_tools(tokenizer, spec), seed))
    assert [c["name"] for c in calls] == ["set_timer"]
    assert_valid(calls)


@pytest.mark.parametrize("seed", range(4))
def test_auto_constrains_a_call_once_the_text_opens_one(tokenizer, seed):
    spec = ToolCallSpec(FUNCTIONS, mode="auto", is_parallel=False)
    constraint = constraint_for_tools(tokenizer, spec)
    text = generate(tokenizer, constraint, seed, prefix="Let me see. <tool_call>")
    content, calls = read_calls(text)
    assert content == "Let me see. "
    assert len(calls) == 1  # parallel_tool_calls false: the answer ends with the call
    assert_valid(calls)
    assert constraint.is_terminated()


def test_auto_allows_a_plain_answer_and_refuses_a_broken_call(tokenizer):
    spec = ToolCallSpec(FUNCTIONS, mode="auto")
    constraint = constraint_for_tools(tokenizer, spec)
    assert all(constraint.accept_token(t) for t in tokenizer.encode("It is sunny."))
    assert constraint.is_accepting()
    constraint = constraint_for_tools(tokenizer, spec)
    ids = tokenizer.encode('<tool_call>{"name":"rm_rf"')
    assert not all(constraint.accept_token(t) for t in ids)


def test_parallel_auto_allows_calls_then_text(tokenizer):
    spec = ToolCallSpec(FUNCTIONS, mode="auto", is_parallel=True)
    constraint = constraint_for_tools(tokenizer, spec)
    two = (
        '<tool_call>{"name":"set_timer","arguments":{"minutes":5}}</tool_call>\n'
        '<tool_call>{"name":"get_weather","arguments":{"city":"Oslo","unit":"C"}}</tool_call>'
    )
    assert all(constraint.accept_token(t) for t in tokenizer.encode(two + " Done."))
    assert constraint.is_accepting()


@pytest.mark.parametrize("seed", range(3))
def test_none_never_opens_a_call(tokenizer, seed):
    spec = ToolCallSpec(FUNCTIONS, mode="none")
    constraint = constraint_for_tools(tokenizer, spec)
    ids = tokenizer.encode("Sure <tool_")
    assert all(constraint.accept_token(t) for t in ids)
    bias = torch.zeros(tokenizer.vocab_size)
    bias[tokenizer.encode("call>")[0]] = 50.0  # the model wants to open a call
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        bitmask = fill_bitmask(allocate_bitmask(1, tokenizer.vocab_size), [constraint])
        logits = torch.randn(1, tokenizer.vocab_size, generator=gen) + bias
        batch = SamplingBatch.build([SamplingParams(temperature=1.0)], [[]], [ids])
        token_id = int(sample(logits, batch, bitmask).token_ids)
        if token_id in tokenizer.eos_token_ids:
            break
        assert constraint.accept_token(token_id)
        ids.append(token_id)
    assert "<tool_call>" not in tokenizer.decode(ids)


@pytest.mark.parametrize("seed", range(3))
def test_a_native_syntax_is_constrained_too(tokenizer, seed):
    syntax = HERMES_SYNTAX  # Qwen2.5: the call on its own lines
    spec = ToolCallSpec(
        FUNCTIONS, mode="required", is_parallel=False, open=syntax.open, close=syntax.close
    )
    text = generate(tokenizer, constraint_for_tools(tokenizer, spec), seed)
    assert text.startswith("<tool_call>\n{") and text.endswith("}\n</tool_call>")
    _, calls = read_calls(text, syntax)
    assert_valid(calls)


def test_the_grammar_names_each_function_once(tokenizer):
    grammar = tool_call_grammar(ToolCallSpec(FUNCTIONS, mode="required"))
    assert grammar.count('"const": "get_weather"') == 1
    assert grammar.count('"const": "set_timer"') == 1
