"""Run gateway "replicas" as separate processes that start together (spawn context)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable


def run_replicas(target: Callable, db_url: str, n: int, count: int = 2) -> list:
    """Start `count` processes of `target(db_url, start, results, n)`, release them at once,
    and return what each put on `results`."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(db_url, start, results, n)) for _ in range(count)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
    return [results.get(timeout=5) for _ in procs]
