"""The engine: requests in, token deltas out; `step()` = schedule → run → postprocess.

Thread model: `add_request`, `abort_request`, `load_adapter` and
`unload_adapter` may be called from any thread (the event loop); they
validate at once (raising the typed errors) and leave a command
(`ownllm.engine.messages`) in an inbox. `step()` runs on one engine thread: it
applies the inbox, then schedules, runs the model and samples. Everything the
scheduler touches is only ever touched by that thread; the host copies of
adapters (`host_adapters`) are shared and locked.

`quantization` (`model.quantization`, see `weights.load_weights`) keeps the base
weights quantised where the C kernels run; without them (no compiler, CUDA,
`engine.cpu_kernels = false`) the engine serves the same weights dequantised and
logs one line saying so.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ownllm.config import EngineConfig
from ownllm.engine.adapter_slots import AdapterSlots
from ownllm.engine.block_manager import BlockManager
from ownllm.engine.detokenizer import TokenTexts
from ownllm.engine.host_adapters import HostAdapters
from ownllm.engine.lora import LoraAdapter, LoraStacks
from ownllm.engine.messages import (
    AbortRequest,
    AddRequest,
    Delta,
    EngineCommand,
    EngineStats,
    EvictAdapter,
    GenerateRequest,
)
from ownllm.engine.model import Model
from ownllm.engine.model_runner import ModelRunner
from ownllm.engine.ops import CKernelOps, select_ops
from ownllm.engine.outputs import RequestState
from ownllm.engine.scheduler import Scheduler
from ownllm.engine.sequence import Sequence
from ownllm.engine.waiting import QueueBounds, WaitingWork
from ownllm.engine.weights import (
    ModelArgs,
    dequantise_all,
    load_weights,
    read_config,
    resolve_dtype,
)
from ownllm.errors import ContextLengthExceededError, InvalidRequestError

log = logging.getLogger("ownllm.engine")

MAX_STACKED_ADAPTERS = 4
MIN_HOST_ADAPTERS = 8  # host copies kept: twice the LoRA slots, at least this many
CPU_KV_CACHE_BYTES = 2 << 30  # default KV cache on CPU when kv_cache_tokens is 0
QUEUE_SEQS_PER_BATCH_SEQ = 8  # max_queue_seqs 0: eight full batches may wait
QUEUE_TOKENS_PER_KV_TOKEN = 4  # max_queue_tokens 0: four KV caches of worst-case work


@dataclass
class RequestOutput:
    request_id: str
    delta: Delta | None = None
    error: Exception | None = None


class LLMEngine:
    def __init__(
        self,
        model_dir: str | Path,
        config: EngineConfig,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        max_model_len: int = 0,
        adapter_resolver: Callable[[str], str | None] | None = None,
        tokenizer=None,
        quantization: str = "none",
    ) -> None:
        start = time.perf_counter()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.args: ModelArgs = read_config(Path(model_dir))
        self.dtype = resolve_dtype(dtype, device)
        ops = select_ops(
            self.args,
            self.dtype,
            self.device,
            config.cpu_kernels,
            int8_activations=config.quant_activations == "int8",
        )
        tensors = load_weights(Path(model_dir), quantization)
        self.quantization = _quantization(tensors)
        if self.quantization != "none" and not isinstance(ops, CKernelOps):
            log.warning(
                "model.quantization = %s needs the C kernels on CPU (here: %s on %s): "
                "serving the weights dequantised to %s",
                quantization,
                ops.describe(),
                self.device,
                str(self.dtype).removeprefix("torch."),
            )
            dequantise_all(tensors)
            self.quantization = "none"
        self.model = Model(self.args, tensors, self.dtype, self.device, ops)
        if tokenizer is None:
            from ownllm.models.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_dir(model_dir)
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len or self.args.max_position_embeddings
        num_blocks = self._num_kv_blocks()
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.adapter_slots = AdapterSlots(config.max_loras)
        self.scheduler = Scheduler(
            self.block_manager,
            self.adapter_slots,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            batch_step_tokens=config.batch_step_tokens,
            batch_tokens_with_interactive=config.batch_tokens_with_interactive,
            batch_full_after_steps=config.batch_full_after_steps,
        )
        self.lora = LoraStacks(self.args, config.max_loras, self.dtype, self.device)
        self.runner = ModelRunner(self.model, num_blocks, config.block_size, self.lora)
        self.host_adapters = HostAdapters(
            self._read_adapter, max(MIN_HOST_ADAPTERS, 2 * config.max_loras), adapter_resolver
        )
        self._inbox: deque[EngineCommand] = deque()
        self._requests: dict[str, RequestState] = {}
        self.waiting = WaitingWork(self._queue_bounds(num_blocks * config.block_size))
        self._token_texts = _token_texts(tokenizer)
        self.num_generated_tokens = 0
        self.busy_seconds = 0.0
        self._log_startup(time.perf_counter() - start)

    def _log_startup(self, seconds: float) -> None:
        """Two lines for the operator: how the model computes, and how much it can hold."""
        cfg, path = self.config, self.model.ops.describe()
        dtype = str(self.dtype).removeprefix("torch.")
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        threads = torch.get_num_threads()
        if self.quantization != "none":  # weights in a quantised type: say which
            dtype += f", weights {self.quantization}"
            if cfg.quant_activations == "int8":
                dtype += " times int8 activations"
        log.info(
            "built in %.1fs: dtype %s, device %s, %d threads, kernels %s",
            seconds,
            dtype,
            device,
            threads,
            path,
        )
        kv = self.runner.kv_caches
        bounds = self.waiting.bounds
        log.info(
            "KV cache %d tokens (%d blocks of %d, %.1f MiB), max_model_len %d, max_num_seqs %d; "
            "queue bounds %d requests, %d sequences, %d tokens",
            self.block_manager.num_blocks * cfg.block_size,
            self.block_manager.num_blocks,
            cfg.block_size,
            kv.numel() * kv.element_size() / 2**20,
            self.max_model_len,
            cfg.max_num_seqs,
            bounds.max_requests,
            bounds.max_seqs,
            bounds.max_tokens,
        )

    def _queue_bounds(self, kv_tokens: int) -> QueueBounds:
        """The configured queue bounds, with 0 sized from the batch and the KV cache."""
        cfg = self.config
        max_seqs = cfg.max_queue_seqs or QUEUE_SEQS_PER_BATCH_SEQ * cfg.max_num_seqs
        # at least one context, so any single-choice request the context admits can wait
        max_tokens = cfg.max_queue_tokens or max(
            QUEUE_TOKENS_PER_KV_TOKEN * kv_tokens, self.max_model_len
        )
        return QueueBounds(cfg.max_queue, max_seqs, max_tokens)

    # -- any thread -----------------------------------------------------------
    def add_request(self, request: GenerateRequest) -> None:
        """Validate `request` and queue it; raises the typed errors before any work."""
        sp = request.sampling
        prompt_len = len(request.prompt_token_ids)
        if prompt_len == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if sp.max_tokens < 1 or sp.n < 1:
            raise InvalidRequestError("max_tokens and n must be at least 1", param="max_tokens")
        if prompt_len + sp.max_tokens > self.max_model_len:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_len + sp.max_tokens} tokens ({prompt_len} in the prompt, "
                f"{sp.max_tokens} for the completion). Please reduce the length of the prompt "
                f"or of max_tokens.",
                param="messages",
            )
        if (
            max(request.prompt_token_ids) >= self.args.vocab_size
            or min(request.prompt_token_ids) < 0
        ):
            raise InvalidRequestError("the prompt has token ids outside the vocabulary")
        if len(request.adapters) > MAX_STACKED_ADAPTERS:
            raise InvalidRequestError(
                f"at most {MAX_STACKED_ADAPTERS} adapters can be stacked on one request"
            )
        for aw in request.adapters:
            self.host_adapters.get(aw.adapter_id)
        if request.request_id in self._requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        self.waiting.charge(request)  # 503 when the queue is full, 400 if it never fits
        self._inbox.append(AddRequest(request))

    def abort_request(self, request_id: str) -> None:
        self._inbox.append(AbortRequest(request_id))

    def load_adapter(self, adapter_id: str, path: str) -> None:
        """Register (or replace) adapter `adapter_id`, read from PEFT directory `path`."""
        self.host_adapters.register(adapter_id, path)
        self._inbox.append(EvictAdapter(adapter_id))

    def unload_adapter(self, adapter_id: str) -> None:
        self.host_adapters.unregister(adapter_id)  # ModelNotFoundError when unknown
        self._inbox.append(EvictAdapter(adapter_id))

    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.has_work

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=self.waiting.num_requests,
            waiting_seqs=self.waiting.num_seqs,
            waiting_tokens=self.waiting.num_tokens,
            kv_blocks_used=self.block_manager.num_used_blocks,
            kv_blocks_total=self.block_manager.num_blocks,
            resident_adapters=len(self.adapter_slots.key_to_slot),
            tokens_generated=self.num_generated_tokens,
            busy_seconds=self.busy_seconds,
        )

    # -- engine thread --------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One engine step: apply the inbox, schedule, run the model, sample, emit deltas."""
        start = time.perf_counter()
        outputs: list[RequestOutput] = []
        with torch.inference_mode():
            self._apply_inbox(outputs)
            sched = self.scheduler.schedule()
            for seq in sched.plan:
                self.waiting.release(seq.request_id)  # admitted: no longer queued
            self._load_slots(sched, outputs)
            if sched.plan:
                logits, sampling = self.runner.run(sched.plan)
                self.scheduler.on_step_done(sched)
                outputs += self._postprocess(logits, sampling)
        self.busy_seconds += time.perf_counter() - start
        return outputs

    def _state_of(self, seq: Sequence) -> RequestState:
        return self._requests[seq.request_id]

    def _apply_inbox(self, outputs: list[RequestOutput]) -> None:
        while self._inbox:
            match self._inbox.popleft():
                case AddRequest(request):
                    self._add(request)
                case AbortRequest(request_id):
                    self._abort(request_id, outputs)
                case EvictAdapter(adapter_id):
                    for key in self.adapter_slots.keys_with(adapter_id):
                        self.adapter_slots.discard(key)

    def _add(self, request: GenerateRequest) -> None:
        if request.request_id in self._requests:
            self.waiting.release(request.request_id)
            return  # add_request refused it already, unless two threads raced on one id
        key = tuple((a.adapter_id, float(a.weight)) for a in request.adapters)
        cache_key = repr((request.cache_scope, key)).encode()
        n = request.sampling.n
        seq = Sequence(
            request.request_id,
            request.prompt_token_ids,
            adapter_key=key,
            cache_key=cache_key,
            max_tokens=request.sampling.max_tokens,
            priority=request.priority,
            num_forks=n - 1,
        )
        self._requests[request.request_id] = RequestState(
            request, seq, self.tokenizer, self._token_texts, self.device
        )
        self.scheduler.add(seq)

    def _abort(self, request_id: str, outputs: list[RequestOutput]) -> None:
        self.waiting.release(request_id)
        state = self._requests.pop(request_id, None)
        if state is not None:
            for seq in state.unfinished():
                self.scheduler.finish(seq, "abort")
                outputs.append(RequestOutput(request_id, state.final_delta(seq, "abort")))

    def _load_slots(self, sched, outputs: list[RequestOutput]) -> None:
        for key, slot in sched.new_slots:
            try:
                parts = [(self.host_adapters.get(a), w) for a, w in key]
                self.lora.load_slot(slot, parts)
            except Exception as e:  # the adapter vanished or broke since it was validated
                for seq in [s for s in sched.plan if s.adapter_key == key]:
                    del sched.plan[seq]
                    state = self._requests.pop(seq.request_id, None)
                    if state is not None:
                        for s in state.unfinished():
                            self.scheduler.finish(s, "abort")
                        outputs.append(RequestOutput(seq.request_id, error=e))
                self.adapter_slots.discard(key)

    def _postprocess(self, logits: torch.Tensor, sampling: list[Sequence]) -> list[RequestOutput]:
        rows = list(range(len(sampling)))
        for row, seq in enumerate(list(sampling)):
            if seq.num_forks and seq.num_output_tokens == 0:
                for child in self._fork(seq):
                    sampling.append(child)
                    rows.append(row)
        if len(rows) != logits.shape[0]:
            logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
        states = [self._state_of(seq) for seq in sampling]
        sampled = RequestState.sample(logits, sampling, states, self.device)
        outputs = []
        for seq, state, (token_id, logprob) in zip(sampling, states, sampled):
            self.num_generated_tokens += 1
            seq.token_ids.append(token_id)
            delta = state.on_token(seq, token_id, logprob)
            if delta.finish_reason is not None:
                self.scheduler.finish(seq, delta.finish_reason)
                if not state.unfinished():
                    del self._requests[seq.request_id]
            outputs.append(RequestOutput(seq.request_id, delta))
        return outputs

    def _fork(self, parent: Sequence) -> list[Sequence]:
        """The other n - 1 choices of `parent`'s request, sharing its prompt blocks."""
        state = self._state_of(parent)
        children = []
        copies = []
        for _ in range(parent.num_forks):
            child = Sequence(
                parent.request_id,
                parent.token_ids,
                index=len(state.seqs),
                adapter_key=parent.adapter_key,
                cache_key=parent.cache_key,
                max_tokens=parent.max_tokens,
                priority=parent.priority,
            )
            state.add_choice(child)
            try:
                copies += self.block_manager.fork(parent, child)
            except MemoryError:
                self.scheduler.add(child)  # recomputed later, mostly from the prefix cache
                continue
            if child.adapter_key:
                child.lora_slot, _ = self.adapter_slots.acquire(child.adapter_key)
            self.scheduler.add_running(child)
            children.append(child)
        parent.num_forks = 0
        self.runner.copy_blocks(copies)
        return children

    def _read_adapter(self, adapter_id: str, path: str) -> LoraAdapter:
        return LoraAdapter.from_dir(adapter_id, path, self.args, self.config.max_lora_rank)

    def _num_kv_blocks(self) -> int:
        cfg, args = self.config, self.args
        bytes_per_token = (
            args.num_layers * 2 * args.num_kv_heads * args.head_dim * self.dtype.itemsize
        )
        tokens = cfg.kv_cache_tokens
        if not tokens:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = int(free * 0.8)
            else:
                budget = min(CPU_KV_CACHE_BYTES, _available_memory() // 4)
            tokens = min(budget // bytes_per_token, cfg.max_num_seqs * self.max_model_len)
        tokens = max(tokens, cfg.block_size)
        return -(-tokens // cfg.block_size)


def _quantization(tensors: dict) -> str:
    """The quantised types among the weights, "none" when all are dense ("q4_1+q8_0")."""
    from ownllm.formats.quant import QuantWeight

    types = sorted({t.qtype for t in tensors.values() if isinstance(t, QuantWeight)})
    return "+".join(types) or "none"


def _token_texts(tokenizer) -> TokenTexts | None:
    try:
        return TokenTexts(tokenizer)
    except Exception:  # a tokenizer without a tokenizers.Tokenizer inside: no token texts
        return None


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30
