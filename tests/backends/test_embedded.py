"""The embedded backend streams deltas from the engine thread and cleans up after clients."""

from __future__ import annotations

import asyncio
import time

import pytest

from ownllm.backends.base import AdapterWeight, Backend, GenerateRequest, SamplingParams
from ownllm.backends.embedded import EmbeddedBackend
from ownllm.config import EngineConfig
from ownllm.errors import ContextLengthExceededError, ModelNotFoundError
from tests.engine.tiny_models import hf_greedy, make_adapter, make_model

PROMPT = list(range(40, 59))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama"))


@pytest.fixture
async def backend(model_dir):
    backend = EmbeddedBackend(
        model_dir,
        "tiny",
        EngineConfig(kv_cache_tokens=2048, max_loras=2),
        dtype="float32",
        max_model_len=256,
    )
    await backend.start()
    yield backend
    await backend.shutdown()


def request(request_id: str, max_tokens: int = 10, **kwargs) -> GenerateRequest:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kwargs)
    return GenerateRequest(request_id, PROMPT, sampling)


async def test_streams_the_greedy_tokens_and_their_text(backend, model_dir):
    assert isinstance(backend, Backend)
    assert backend.model_info.id == "tiny" and backend.model_info.max_model_len == 256
    deltas = [d async for d in backend.generate(request("r"))]
    token_ids = [t for d in deltas for t in d.token_ids]
    assert token_ids == hf_greedy(model_dir, PROMPT, 10)
    assert "".join(d.text for d in deltas) == backend.tokenizer.decode(token_ids)
    assert deltas[-1].finish_reason == "length" and deltas[-1].num_output_tokens == 10
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert backend.stats().tokens_generated == 10


async def test_concurrent_requests_each_get_their_own_stream(backend, model_dir):
    async def collect(rid: str, n: int) -> list[int]:
        return [t async for d in backend.generate(request(rid, n)) for t in d.token_ids]

    results = await asyncio.gather(*(collect(f"r{i}", 4 + i) for i in range(5)))
    reference = hf_greedy(model_dir, PROMPT, 8)
    assert results == [reference[: 4 + i] for i in range(5)]


async def test_closing_the_iterator_aborts_and_frees_blocks(backend):
    stream = backend.generate(request("r", max_tokens=200))
    async for _ in stream:
        break
    await stream.aclose()
    deadline = time.monotonic() + 120  # the engine thread frees them at its next step
    while backend.stats().kv_blocks_used or backend.stats().running:
        assert time.monotonic() < deadline, backend.stats()
        await asyncio.sleep(0.01)


async def test_abort_ends_the_stream_with_abort(backend):
    stream = backend.generate(request("r", max_tokens=200))
    first = await stream.__anext__()
    assert first.finish_reason is None
    await backend.abort("r")
    rest = [d async for d in stream]
    assert rest[-1].finish_reason == "abort"


async def test_errors_are_raised_before_any_work(backend):
    with pytest.raises(ContextLengthExceededError):
        async for _ in backend.generate(request("long", max_tokens=250)):
            pass
    bad = request("lora")
    bad.adapters = (AdapterWeight("missing"),)
    with pytest.raises(ModelNotFoundError):
        async for _ in backend.generate(bad):
            pass
    assert backend.stats().running == 0


async def test_adapters_load_and_unload(backend, model_dir, tmp_path):
    path = make_adapter(model_dir, tmp_path / "a", r=4, seed=5)
    await backend.load_adapter("a", str(path))
    req = request("r")
    req.adapters = (AdapterWeight("a"),)
    tokens = [t async for d in backend.generate(req) for t in d.token_ids]
    assert tokens == hf_greedy(model_dir, PROMPT, 10, path)
    await backend.unload_adapter("a")
    req = request("r2")
    req.adapters = (AdapterWeight("a"),)
    with pytest.raises(ModelNotFoundError):
        async for _ in backend.generate(req):
            pass


async def test_stop_string_cuts_the_text_and_ends_with_stop(backend):
    full = "".join([d.text async for d in backend.generate(request("full", max_tokens=20))])
    stop = full[6:9]
    assert len(stop) == 3 and stop not in full[:8]
    deltas = [d async for d in backend.generate(request("cut", max_tokens=20, stop=(stop,)))]
    assert "".join(d.text for d in deltas) == full[: full.index(stop)]
    assert deltas[-1].finish_reason == "stop"
