"""ScriptedBackend: a real Backend whose output is its script, with the cues tests and
benchmarks set (delay, abort, errors on cue, a gate held by the caller)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ownllm.backends.base import Backend, GenerateRequest, SamplingParams
from ownllm.backends.scripted import COUNTING, ScriptedBackend, counting_backend, reply
from ownllm.errors import OverloadedError


def request(max_tokens: int = 3, **sampling) -> GenerateRequest:
    return GenerateRequest("r1", [1, 2], SamplingParams(max_tokens=max_tokens, **sampling))


async def run(backend: ScriptedBackend, req: GenerateRequest) -> list:
    return [delta async for delta in backend.generate(req)]


def test_it_is_a_backend():
    assert isinstance(ScriptedBackend(), Backend)
    assert counting_backend().model_info.max_model_len == 4096


async def test_greeting_labels_choices_and_ends_at_max_tokens():
    deltas = await run(ScriptedBackend(), request(n=2))
    texts = {i: "".join(d.text for d in deltas if d.index == i) for i in (0, 1)}
    assert texts == {0: "Hello there,", 1: "1:Hello there,"}
    assert [d.finish_reason for d in deltas[-2:]] == ["length", "length"]
    assert deltas[-1].num_output_tokens == 3 and deltas[-1].num_prompt_tokens == 2


async def test_a_stop_string_ends_the_choice_before_it():
    deltas = await run(ScriptedBackend(), request(max_tokens=9, stop=["!"]))
    assert "".join(d.text for d in deltas) == "Hello there, friend"
    assert deltas[-1].finish_reason == "stop"


async def test_counting_and_reply_scripts():
    counted = await run(ScriptedBackend(COUNTING), request())
    assert [(d.text, d.token_ids) for d in counted] == [("tok0 ", [100]), ("tok1 ", [101]),
                                                       ("tok2 ", [102])]  # fmt: skip
    replied = await run(ScriptedBackend(reply("hey")), request(max_tokens=64))
    assert "".join(d.text for d in replied) == "hey" and replied[-1].finish_reason == "stop"


async def test_abort_after_error_and_records():
    backend = ScriptedBackend(abort_after=2)
    deltas = await run(backend, request(max_tokens=5))
    assert [d.finish_reason for d in deltas] == [None, None, "abort"]
    assert deltas[-1].num_output_tokens == 2
    backend.error = OverloadedError("full")
    with pytest.raises(OverloadedError):
        await run(backend, request())
    assert len(backend.requests) == 1 and backend.running == set()
    assert backend.stats().tokens_generated == 2


async def test_the_gate_holds_every_token_after_the_first():
    backend = ScriptedBackend()
    backend.gate = threading.Semaphore(0)
    stream = backend.generate(request())
    first = await stream.__anext__()
    assert first.text == "Hello" and backend.running == {"r1"}
    second = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    assert not second.done()  # held until the caller releases it
    backend.gate.release()
    assert (await second).text == " there"
    await stream.aclose()
    assert backend.running == set()
