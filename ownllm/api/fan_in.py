"""Run one call's prompts on the backend and merge their deltas into one stream.

A chat call has one prompt; a legacy completions call may have several (`prompt` as a
list), each with `n` choices. Every prompt becomes one `GenerateRequest`, pumped by its own
task into one queue, so the caller sees a single async stream of deltas whose `index` is
the OpenAI choice index (`prompt_number * n + choice`).

`close()` always runs: it cancels the pumps, which closes the backend iterators (the
backend aborts those requests and frees their slots), and tells the backend to abort any
request that had not finished, in case a pump was still waiting to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ownllm.backends.base import Delta, GenerateRequest

_DONE = object()


class ClientGoneError(Exception):
    """The client disconnected before the response was complete."""


class Generation:
    """The running backend requests of one call."""

    def __init__(self, backend: Any, requests: list[GenerateRequest]) -> None:
        self.backend = backend
        self.requests = requests
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._unfinished = {r.request_id for r in requests}  # not finished in the backend
        self._num_streaming = len(requests)  # not finished in the queue
        self._first: Any = None

    def submit(self) -> None:
        """Hand every request to the backend (each is pumped by a task of its own)."""
        if not self._tasks:
            for k, request in enumerate(self.requests):
                self._tasks.append(asyncio.create_task(self._pump(k, request)))

    async def start(self) -> None:
        """Submit every request (unless `submit` did) and wait for the first delta.

        Errors the backend raises before any work (context too long, queue full, unknown
        adapter) are raised here, before the HTTP response has started.
        """
        self.submit()
        self._first = await self._next()

    def stop(self, error: BaseException) -> None:
        """End the stream with `error` (e.g. ClientGoneError from a disconnect watcher)."""
        self._queue.put_nowait(error)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Every delta of every request, the first one (read by `start`) included."""
        item = self._first
        while item is not _DONE:
            yield item
            item = await self._next()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for request_id in self._unfinished:
            await self.backend.abort(request_id)
        self._unfinished.clear()

    async def _next(self) -> Any:
        """The next delta, _DONE when every request has finished; raises a request's error."""
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is _DONE:
                self._num_streaming -= 1
                if not self._num_streaming:
                    return _DONE
                continue
            return item

    async def _pump(self, k: int, request: GenerateRequest) -> None:
        n = request.sampling.n
        try:
            async for delta in self.backend.generate(request):
                delta.index += k * n
                self._queue.put_nowait(delta)
        except Exception as e:  # handed to the consumer, which raises it
            self._queue.put_nowait(e)
            return
        self._unfinished.discard(request.request_id)
        self._queue.put_nowait(_DONE)
