"""Export: transformers and llama.cpp load what we write and answer like ownllm does."""

from __future__ import annotations

import json

import pytest
import torch

from ownllm.adapters.export import export_gguf, export_gguf_lora, export_hf
from ownllm.errors import InvalidRequestError
from ownllm.formats.peft import read_adapter
from tests.adapters.conftest import MAX_TOKENS, PROMPTS, engine_greedy, hf_greedy

MORE_PROMPTS = [*PROMPTS, [1, 50, 60, 70, 80], list(range(200, 232)), [9, 9, 9, 9]]


@pytest.fixture(scope="module")
def ownllm_output(tiny_model_dir, adapter_b):
    """ownllm's greedy continuations with adapter_b (the reference for every export)."""
    return engine_greedy(
        tiny_model_dir, lambda _: str(adapter_b), (("b", 1.0),), prompts=MORE_PROMPTS
    )


def test_merged_hf_directory_generates_like_ownllm(
    tiny_model_dir, adapter_b, ownllm_output, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_hf(tiny_model_dir, adapter_b, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf_greedy(model, MORE_PROMPTS) == ownllm_output
    assert AutoTokenizer.from_pretrained(out).decode(ownllm_output[0])  # the tokenizer came along
    with pytest.raises(InvalidRequestError, match="already exists"):
        export_hf(tiny_model_dir, adapter_b, out)


def test_lora_gguf_carries_alpha_and_permuted_b(tiny_model_dir, adapter_b, tmp_path):
    import gguf

    path = export_gguf_lora(tiny_model_dir, adapter_b, tmp_path / "lora.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == 4.0
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * len(read_adapter(adapter_b).modules)
    assert "blk.1.ffn_down.weight.lora_a" in tensors
    v_b = read_adapter(adapter_b).modules["model.layers.0.self_attn.v_proj"][1]
    assert torch.equal(torch.from_numpy(tensors["blk.0.attn_v.weight.lora_b"].data.copy()), v_b)


def _llama_greedy(llm, prompts) -> list[list[int]]:
    out = []
    for prompt in prompts:
        tokens = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            tokens.append(token)
            if len(tokens) == MAX_TOKENS:
                break
        out.append(tokens)
    return out


def _agreement(got, expected) -> tuple[int, float]:
    """(prompts with identical continuations, mean matching-prefix fraction)."""
    same = sum(g == e for g, e in zip(got, expected))
    prefix = []
    for g, e in zip(got, expected):
        n = next((i for i, (x, y) in enumerate(zip(g, e)) if x != y), min(len(g), len(e)))
        prefix.append(n / len(e))
    return same, sum(prefix) / len(prefix)


def test_llama_cpp_loads_the_gguf_exports(tiny_model_dir, adapter_b, ownllm_output, tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (make bench-deps installs it)"
    )
    files = {
        "merged f16": (export_gguf(tiny_model_dir, adapter_b, tmp_path / "m.f16.gguf"), None),
        "merged q8_0": (
            export_gguf(tiny_model_dir, adapter_b, tmp_path / "m.q8_0.gguf", "q8_0"),
            None,
        ),
        "base f16 + LoRA": (
            export_gguf(tiny_model_dir, None, tmp_path / "base.f16.gguf"),
            export_gguf_lora(tiny_model_dir, adapter_b, tmp_path / "lora.gguf"),
        ),
    }
    report = {}
    for label, (model, lora) in files.items():
        llm = llama_cpp.Llama(
            model_path=str(model),
            lora_path=str(lora) if lora else None,
            n_ctx=256,
            verbose=False,
            seed=0,
        )
        got = _llama_greedy(llm, MORE_PROMPTS)
        assert all(len(t) == MAX_TOKENS for t in got), label  # it loads and answers
        text = llm.create_completion("Hello world", max_tokens=4, temperature=0.0)
        assert text["choices"][0]["text"] is not None
        same, prefix = _agreement(got, ownllm_output)
        report[label] = {"identical": f"{same}/{len(MORE_PROMPTS)}", "prefix": round(prefix, 3)}
        del llm
    print("\nllama.cpp vs ownllm greedy agreement:", json.dumps(report))
    # f16 rounding of a random tiny model may flip a near-tie late in a sequence; the first
    # tokens must agree, and exact agreement on most prompts shows the layout is right
    for label in ("merged f16", "base f16 + LoRA"):
        assert report[label]["prefix"] >= 0.8, report


@pytest.mark.slow
def test_shipped_model_exports_answer_in_llama_cpp(tmp_path):
    """SmolLM2-135M-Instruct with a random rank-8 adapter: llama.cpp runs each GGUF export,
    its chat template and tokenizer (copied from the shipped GGUF) included."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from ownllm.models import ModelLoadError, prepare_model, resolve_model
    from ownllm.models.tokenizer import Tokenizer
    from tests.adapters.conftest import ALL, make_peft_adapter

    try:
        base = prepare_model(resolve_model("smollm2-135m-instruct"), tmp_path / "home")
    except ModelLoadError as e:
        pytest.skip(str(e))
    adapter = make_peft_adapter(
        base.path, tmp_path / "adapter", r=8, alpha=16.0, targets=ALL, scale=0.02
    )
    tokenizer = Tokenizer.from_dir(base.path)
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Name a prime number."]
    prompts = [tokenizer.encode_chat([{"role": "user", "content": q}]) for q in questions]
    expected = engine_greedy(base.path, lambda _: str(adapter), (("a", 1.0),), prompts=prompts)
    f16 = export_gguf(base.path, adapter, tmp_path / "merged.f16.gguf")
    q8 = export_gguf(base.path, adapter, tmp_path / "merged.q8_0.gguf", "q8_0")
    report = {}
    for label, path in (("f16", f16), ("q8_0", q8)):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False)
        same, prefix = _agreement(_llama_greedy(llm, prompts), expected)
        report[label] = {"identical": f"{same}/{len(prompts)}", "prefix": round(prefix, 3)}
        answer = llm.create_chat_completion(
            [{"role": "user", "content": questions[0]}], max_tokens=12, temperature=0.0
        )
        assert "Paris" in answer["choices"][0]["message"]["content"], label
        del llm
    print("\nSmolLM2 llama.cpp vs ownllm greedy agreement:", json.dumps(report))
    assert report["f16"]["prefix"] >= 0.8, report


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_gguf_exports_answer_like_ownllm(tmp_path, arch):
    """Qwen2 (q/k/v biases, no q/k permutation) and Qwen3 (q/k norms) map to llama.cpp too."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from tokenizers import Tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from ownllm.models.tiny import make_tokenizer
    from tests.adapters.conftest import ALL, make_peft_adapter

    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }[arch]
    base = tmp_path / arch
    base.mkdir()
    make_tokenizer(base)
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=Tokenizer.from_file(str(base / "tokenizer.json")).get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    model = model_cls(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # zero by default: make them matter
                param.normal_(0.0, 0.5)
    model.save_pretrained(base)
    adapter = make_peft_adapter(base, tmp_path / "adapter", targets=ALL, seed=1, scale=1.0)
    expected = engine_greedy(base, lambda _: str(adapter), (("a", 1.0),))
    merged = export_gguf(base, adapter, tmp_path / "merged.gguf")
    bare = export_gguf(base, None, tmp_path / "base.gguf")
    lora = export_gguf_lora(base, adapter, tmp_path / "lora.gguf")
    for path, lora_path in ((merged, None), (bare, lora)):
        llm = llama_cpp.Llama(
            model_path=str(path),
            lora_path=str(lora_path) if lora_path else None,
            n_ctx=256,
            verbose=False,
        )
        assert _agreement(_llama_greedy(llm, PROMPTS), expected)[1] >= 0.8
        del llm
