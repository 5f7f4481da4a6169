"""The embedded backend: the in-process torch engine behind the async Backend protocol.

The engine's step loop runs on one background thread. Each request gets an
asyncio queue; the thread hands outputs to the event loop with
`loop.call_soon_threadsafe`. Closing a request's iterator early (the client
went away) aborts it, and the engine frees its KV blocks on its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ownllm.backends.base import Delta, EngineStats, GenerateRequest, ModelInfo
from ownllm.config import EngineConfig
from ownllm.errors import InvalidRequestError, ServerError


class EmbeddedBackend:
    """Serves one base model (plus LoRA adapters) with `ownllm.engine` in this process."""

    uses_token_constraints = True

    def may_leave_premises(self, tenant_id: str, model: str) -> bool:
        return False  # the engine runs in this process

    def __init__(
        self,
        model_dir: Path,
        model_id: str,
        engine_config: EngineConfig,
        dtype: str = "auto",
        device: str = "cpu",
        max_model_len: int = 0,
        adapter_resolver: Callable[[str], str | None] | None = None,
        weights_sha256: str = "",
        quantization: str = "none",
    ) -> None:
        from ownllm.engine.llm_engine import LLMEngine

        self.engine = LLMEngine(
            model_dir,
            engine_config,
            dtype=dtype,
            device=device,
            max_model_len=max_model_len,
            adapter_resolver=adapter_resolver,
            quantization=quantization,
        )
        args = self.engine.args
        self._model_info = ModelInfo(
            id=model_id,
            max_model_len=self.engine.max_model_len,
            vocab_size=args.vocab_size,
            dtype=str(self.engine.dtype).removeprefix("torch."),
            architecture=args.architecture,
            weights_sha256=weights_sha256,
        )
        self._queues: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._failure: BaseException | None = None

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ownllm-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for request_id, queue in self._queues.items():
            queue.put_nowait(("error", ServerError(f"request {request_id}: the engine stopped")))

    async def health(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._failure is None

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._thread is None:
            await self.start()
        if self._failure is not None:
            raise ServerError(f"the engine has stopped after an error: {self._failure}")
        if request.request_id in self._queues:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request.request_id] = queue  # before the engine can answer
        try:
            if request.adapters:  # may read adapter files from disk: keep the loop free
                await asyncio.to_thread(self.engine.add_request, request)
            else:
                self.engine.add_request(request)  # raises before any work is done
        except BaseException:
            self._queues.pop(request.request_id, None)
            raise
        self._wake.set()
        remaining = request.sampling.n
        try:
            while remaining:
                kind, item = await queue.get()
                if kind == "error":
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            self._queues.pop(request.request_id, None)
            if remaining:
                self.engine.abort_request(request.request_id)
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self.engine.abort_request(request_id)
        self._wake.set()

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        await asyncio.to_thread(self.engine.load_adapter, adapter_id, path)
        self._wake.set()

    async def unload_adapter(self, adapter_id: str) -> None:
        self.engine.unload_adapter(adapter_id)
        self._wake.set()

    # -- engine thread --------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            if not engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except BaseException as e:  # a bug or OOM: fail every request, stop stepping
                self._failure = e
                self._loop.call_soon_threadsafe(self._fail_all, e)
                return
            if outputs:
                self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list) -> None:
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is None:
                continue  # the caller went away; the engine has been told to abort
            if out.error is not None:
                queue.put_nowait(("error", out.error))
            else:
                queue.put_nowait(("delta", out.delta))

    def _fail_all(self, error: BaseException) -> None:
        for request_id, queue in self._queues.items():
            queue.put_nowait(("error", ServerError(f"request {request_id}: engine error: {error}")))
