"""Quick throughput check of the embedded engine (not the full benchmark suite).

    .venv/bin/python bench/engine_throughput.py [--model DIR] [--dtype auto] [--scenario all]

Scenarios: `single` (one stream), `batch` (64 requests on the base model),
`lora` (64 requests over 16 random rank-8 adapters on q,k,v,o). Prints
decode tok/s and the share of the matmul roofline (2 * params * tok/s over
the measured matmul FLOP/s of this machine in that dtype).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
from ownllm.config import EngineConfig
from ownllm.engine.llm_engine import LLMEngine


def default_model_dir() -> Path:
    from ownllm.models import prepare_model, resolve_model

    home = Path(tempfile.gettempdir()) / "engine_bench"
    return prepare_model(resolve_model("smollm2-135m-instruct"), home).path


def model_params(a) -> int:
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    layer = (
        a.hidden_size * (q + 2 * kv) + q * a.hidden_size + 3 * a.hidden_size * a.intermediate_size
    )
    embed = a.vocab_size * a.hidden_size
    return a.num_layers * layer + embed * (1 if a.tie_word_embeddings else 2)


def matmul_flops(dtype: torch.dtype) -> float:
    a = torch.randn(512, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    return 2 * 512 * 2048 * 2048 * n / (time.perf_counter() - start)


def make_adapters(model_dir: Path, out: Path, count: int, rank: int) -> list[str]:
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads) * hidden // heads
    shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv)}
    shapes["o_proj"] = (hidden, hidden)
    paths = []
    for i in range(count):
        path = out / f"adapter{i}"
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer in range(config["num_hidden_layers"]):
            for name, (fan_in, fan_out) in shapes.items():
                key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in) * 0.01
                tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank) * 0.01
        save_file(tensors, str(path / "adapter_model.safetensors"))
        cfg = {"r": rank, "lora_alpha": 2 * rank, "target_modules": list(shapes)}
        (path / "adapter_config.json").write_text(json.dumps(cfg))
        paths.append(str(path))
    return paths


def run(engine: LLMEngine, requests: list[GenerateRequest]) -> tuple[float, float, int]:
    """Decode tok/s after every request has its first token: (per wall second, per CPU
    second of this process, tokens). CPU time stays meaningful on a busy machine."""
    for r in requests:
        engine.add_request(r)
    tokens, decode_tokens, wall, cpu = 0, 0, 0.0, 0.0
    started: set[str] = set()
    while engine.has_work():
        t, c = time.perf_counter(), time.process_time()
        outputs = engine.step()
        if len(started) == len(requests):
            wall += time.perf_counter() - t
            cpu += time.process_time() - c
            decode_tokens += len(outputs)
        tokens += len(outputs)
        started.update(o.request_id for o in outputs)
    return decode_tokens / max(wall, 1e-9), decode_tokens / max(cpu, 1e-9), tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--scenario", default="all", choices=("all", "single", "batch", "lora"))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    config = EngineConfig(max_num_seqs=64, max_num_batched_tokens=1024, kv_cache_tokens=32768)
    engine = LLMEngine(model_dir, config, dtype=args.dtype)
    params = model_params(engine.args)
    flops = matmul_flops(engine.dtype)
    print(
        f"model {model_dir.name}: {params / 1e6:.0f}M params, {engine.dtype}, "
        f"matmul {flops / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads"
    )
    prompt = engine.tokenizer.encode("Write a short story about a robot who learns to paint.")
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    run(engine, [GenerateRequest("warmup", prompt, SamplingParams(max_tokens=4))])

    def report(name: str, per_wall: float, per_cpu: float, tokens: int) -> None:
        roofline = 2 * params * per_wall / flops
        print(
            f"{name:>8}: decode {per_wall:7.1f} tok/s wall ({roofline:.0%} of matmul roofline), "
            f"{per_cpu:7.1f} tok per CPU-second; {tokens} tokens"
        )

    if args.scenario in ("all", "single"):
        report("single", *run(engine, [GenerateRequest("s", prompt, greedy)]))
    if args.scenario in ("all", "batch"):
        reqs = [GenerateRequest(f"b{i}", prompt + [i + 10], greedy) for i in range(64)]
        report("batch64", *run(engine, reqs))
    if args.scenario in ("all", "lora"):
        with tempfile.TemporaryDirectory() as tmp:
            for i, path in enumerate(make_adapters(model_dir, Path(tmp), 16, 8)):
                engine.load_adapter(f"a{i}", path)
            reqs = [
                GenerateRequest(
                    f"l{i}", prompt + [i + 10], greedy, adapters=(AdapterWeight(f"a{i % 16}"),)
                )
                for i in range(64)
            ]
            report("lora64", *run(engine, reqs))


if __name__ == "__main__":
    main()
