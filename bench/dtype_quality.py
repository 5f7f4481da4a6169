"""What lower-precision weights cost in quality against fp32 on the shipped model.

Every system answers the same chat prompts. fp32 (ownllm's engine, float32 weights and
compute) generates a greedy continuation of up to 64 tokens for each; then, per system:
- teacher-forced: the system reads the prompt and fp32's continuation (prompt as one
  prefill, then one decode step per token, as it serves) and gives the next-token
  logits at every continuation position; we report the share of positions where its
  top-1 token equals fp32's, and the mean KL(fp32 || system) per token;
- greedy: the system's own greedy continuation, and how many tokens of it equal fp32's
  before the first divergence (a divergence is not an error, just another path).

Systems: ownllm's engine in bf16; the quantised weight types through `model.quantization`
where the engine has it (int8, q8_0, q4_1 and auto, served by the quantised kernels); the same
types as a reference (weights quantised, dequantised back to fp32, then the fp32 engine:
the weight error alone, without the kernels'); llama.cpp's own logits on the shipped GGUF
(llama-cpp-python, `logits_all=True`) at 1 and 2 threads. Pairs beside fp32: ownllm q4_1
against llama.cpp q4_1, and llama.cpp against itself across thread counts.

The shipped GGUF is itself Q4_1 (token embedding Q8_0), so "fp32" is the Q4_1 file
dequantised to fp32: q4_1 re-creates the file's own blocks, and int8/q8_0 re-quantise
already 4-bit weights. ownllm's int8/q8_0/q4_1 put every linear layer, the embedding and
the tied output head in that type (`model.quantization`); ownllm auto keeps the file's own
mix (the head in q8_0), the weights llama.cpp runs, so that is the pair to compare. The
reference quantises the decoder linear weights only.

`--kinds auto+i8` adds `engine.quant_activations = int8` to a kind: x rounded to int8
blocks for integer dot products, as llama.cpp does.

Usage: python -m bench.dtype_quality [--skip ownllm,reference,llama.cpp] [--threads N]
    [--prompts N] [--max-tokens N] [--kinds int8,q8_0,q4_1,auto,auto+i8]
    (fewer of each on a loaded box)
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ownllm.backends.base import GenerateRequest, SamplingParams
from ownllm.config import EngineConfig
from ownllm.engine.llm_engine import LLMEngine

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a LoRA adapter is in two sentences.",
    "List three uses of Python.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 times 23?",
    "Give me a name for a bakery.",
]
MAX_TOKENS = 64
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class System:
    """What the comparison needs of a system: teacher-forced logits and its own greedy."""

    name: str
    forced: Callable[[list[int], list[int]], torch.Tensor]  # (prompt, cont) -> [len(cont), V]
    greedy: Callable[[list[int]], list[int]]
    close: Callable[[], None] = lambda: None


# --- ownllm's engine ------------------------------------------------------------------------


def engine_system(name: str, engine: LLMEngine, eos: set[int]) -> System:
    def greedy(prompt: list[int]) -> list[int]:
        sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
        engine.add_request(GenerateRequest("g", prompt, sampling))
        out: list[int] = []
        while engine.has_work():
            for o in engine.step():
                out.extend(o.delta.token_ids)
        return out

    def forced(prompt: list[int], cont: list[int]) -> torch.Tensor:
        """The engine's step loop with its sampled token replaced by the teacher's."""
        captured: list[torch.Tensor] = []
        original = engine._postprocess

        def force(logits: torch.Tensor, sampling: list) -> list:
            captured.append(logits[0].float().clone())
            one_hot = torch.full_like(logits, float("-inf"))
            one_hot[0, cont[len(captured) - 1]] = 0.0
            return original(one_hot, sampling)

        engine._postprocess = force
        try:
            sampling = SamplingParams(max_tokens=len(cont), temperature=0, ignore_eos=True)
            engine.add_request(GenerateRequest("t", prompt, sampling))
            while engine.has_work():
                engine.step()
        finally:
            engine._postprocess = original
        return torch.stack(captured)

    return System(name, forced, greedy)


def new_engine(model_dir: Path, dtype: str, threads: int, quantization: str = "") -> LLMEngine:
    """`quantization` may end in +i8: `engine.quant_activations = int8` as well."""
    quantization, int8, _ = quantization.partition("+i8")
    config = EngineConfig(kv_cache_tokens=4096, threads=threads)
    if int8:
        config = EngineConfig(kv_cache_tokens=4096, threads=threads, quant_activations="int8")
    extra = {"quantization": quantization} if quantization else {}
    return LLMEngine(model_dir, config, dtype=dtype, **extra)


def engine_quantization() -> bool:
    """Whether this engine serves quantised weights (`model.quantization`)."""
    return "quantization" in inspect.signature(LLMEngine.__init__).parameters


# --- the reference: weights quantised and dequantised back, fp32 compute --------------------


def fake_quant(w: torch.Tensor, kind: str) -> torch.Tensor:
    """`w` [out, in] quantised to `kind` and back to float32 (`ownllm.formats.quant`)."""
    from ownllm.formats.quant import dequantize, quantize

    return dequantize(quantize(w, kind))


def dense_view(model_dir: Path, root: Path) -> Path:
    """`model_dir` without a GGUF cache's quantised blocks (links to the other files): the
    dense weights alone, whatever an engine's loader makes of quant.safetensors."""
    from ownllm.formats.quant import QUANT_FILE

    out = root / "dense"
    out.mkdir()
    for file in model_dir.iterdir():
        if file.name != QUANT_FILE and file.is_file():
            (out / file.name).symlink_to(file)
    return out


def reference_dir(model_dir: Path, kind: str, root: Path) -> Path:
    """A copy of `model_dir` whose decoder linear weights went through `fake_quant`."""
    from safetensors.torch import load_file, save_file

    from ownllm.formats.quant import QUANT_FILE

    out = root / f"ref-{kind}"
    out.mkdir()
    for file in model_dir.iterdir():
        if file.suffix != ".safetensors" and file.is_file():
            (out / file.name).symlink_to(file)
    for file in model_dir.glob("*.safetensors"):
        if file.name == QUANT_FILE:  # a GGUF cache's own blocks: not for the reference
            continue
        tensors = load_file(str(file))
        for key, t in tensors.items():
            if t.ndim == 2 and key.split(".")[-2] in LINEAR:
                tensors[key] = fake_quant(t, kind).to(t.dtype)
        save_file(tensors, str(out / file.name), metadata={"format": "pt"})
    return out


# --- llama.cpp ------------------------------------------------------------------------------


def llama_cpp_system(gguf_path: Path, threads: int, eos: set[int]) -> System:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=1024,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
    )

    def last_logits() -> torch.Tensor:
        return torch.from_numpy(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))

    def forced(prompt: list[int], cont: list[int]) -> torch.Tensor:
        llm.reset()
        llm.eval(prompt)  # one prefill, then one decode per token, as ownllm is driven
        rows = [last_logits()]
        for token in cont[:-1]:
            llm.eval([token])
            rows.append(last_logits())
        return torch.stack(rows)

    def greedy(prompt: list[int]) -> list[int]:
        llm.reset()
        llm.eval(prompt)
        out: list[int] = []
        while len(out) < MAX_TOKENS:
            token = int(last_logits().argmax())
            out.append(token)
            if token in eos:
                break
            llm.eval([token])
        return out

    return System(f"llama.cpp Q4_1 ({threads} thread{'s' * (threads > 1)})", forced, greedy)


# --- comparing ------------------------------------------------------------------------------


@dataclass
class Runs:
    """A system's teacher-forced log-probabilities and greedy continuations, per prompt."""

    name: str
    logprobs: list[torch.Tensor]
    greedy: list[list[int]]


def run(system: System, prompts: list[list[int]], conts: list[list[int]]) -> Runs:
    logprobs = [system.forced(p, c).log_softmax(-1) for p, c in zip(prompts, conts)]
    greedy = [system.greedy(p) for p in prompts]
    return Runs(system.name, logprobs, greedy)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(ref: Runs, other: Runs) -> dict[str, float]:
    agree, kls, prefix, identical = [], [], [], 0
    for lr, lo, gr, go in zip(ref.logprobs, other.logprobs, ref.greedy, other.greedy):
        v = min(lr.shape[-1], lo.shape[-1])  # llama.cpp's vocab may be padded
        lr, lo = lr[:, :v], lo[:, :v]
        agree.append((lr.argmax(-1) == lo.argmax(-1)).float().mean().item())
        kls.append((lr.exp() * (lr - lo)).sum(-1).mean().item())
        prefix.append(common_prefix(gr, go))
        identical += gr == go
    return {
        "top1": statistics.mean(agree),
        "kl": statistics.mean(kls),
        "prefix": statistics.mean(prefix),
        "identical": identical,
        "n": len(ref.greedy),
    }


def row(label: str, m: dict[str, float]) -> str:
    return (
        f"| {label} | {m['top1']:.1%} | {m['kl']:.5f} | {m['prefix']:.1f} | "
        f"{m['identical']}/{m['n']} |"
    )


def cpu_flags() -> str:
    words = (
        set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    )
    flags = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
    return " ".join(f for f in flags if f in words) or "none"


def main() -> None:
    from bench._engine_common import model_dir as shipped_dir
    from bench._engine_common import shipped_gguf

    global MAX_TOKENS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", default="", help="comma list of: ownllm,reference,llama.cpp")
    parser.add_argument("--threads", type=int, default=0, help="ownllm torch threads (0: all)")
    parser.add_argument("--model", help="a HF model directory (default: the shipped model)")
    parser.add_argument(
        "--quant-dtype", default="auto", help="compute dtype of ownllm's quantised systems"
    )
    parser.add_argument(
        "--kinds",
        default="int8,q8_0,q4_1,auto",
        help="ownllm's quantised systems: model.quantization values; KIND+i8 adds "
        "engine.quant_activations = int8 (x rounded to int8 blocks, llama.cpp's scheme)",
    )
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N prompts")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="per continuation")
    args = parser.parse_args()
    MAX_TOKENS = args.max_tokens
    skip = set(filter(None, args.skip.split(",")))
    print(f"CPU flags: {cpu_flags()}; load average {os.getloadavg()[0]:.2f} at start", flush=True)

    shipped = Path(args.model) if args.model else shipped_dir()
    if args.model:  # a small model to try the script on; no GGUF, so no llama.cpp
        skip |= {"llama.cpp"}
    scratch = tempfile.TemporaryDirectory()
    model = dense_view(shipped, Path(scratch.name))
    fp32_engine = new_engine(model, "float32", args.threads)
    tok = fp32_engine.tokenizer
    eos = set(tok.eos_token_ids)
    texts = PROMPTS[: args.prompts]
    prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in texts]
    fp32_system = engine_system("ownllm fp32", fp32_engine, eos)
    conts = [fp32_system.greedy(p) for p in prompts]
    fp32 = run(fp32_system, prompts, conts)
    del fp32_engine, fp32_system

    results: dict[str, Runs] = {}

    print(f"prompts: {len(texts)}, fp32 greedy continuations of up to {MAX_TOKENS} tokens")
    print(f"fp32 continuation lengths: {[len(c) for c in conts]}")
    print(
        "| system vs ownllm fp32 | top-1 agreement | mean KL (nats/token) | "
        "greedy-identical prefix (tokens) | fully identical |"
    )
    print("|---|---|---|---|---|", flush=True)

    def measure(system: System) -> None:
        results[system.name] = run(system, prompts, conts)
        print(row(system.name, compare(fp32, results[system.name])), flush=True)
        system.close()

    measure(engine_system("ownllm bf16", new_engine(model, "bfloat16", args.threads), eos))
    kinds = ("int8", "q8_0", "q4_1")
    if "ownllm" not in skip:
        served = engine_quantization()
        if not served:
            print("ownllm quantised serving: this engine has no quantization setting yet")
        # auto: the GGUF's own mix (q4_1 layers, the q8_0 embedding / tied head), which is
        # what llama.cpp runs; q4_1 puts the embedding and head in q4_1 as well
        for kind in args.kinds.split(",") if served else ():
            engine = new_engine(shipped, args.quant_dtype, args.threads, kind)
            measure(engine_system(f"ownllm {kind}", engine, eos))
    if "reference" not in skip:
        with tempfile.TemporaryDirectory() as root:
            for kind in kinds:
                ref_dir = reference_dir(model, kind, Path(root))
                engine = new_engine(ref_dir, "float32", args.threads)
                measure(engine_system(f"reference {kind} (dequantised, fp32)", engine, eos))
    if "llama.cpp" not in skip:
        try:
            for threads in (1, 2):
                measure(llama_cpp_system(shipped_gguf(), threads, eos))
        except ImportError:
            print("llama.cpp: llama-cpp-python is not installed (make bench-deps)")

    pairs = [
        ("ownllm auto", "llama.cpp Q4_1 (2 threads)"),
        ("ownllm auto", "llama.cpp Q4_1 (1 thread)"),
        ("ownllm auto+i8", "llama.cpp Q4_1 (1 thread)"),
        ("ownllm auto+i8", "ownllm auto"),
        ("ownllm q4_1", "llama.cpp Q4_1 (2 threads)"),
        ("ownllm q4_1", "llama.cpp Q4_1 (1 thread)"),
        ("reference q4_1 (dequantised, fp32)", "llama.cpp Q4_1 (2 threads)"),
        ("llama.cpp Q4_1 (1 thread)", "llama.cpp Q4_1 (2 threads)"),
    ]
    print(
        "\n| pair (teacher-forced on fp32's continuation) | top-1 agreement | mean KL | "
        "greedy-identical prefix | fully identical |"
    )
    print("|---|---|---|---|---|")
    for a, b in pairs:
        if a in results and b in results:
            print(row(f"{a} vs {b}", compare(results[a], results[b])))
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    scratch.cleanup()


if __name__ == "__main__":
    main()
