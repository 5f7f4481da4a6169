"""Measured capacity: the tokens per second one box serves when it is saturated.

`ownllm bench capacity` drives many concurrent requests through the served model's
backend and stores what it measured here, in `<data dir>/capacity.json` (a list of runs,
newest last): the model, dtype and device, the CPU's vector flags, the date, the request
shape, and tokens per second (prompt + completion, the unit `ownllm cost` sizes boxes
in). `ownllm cost --scenario` sizes boxes from the newest run of the served model.

Why not the ledger: under light load the engine's busy time measures single-stream
speed (one request decoding alone), which on a small model is a tenth of what the same
engine serves with sixty-four requests batched. No torch here.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CAPACITY_FILE = "capacity.json"
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")  # the ones the engine's speed follows


@dataclass(frozen=True)
class Capacity:
    """One saturated run: what it served, on what, and how fast."""

    model: str
    dtype: str
    device: str
    cpu_flags: str  # space-separated, from CPU_FLAGS; "none" when none is present
    measured_at: str  # UTC, ISO 8601
    tokens_per_s: float  # prompt + completion tokens per wall second
    output_tokens_per_s: float
    prompt_tokens: int
    output_tokens: int
    seconds: float
    requests: int
    concurrency: int
    input_tokens_per_request: int
    output_tokens_per_request: int
    machine: str = ""  # platform and core count
    source: str = "ownllm bench capacity"

    @property
    def date(self) -> str:
        return self.measured_at[:10]

    def describe(self) -> str:
        """One line: how it was measured."""
        return (
            f"measured saturated by `{self.source}` on {self.date}: {self.model} "
            f"{self.dtype} on {self.device}, CPU flags {self.cpu_flags}, {self.requests} "
            f"requests of {self.input_tokens_per_request} in + "
            f"{self.output_tokens_per_request} out, {self.concurrency} at once"
        )


def cpu_flags(cpuinfo: str | None = None) -> str:
    """The CPU's flags among CPU_FLAGS ("none" when it has none of them)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    present: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present |= set(line.partition(":")[2].split())
    return " ".join(f for f in CPU_FLAGS if f in present) or "none"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load(data_dir: Path) -> list[Capacity]:
    """Every stored run, oldest first (none when the file is missing or unreadable)."""
    path = Path(data_dir) / CAPACITY_FILE
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    names = {f.name for f in fields(Capacity)}
    runs = []
    for row in rows if isinstance(rows, list) else []:
        try:
            runs.append(Capacity(**{k: v for k, v in row.items() if k in names}))
        except (TypeError, AttributeError):
            continue  # a row of another version: skipped, not fatal
    return runs


def save(data_dir: Path, run: Capacity) -> Path:
    """Append `run` to the data dir's capacity file (written whole, then renamed)."""
    path = Path(data_dir) / CAPACITY_FILE
    rows = [asdict(r) for r in load(data_dir)] + [asdict(run)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CAPACITY_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def newest(runs: list[Capacity], model: str, dtype: str = "") -> Capacity | None:
    """The newest run of `model` (and `dtype` when given)."""
    for run in reversed(runs):
        if run.model == model and (not dtype or run.dtype == dtype):
            return run
    return None
