"""Training LoRA on a quantised frozen base (QLoRA-style): the formats, the matmul, the loop."""

import numpy as np
import pytest
import torch

from ownllm.engine.weights import WeightsError, load_tensors, read_config
from ownllm.formats.peft import PeftAdapter, modules_of, write_adapter
from ownllm.models.tokenizer import Tokenizer
from ownllm.tuning.data import read_examples, tokenize
from ownllm.tuning.frozen import QuantizedWeight, frozen_linear, load_quantized_base, quantize
from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
from ownllm.tuning.model import TrainableModel, pack
from ownllm.tuning.trainer import Trainer, TrainSettings, evaluate
from tests.tuning.conftest import REPLY

KINDS = ("int8", "q8_0", "q4_1")


def _matrix(out=48, n=96, seed=0) -> torch.Tensor:
    w = torch.randn(out, n, generator=torch.Generator().manual_seed(seed)) * 0.05
    w[3] = 0.0  # an all-zero row: scale 0 must not divide by zero
    w[5, :32] = 0.7  # a constant block: q4_1's scale is 0 there
    return w


def _gguf_blocks(q: QuantizedWeight) -> np.ndarray:
    """Our q8_0/q4_1 weight as GGUF block bytes (fp16 d [, fp16 m], then the codes)."""
    out, n = q.shape
    nb = n // 32
    if q.kind == "q8_0":
        d = q.scale.numpy().view(np.uint8).reshape(out, nb, 2)
        codes = q.data.numpy().view(np.uint8).reshape(out, nb, 32)
        return np.concatenate([d, codes], axis=-1).reshape(out, nb * 34)
    d = q.scale.numpy().view(np.uint8).reshape(out, nb, 2)
    m = q.offset.numpy().view(np.uint8).reshape(out, nb, 2)
    codes = q.data.numpy().reshape(out, nb, 16)
    return np.concatenate([d, m, codes], axis=-1).reshape(out, nb * 20)


@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
def test_block_types_are_ggufs_own_layout(kind):
    import gguf

    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_1": gguf.GGMLQuantizationType.Q4_1}
    q = quantize(_matrix(), kind)
    theirs = gguf.quants.dequantize(_gguf_blocks(q), qtype[kind])
    assert np.array_equal(q.dequantize().numpy(), np.asarray(theirs, dtype=np.float32))
    assert q.nbytes == _gguf_blocks(q).nbytes  # 34 or 20 bytes per 32 weights, as in GGUF


@pytest.mark.parametrize("kind", KINDS)
def test_dequantised_weights_are_within_half_a_step(kind):
    w = _matrix()
    q = quantize(w, kind)
    err = (q.dequantize() - w).abs()
    if kind == "int8":
        step = w.abs().amax(dim=1, keepdim=True) / 127
    else:
        blocks = w.view(w.shape[0], -1, 32)
        span = blocks.abs().amax(-1) * 2 if kind == "q8_0" else blocks.amax(-1) - blocks.amin(-1)
        levels = 254 if kind == "q8_0" else 15
        step = (span / levels).repeat_interleave(32, dim=1)
    # half a step, plus the fp16 rounding of the block's scale and minimum
    assert (err <= step / 2 + 2e-3 * w.abs().amax() + 1e-7).all(), err.max()
    assert torch.equal(q.dequantize()[3], torch.zeros(w.shape[1]))
    assert torch.allclose(q.dequantize()[5, :32], w[5, :32], atol=1e-3)


def test_block_types_refuse_rows_that_are_not_whole_blocks():
    with pytest.raises(WeightsError, match="multiple of 32"):
        quantize(torch.randn(4, 40), "q4_1")
    assert quantize(torch.randn(4, 40), "int8").dequantize().shape == (4, 40)


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_linear_matches_a_dequantised_matmul_and_keeps_no_copy(kind):
    q = quantize(_matrix(), kind)
    x = torch.randn(5, 96, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = frozen_linear(x, q)
    reference = x.detach().clone().requires_grad_()
    expected = reference @ q.dequantize().T
    assert torch.allclose(y, expected, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    assert torch.allclose(x.grad, reference.grad, atol=1e-6)
    assert saved == []  # the dequantised matrix is not kept for backward


def _train(model_dir, path, quantization, epochs=8):
    tok = Tokenizer.from_dir(model_dir)
    data = tokenize(tok, read_examples(path), max_len=128)
    cfg = LoraSettings(r=8, alpha=16, base_quantization=quantization)
    model = TrainableModel.from_dir(model_dir, cfg, dtype=torch.float32)
    model.reset_lora(0)
    result = Trainer(model, data, TrainSettings(Hyperparameters(epochs, 4, 10.0))).run()
    return tok, data, model, result


def test_quantised_base_keeps_only_the_quantised_form(learnable_model_dir):
    args = read_config(learnable_model_dir)
    base = load_quantized_base(args, learnable_model_dir, "q4_1", torch.float32)
    for layer in base.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            assert isinstance(getattr(layer, name), QuantizedWeight), name
    fused = base.layers[0].qkv.dequantize()
    tensors = load_tensors(learnable_model_dir)
    att = "layers.0.self_attn."
    qkv = torch.cat([tensors[att + p + "_proj.weight"] for p in "qkv"])
    assert torch.equal(fused, quantize(qkv, "q4_1").dequantize())  # fused in q, k, v order


@pytest.mark.parametrize("kind", ["q4_1", "int8"])
def test_tiny_model_learns_a_fixed_reply_on_a_quantised_base_and_the_engine_serves_it(
    kind, learnable_model_dir, reply_file, tmp_path
):
    from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    tok, data, model, result = _train(learnable_model_dir, reply_file, kind)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < 0.3 * first, (first, last)
    assert evaluate(model, data, 2048)["mean_token_accuracy"] > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)

    cfg = LoraSettings(r=8, alpha=16)
    write_adapter(
        tmp_path / "a", PeftAdapter(cfg.peft_config("tiny"), modules_of(model.lora_state()))
    )
    engine = LLMEngine(learnable_model_dir, EngineConfig(kv_cache_tokens=1024), dtype="float32")
    engine.load_adapter("q", str(tmp_path / "a"))
    prompt = tok.encode_chat([{"role": "user", "content": "a question it never saw"}])
    for request_id, adapters in (("adapted", (AdapterWeight("q"),)), ("base", ())):
        sampling = SamplingParams(max_tokens=24, temperature=0)
        engine.add_request(GenerateRequest(request_id, prompt, sampling, adapters))
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.delta.token_ids)
    # trained on the quantised base, served on the full-precision one: the reply holds
    assert tok.decode(out["adapted"]) == REPLY
    assert tok.decode(out["base"]) != REPLY


def test_a_quantised_base_gives_nearly_the_full_precision_loss(learnable_model_dir, reply_file):
    tok = Tokenizer.from_dir(learnable_model_dir)
    data = tokenize(tok, read_examples(reply_file), max_len=128)
    losses = {}
    for kind in ("none", *KINDS):
        cfg = LoraSettings(base_quantization=kind)
        model = TrainableModel.from_dir(learnable_model_dir, cfg, dtype=torch.float32)
        model.reset_lora(0)  # B = 0: the base alone
        losses[kind] = evaluate(model, data, 2048)["loss"]
    for kind in KINDS:
        assert losses[kind] != losses["none"]  # the base really is quantised
        assert abs(losses[kind] - losses["none"]) < 0.05 * losses["none"], losses
    batch = pack([(data.examples[0].input_ids, data.examples[0].labels_mask)])
    assert model.logits(batch).isfinite().all()
