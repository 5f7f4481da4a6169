"""Server start time: first start (dequantise + cache the shipped GGUF) vs later starts.

Starts `ownllm serve` on a fresh data dir and times process start → GET /ready = 200,
then restarts it on the same data dir (the cache) and times again. Prints both and
their ratio. Usage: python -m bench.startup [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.server import Server


def time_to_ready(data_dir: Path) -> float:
    start = time.perf_counter()
    server = Server(data_dir=data_dir)
    try:
        server.wait_ready(timeout=600)
        return time.perf_counter() - start
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    firsts, seconds = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            firsts.append(time_to_ready(Path(tmp)))
            seconds.append(time_to_ready(Path(tmp)))
    first, second = statistics.median(firsts), statistics.median(seconds)
    print(
        f"first start (dequantise + cache): median {first:.2f}s  runs {[round(x, 2) for x in firsts]}"
    )
    print(
        f"second start (from cache):        median {second:.2f}s  runs {[round(x, 2) for x in seconds]}"
    )
    print(f"ratio first/second: {first / second:.1f}x")


if __name__ == "__main__":
    main()
