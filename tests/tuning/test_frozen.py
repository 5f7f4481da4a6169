"""Training LoRA on a quantised frozen base (QLoRA-style): the formats, the matmul, the loop."""

import shutil

import pytest
import torch

from ownllm.engine.weights import WeightsError, load_tensors, read_config
from ownllm.formats.peft import PeftAdapter, modules_of, write_adapter
from ownllm.formats.quant import QUANT_FILE, QuantWeight, dequantize, quantize, save_quant_file
from ownllm.models.tokenizer import Tokenizer
from ownllm.tuning.data import read_examples, tokenize
from ownllm.tuning.frozen import frozen_linear, load_quantized_base
from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
from ownllm.tuning.model import TrainableModel, pack
from ownllm.tuning.trainer import Trainer, TrainSettings, evaluate
from tests.tuning.conftest import REPLY

KINDS = ("int8", "q8_0", "q4_0", "q4_1")


def _matrix(out=48, n=96, seed=0) -> torch.Tensor:
    return torch.randn(out, n, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_linear_matches_a_dequantised_matmul_and_keeps_no_copy(kind):
    q = quantize(_matrix(), kind)
    x = torch.randn(5, 96, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = frozen_linear(x, q)
    reference = x.detach().clone().requires_grad_()
    expected = reference @ dequantize(q).T
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
            assert isinstance(getattr(layer, name), QuantWeight), name
    tensors = load_tensors(learnable_model_dir)
    att = "layers.0.self_attn."
    qkv = torch.cat([tensors[att + p + "_proj.weight"] for p in "qkv"])
    # fused in q, k, v order
    assert torch.equal(dequantize(base.layers[0].qkv), dequantize(quantize(qkv, "q4_1")))


def test_a_gguf_caches_own_blocks_are_the_base_not_a_requantisation(learnable_model_dir, tmp_path):
    """A cache built from a GGUF file holds its blocks in quant.blocks: q4_1 training
    uses them as they are; another type quantises the dense weights."""
    model = tmp_path / "cache"
    shutil.copytree(learnable_model_dir, model)
    dense = load_tensors(model)
    name = "layers.0.mlp.down_proj.weight"
    # blocks that differ from what quantising the dense weights would give: a marked file
    own = {f"model.{name}": quantize(dense[name] * 2, "q4_1")}
    save_quant_file(model / QUANT_FILE, own)
    args = read_config(model)
    q4 = load_quantized_base(args, model, "q4_1", torch.float32).layers[0].down
    assert torch.equal(q4.data, own[f"model.{name}"].data)
    int8 = load_quantized_base(args, model, "int8", torch.float32).layers[0].down
    assert torch.equal(dequantize(int8), dequantize(quantize(dense[name], "int8")))
    # the dense path never reads the blocks file as weights
    base = load_quantized_base(args, model, "q8_0", torch.float32)
    assert base.layers[0].down.qtype == "q8_0" and base.embed.dtype == torch.float32


def test_a_base_whose_rows_are_not_whole_blocks_is_refused_by_name(tmp_path):
    from ownllm.models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "m", hidden_size=48, num_heads=4, num_kv_heads=2)
    with pytest.raises(WeightsError, match="cannot train on a q4_1 base"):
        load_quantized_base(read_config(model), model, "q4_1", torch.float32)
    assert load_quantized_base(read_config(model), model, "int8", torch.float32).layers


@pytest.mark.parametrize("kind", ["q4_1"])
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
