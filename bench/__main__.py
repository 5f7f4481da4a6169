"""`make bench` / `python -m bench [NAME ...]`: run the benchmarks, each in its own process.

Every benchmark runs its baseline in the same run and prints ratios; results
are written up by hand in bench/RESULTS.md with the command that produced them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    available = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
    names = argv or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; available: {', '.join(available)}")
        return 2
    status = 0
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        status |= subprocess.call([sys.executable, "-m", f"bench.{name}"])
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
