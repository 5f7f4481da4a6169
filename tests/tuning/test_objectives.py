"""DPO on the tiny model: the reference is the starting model, the preferred answer gains."""

import math

import torch

from ownllm.models.tokenizer import Tokenizer
from ownllm.tuning.data import read_examples, tokenize
from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
from ownllm.tuning.model import TrainableModel, pack
from ownllm.tuning.objectives import Dpo, sequence_logps
from ownllm.tuning.preferences import read_pairs, tokenize_pairs
from ownllm.tuning.trainer import Trainer, TrainSettings
from tests.tuning.conftest import OTHER, PAIRS, REPLY, pair, write_jsonl

HELD_OUT = [pair(f"something new {i}", REPLY, OTHER) for i in range(10)]


def _pairs(tok, path):
    return tokenize_pairs(tok, read_pairs(path), max_len=128)


def _margin(model, data) -> float:
    """Mean log pi(preferred) - log pi(non-preferred) over `data`'s pairs."""
    model.eval()
    with torch.no_grad():
        logps = sequence_logps(model, data.pairs)
    return float((logps[:, 0] - logps[:, 1]).mean())


def _model(model_dir, seed=0):
    model = TrainableModel.from_dir(model_dir, LoraSettings(r=8, alpha=16), dtype=torch.float32)
    model.reset_lora(seed)
    return model


def _dpo(model, data, epochs, reference_is_base=True, lr_mult=1.0):
    settings = TrainSettings(hyper=Hyperparameters(epochs, 4, lr_mult, beta=0.1), seed=0)
    objective = Dpo(0.1, reference_is_base=reference_is_base)
    return Trainer(model, data, settings, objective=objective).run()


def test_dpo_raises_the_preferred_answers_margin_on_held_out_prompts(learnable_model_dir, tmp_path):
    tok = Tokenizer.from_dir(learnable_model_dir)
    data = _pairs(tok, write_jsonl(tmp_path / "pairs.jsonl", PAIRS))
    held_out = _pairs(tok, write_jsonl(tmp_path / "held.jsonl", HELD_OUT))
    model = _model(learnable_model_dir)
    before = _margin(model, held_out)
    result = _dpo(model, data, epochs=4)
    first, last = result.history[0], result.history[-1]
    # the first step's policy is the reference (B = 0): every reward is 0, loss ln 2
    assert abs(first["train_loss"] - math.log(2)) < 1e-5
    assert abs(first["train_reward_margin"]) < 1e-5
    assert last["train_loss"] < first["train_loss"]
    assert last["train_reward_margin"] > 0 and last["train_reward_accuracy"] == 1.0
    assert _margin(model, held_out) > before + 1.0, (before, _margin(model, held_out))


def test_the_base_with_adapters_disabled_is_the_reference(learnable_model_dir, tmp_path):
    model = _model(learnable_model_dir)
    ids = [1, 40, 41, 42, 43, 7, 9]
    batch = pack([(ids, [True] * len(ids))])
    with torch.no_grad():
        base = model.logits(batch)
        for lora in (m for modules in model.lora for m in modules.values()):
            for b in lora.b:
                b.normal_(0, 0.5)
        tuned = model.logits(batch)
        with model.adapters_disabled():
            off = model.logits(batch)
    assert (tuned - base).abs().max() > 1e-2
    assert torch.equal(off, base)
    assert torch.equal(model.logits(batch), tuned)  # on again after the block


def test_dpo_from_a_parent_adapter_uses_the_parent_as_reference(
    learnable_model_dir, reply_file, tmp_path
):
    tok = Tokenizer.from_dir(learnable_model_dir)
    sft = tokenize(tok, read_examples(reply_file), max_len=128)
    parent = _model(learnable_model_dir)
    Trainer(parent, sft, TrainSettings(Hyperparameters(4, 4, 10.0), seed=0)).run()
    # the pairs prefer OTHER, which the parent (tuned to answer REPLY) does not
    flipped = [pair(f"question {i}", OTHER, REPLY) for i in range(12)]
    data = _pairs(tok, write_jsonl(tmp_path / "pairs.jsonl", flipped))
    held = [pair(f"something new {i}", OTHER, REPLY) for i in range(10)]
    held_out = _pairs(tok, write_jsonl(tmp_path / "held.jsonl", held))
    model = _model(learnable_model_dir)
    parent_margin, base_margin = _margin(parent, held_out), _margin(model, held_out)
    assert parent_margin < base_margin  # the parent learned to prefer REPLY

    model.load_lora_state(parent.lora_state())
    result = _dpo(model, data, epochs=4, reference_is_base=False)
    # rewards are measured from the parent, so the first step starts at zero margin
    assert abs(result.history[0]["train_loss"] - math.log(2)) < 1e-5
    assert result.history[-1]["train_reward_margin"] > 0
    assert _margin(model, held_out) > parent_margin + 1.0

    # against the base instead, the parent's own preference shows in the first step
    model = _model(learnable_model_dir)
    model.load_lora_state(parent.lora_state())
    result = _dpo(model, data, epochs=1, reference_is_base=True)
    assert result.history[0]["train_reward_margin"] < -1e-3
