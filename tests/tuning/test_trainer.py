import torch

from ownllm.formats.peft import PeftAdapter, modules_of, write_adapter
from ownllm.models.tokenizer import Tokenizer
from ownllm.tuning.data import read_examples, tokenize
from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
from ownllm.tuning.model import TrainableModel, pack
from ownllm.tuning.trainer import Trainer, TrainSettings
from tests.tuning.conftest import REPLY


def _write_adapter(path, model: TrainableModel, cfg: LoraSettings) -> None:
    write_adapter(path, PeftAdapter(cfg.peft_config("tiny"), modules_of(model.lora_state())))


def _greedy(model: TrainableModel, tok: Tokenizer, user: str, max_new: int = 24) -> str:
    ids = tok.encode_chat([{"role": "user", "content": user}], add_generation_prompt=True)
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            batch = pack([(ids + out, [False] * (len(ids) + len(out)))])
            last = torch.tensor([len(ids) + len(out) - 1])
            token = int(model.logits(batch, last)[0].argmax())
            if token in tok.eos_token_ids:
                break
            out.append(token)
    return tok.decode(out) + ("<stop>" if token in tok.eos_token_ids else "")


def _train(model_dir, path, epochs=8, seed=0):
    tok = Tokenizer.from_dir(model_dir)
    data = tokenize(tok, read_examples(path), max_len=128)
    model = TrainableModel.from_dir(model_dir, LoraSettings(r=8, alpha=16))
    model.reset_lora(seed)
    settings = TrainSettings(hyper=Hyperparameters(epochs, 4, 10.0), seed=seed)
    return tok, model, Trainer(model, data, settings).run()


def test_tiny_model_learns_a_fixed_reply(learnable_model_dir, reply_file):
    tok, model, result = _train(learnable_model_dir, reply_file)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < 0.3 * first, (first, last)
    assert _greedy(model, tok, "a question it never saw") == REPLY + "<stop>"
    model.reset_lora(0)  # B = 0: the base model again
    assert _greedy(model, tok, "a question it never saw") != REPLY + "<stop>"


def test_same_seed_same_adapter(learnable_model_dir, reply_file):
    _, a, _ = _train(learnable_model_dir, reply_file, epochs=1, seed=3)
    _, b, _ = _train(learnable_model_dir, reply_file, epochs=1, seed=3)
    sa, sb = a.lora_state(), b.lora_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resuming_from_an_epoch_checkpoint_gives_the_uninterrupted_result(
    learnable_model_dir, reply_file
):
    tok = Tokenizer.from_dir(learnable_model_dir)
    data = tokenize(tok, read_examples(reply_file), max_len=128)

    def trainer(epochs):
        model = TrainableModel.from_dir(learnable_model_dir, LoraSettings(), dtype=torch.float32)
        model.reset_lora(0)
        return Trainer(model, data, TrainSettings(Hyperparameters(epochs, 4, 1.0), seed=0))

    whole = trainer(2)
    whole.run()
    first = trainer(2)
    first.settings.hyper = Hyperparameters(1, 4, 1.0)  # stop after epoch 1
    first.run()
    state = first.state()
    resumed = trainer(2)
    resumed.load_state(state)
    resumed.run()
    a, b = whole.model.lora_state(), resumed.model.lora_state()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_adapter_loads_in_peft_with_the_same_logits(learnable_model_dir, reply_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, trained, _ = _train(learnable_model_dir, reply_file, epochs=1)
    cfg = LoraSettings(r=8, alpha=16)
    _write_adapter(tmp_path / "adapter", trained, cfg)
    ours = TrainableModel.from_dir(learnable_model_dir, cfg, dtype=torch.float32)
    ours.load_lora_state(trained.lora_state())
    hf = AutoModelForCausalLM.from_pretrained(learnable_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = [1, 40, 41, 42, 43, 7, 9]
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([ids])).logits[0]
        got = ours.logits(pack([(ids, [True] * len(ids))]), torch.arange(len(ids)))
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # and the adapter is not a no-op
    ours.reset_lora(0)
    with torch.no_grad():
        plain = ours.logits(pack([(ids, [True] * len(ids))]), torch.arange(len(ids)))
    assert (plain - expected).abs().max() > 1e-2


def test_the_engine_serves_the_trained_adapter_with_the_training_forwards_logprobs(
    learnable_model_dir, reply_file, tmp_path
):
    from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    tok, trained, _ = _train(learnable_model_dir, reply_file, epochs=2)
    cfg = LoraSettings(r=8, alpha=16)
    _write_adapter(tmp_path / "adapter", trained, cfg)
    ours = TrainableModel.from_dir(learnable_model_dir, cfg, dtype=torch.float32)
    ours.load_lora_state(trained.lora_state())
    prompt = tok.encode_chat([{"role": "user", "content": "hi there"}])
    with torch.no_grad():
        batch = pack([(prompt, [False] * len(prompt))])
        expected = ours.logits(batch, torch.tensor([len(prompt) - 1]))[0].log_softmax(-1)

    engine = LLMEngine(learnable_model_dir, EngineConfig(kv_cache_tokens=1024), dtype="float32")
    engine.load_adapter("trained", str(tmp_path / "adapter"))
    sampling = SamplingParams(max_tokens=1, temperature=0, logprobs=5)
    engine.add_request(GenerateRequest("r1", prompt, sampling, (AdapterWeight("trained"),)))
    deltas = []
    while engine.has_work():
        deltas += [o.delta for o in engine.step() if o.delta is not None]
    (first,) = [lp for d in deltas for lp in (d.logprobs or [])]
    assert first.token_id == int(expected.argmax())
    for token_id, _, logprob in first.top:
        assert abs(logprob - float(expected[token_id])) < 1e-3
