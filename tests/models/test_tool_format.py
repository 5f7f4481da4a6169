"""The tool renderer (the model's own template when it takes tools, the documented fallback
otherwise) and the call parser, split at every character as a stream may split it."""

from __future__ import annotations

import json

import pytest

from ownllm.models.tiny import make_tokenizer
from ownllm.models.tokenizer import Tokenizer
from ownllm.models.tool_format import (
    FALLBACK_SYNTAX,
    HERMES_SYNTAX,
    LLAMA3_SYNTAX,
    ToolCallParser,
    call_syntax,
    render_conversation,
    template_takes_tools,
)

# A Qwen2.5-like template: tools in a system block, calls and results in its own tags.
QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>\n{%- for t in tools %}\n"
    "{{ t | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- elif m.tool_calls %}<|im_start|>assistant\n{%- for c in m.tool_calls %}<tool_call>\n"
    '{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}\n'
    "</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}  # fmt: skip
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
]


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("chatml")
    make_tokenizer(path)
    return Tokenizer.from_dir(path)


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("qwen-like")
    make_tokenizer(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = QWEN_LIKE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_dir(path)


def test_a_template_without_tools_gets_the_fallback(chatml):
    assert not template_takes_tools(chatml)
    assert call_syntax(chatml) is FALLBACK_SYNTAX
    text = render_conversation(chatml, HISTORY, TOOLS)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions.")
    assert '<tools>\n{"type":"function","function":{"name":"get_weather"' in system
    assert (
        '<|im_start|>assistant\n<tool_call>{"name":"get_weather","arguments":{"city":"Oslo"}}'
        "</tool_call><|im_end|>" in text
    )
    assert (
        '<|im_start|>user\n<tool_response>{"tool_call_id":"call_1","content":"-3 C"}'
        "</tool_response><|im_end|>" in text
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_the_fallback_adds_a_system_message_when_there_is_none(chatml):
    text = render_conversation(chatml, HISTORY[1:2], TOOLS)
    assert text.startswith("<|im_start|>system\nYou can call functions.")


def test_without_tools_a_chat_renders_as_before(chatml):
    messages = HISTORY[:2]
    assert render_conversation(chatml, messages) == chatml.render_chat(messages)


def test_a_template_that_takes_tools_renders_them_itself(qwen_like):
    assert template_takes_tools(qwen_like)
    assert call_syntax(qwen_like) is HERMES_SYNTAX
    text = render_conversation(qwen_like, HISTORY, TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools\n<tools>{")
    assert '"name": "get_weather"' in text  # the template's own tojson
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    )
    assert "<tool_response>\n-3 C\n</tool_response>" in text
    assert "You can call functions" not in text


STREAMS = [
    (FALLBACK_SYNTAX, 'Sure. <tool_call>{"name":"get_weather","arguments":{"city":"O}slo",'
     '"n":{"a":1}}}</tool_call>\n<tool_call>{"name":"b","arguments":{}}</tool_call>',
     "Sure. \n", [("get_weather", '{"city":"O}slo","n":{"a":1}}'), ("b", "{}")]),
    (HERMES_SYNTAX, '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
     "", [("f", '{"x": 1}')]),
    (LLAMA3_SYNTAX, '{"name": "f", "parameters": {"x": [1, 2]}}', "", [("f", '{"x": [1, 2]}')]),
    (FALLBACK_SYNTAX, "a < b <tool_ca, no call", "a < b <tool_ca, no call", []),
    (FALLBACK_SYNTAX, 'x <tool_call>{"name":"f","arguments":{"a":"b', "x ", [("f", '{"a":"b')]),
    (FALLBACK_SYNTAX, 'x <tool_call>{"na', 'x <tool_call>{"na', []),
]  # fmt: skip


@pytest.mark.parametrize(("syntax", "text", "content", "calls"), STREAMS)
def test_the_parser_reads_the_same_whatever_the_split(syntax, text, content, calls):
    for step in (1, 2, 3, 7, len(text)):
        parser = ToolCallParser(syntax)
        events = []
        for i in range(0, len(text), step):
            events += parser.feed(text[i : i + step])
        events += parser.finish()
        assert "".join(e.text for e in events if e.kind == "content") == content
        assert [(c["name"], c["arguments"]) for c in parser.calls] == calls
        # the streamed pieces add up to the calls: each name once, then its arguments
        names = [e.text for e in events if e.kind == "open"]
        assert names == [name for name, _ in calls]
        for k, (_, arguments) in enumerate(calls):
            streamed = "".join(e.text for e in events if e.kind == "arguments" and e.index == k)
            assert streamed == arguments
