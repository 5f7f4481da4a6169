"""Server start time: first start (dequantise + cache the shipped GGUF) vs later starts.

Starts `ownllm serve` on a fresh data dir and times process start → GET /ready = 200,
then restarts it on the same data dir (the cache) and times again. Prints both and
their ratio. Usage: python -m bench.startup [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench._support import seconds_to_ready


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    firsts, seconds = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            firsts.append(seconds_to_ready(Path(tmp)))
            seconds.append(seconds_to_ready(Path(tmp)))
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
