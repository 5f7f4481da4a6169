"""The loop of a background worker inside `ownllm serve`: look for work, and when there was
none, wait for a wake-up or the poll interval, whichever comes first.

The batch worker and the eval worker are `PollingWorker`s; each supplies `step()` (one
look for work, True when it found some) and keeps its per-item tasks in `running`, which
`stop()` cancels with the loop. `drain()` works until nothing is left (tests, the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


class PollingWorker:
    name = "worker"  # the asyncio task's name and the log's

    def __init__(self, poll_interval_s: float) -> None:
        self.poll_interval_s = poll_interval_s
        self.running: dict[Any, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def step(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name=self.name)

    def wake(self) -> None:
        """New work was created: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Run until a step finds no work this worker can do and none of its tasks is
        running (work another worker holds aside)."""
        while True:
            has_worked = await self.step()
            if self.running:
                await asyncio.wait(list(self.running.values()))
            elif not has_worked:
                return

    async def _run_forever(self) -> None:
        while True:
            self._wake.clear()  # before the step: a wake during it is not lost
            try:
                has_worked = await self.step()
            except Exception:  # a database hiccup must not stop the worker
                log.exception("%s step failed", self.name)
                has_worked = False
            if not has_worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
