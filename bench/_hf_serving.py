"""The baselines in-process: HF transformers `generate` (+ PEFT), llama-cpp-python, and
the drivers that turn a workload into a `Trace` for them and for ownllm's engine.

HF is served the way people serve it without an inference server: a loop that
takes the requests that have arrived, makes one static batch (left-padded, run
to the longest `max_tokens` in it, EOS ignored) and starts the next batch when it
is done. `grouped` batches only requests that share an adapter (one PEFT adapter
active at a time, the common setup); `mixed` puts every arrived request in one
batch with PEFT's `adapter_names` (its strongest multi-adapter mode). A
LogitsProcessor stamps the time of every decoding step, which is when each row's
token of that step exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bench._engine_common import Req, Trace

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class _StepClock:
    """A LogitsProcessor that records when each generation step produced its logits."""

    def __init__(self, origin: float) -> None:
        self.origin, self.times = origin, []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter() - self.origin)
        return scores


def load_hf(model: Path, dtype: torch.dtype, adapters: list[Path] = ()):
    """The base model in `dtype`, wrapped in PEFT with adapters a0..aN-1 when given."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype).eval()
    hf.generation_config.temperature = hf.generation_config.top_p = None
    if not adapters:
        return hf
    from peft import PeftModel

    peft = PeftModel.from_pretrained(hf, str(adapters[0]), adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        peft.load_adapter(str(path), adapter_name=f"a{i}")
    return peft.eval()


def _generate(model, batch: list[Req], mode: str, pad_id: int, origin: float) -> list[float]:
    width = max(len(r.prompt_ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, r in enumerate(batch):
        ids[row, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[row, width - len(r.prompt_ids) :] = 1
    new = max(r.max_tokens for r in batch)
    clock = _StepClock(origin)
    kwargs = dict(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=pad_id,
        logits_processor=[clock],
    )
    with torch.inference_mode():
        if mode == "mixed":
            names = [BASE if r.adapter is None else f"a{r.adapter}" for r in batch]
            model.generate(**kwargs, adapter_names=names)
        elif mode == "grouped" and batch[0].adapter is not None:
            model.set_adapter(f"a{batch[0].adapter}")
            model.generate(**kwargs)
        elif mode == "grouped":
            with model.disable_adapter():
                model.generate(**kwargs)
        else:
            model.generate(**kwargs)
    return clock.times


def run_hf(model, reqs: list[Req], mode: str = "plain", max_batch: int = 64, pad_id: int = 2):
    """Serve `reqs` with static batches (`plain`: no PEFT, `grouped` or `mixed`; see the
    module docstring); tokens beyond a request's own max_tokens are computed but not
    counted."""
    pending = sorted(reqs, key=lambda r: r.arrival)
    queue: list[Req] = []
    trace = Trace(arrivals={r.request_id: r.arrival for r in reqs})
    origin = time.perf_counter()
    while pending or queue:
        now = time.perf_counter() - origin
        while pending and pending[0].arrival <= now:
            queue.append(pending.pop(0))
        if not queue:
            time.sleep(max(0.0, pending[0].arrival - now))
            continue
        if mode == "grouped":
            batch = [r for r in queue if r.adapter == queue[0].adapter][:max_batch]
        else:
            batch = queue[:max_batch]
        queue = [r for r in queue if r not in batch]
        times = _generate(model, batch, mode, pad_id, origin)
        for r in batch:
            trace.tokens[r.request_id] = times[: r.max_tokens]
    return trace


def run_engine(engine, reqs: list[Req], adapter_ids: list[str] = ()) -> Trace:
    """Drive ownllm's LLMEngine step by step, adding each request at its arrival time."""
    from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams

    pending = sorted(reqs, key=lambda r: r.arrival)
    trace = Trace(arrivals={r.request_id: r.arrival for r in reqs})
    origin = time.perf_counter()
    while pending or engine.has_work():
        now = time.perf_counter() - origin
        while pending and pending[0].arrival <= now:
            r = pending.pop(0)
            adapters = () if r.adapter is None else (AdapterWeight(adapter_ids[r.adapter]),)
            sampling = SamplingParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True)
            engine.add_request(GenerateRequest(r.request_id, r.prompt_ids, sampling, adapters))
        if not engine.has_work():
            time.sleep(max(0.0, pending[0].arrival - now))
            continue
        outputs = engine.step()
        t = time.perf_counter() - origin
        for out in outputs:
            if out.error is not None:
                raise out.error
            if out.delta is not None and out.delta.token_ids:
                trace.add(out.request_id, t, len(out.delta.token_ids))
    return trace


def load_llama_cpp(gguf: Path, n_ctx: int = 1024):
    from llama_cpp import Llama

    return Llama(
        model_path=str(gguf),
        n_ctx=n_ctx,
        n_threads=torch.get_num_threads(),
        n_threads_batch=torch.get_num_threads(),
        verbose=False,
    )


def run_llama_cpp(llm, req: Req) -> Trace:
    """One greedy stream through llama.cpp (EOS ignored: the raw token generator)."""
    trace = Trace(arrivals={req.request_id: 0.0})
    origin = time.perf_counter()
    llm.reset()
    for n, _ in enumerate(llm.generate(req.prompt_ids, temp=0.0, reset=True), start=1):
        trace.add(req.request_id, time.perf_counter() - origin)
        if n >= req.max_tokens:
            break
    return trace
