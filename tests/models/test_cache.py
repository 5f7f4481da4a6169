import contextlib
import json
import os
import threading

import pytest

from ownllm.formats.quant import QUANT_FILE
from ownllm.models import cache
from ownllm.models.cache import prepare_model
from ownllm.models.catalog import ModelLoadError, resolve_model
from ownllm.models.tokenizer import Tokenizer


def test_hf_dir_is_used_in_place(tiny_model_dir):
    source = resolve_model(str(tiny_model_dir), name="tiny")
    prepared = prepare_model(source, tiny_model_dir.parent)
    assert prepared.id == "tiny" and prepared.path == tiny_model_dir.resolve()
    assert len(prepared.weights_sha256) == 64


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: p.write_text("x"), "is not a .gguf file"),
    ],
)
def test_bad_model_paths_are_one_line(tmp_path, make, message):
    path = tmp_path / "model.bin"
    make(path)
    with pytest.raises(ModelLoadError, match=message) as info:
        resolve_model(str(path))
    assert "\n" not in str(info.value)


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        prepare_model(resolve_model(str(bad)), tmp_path / "home")
    assert not (tmp_path / "home" / "models" / "broken").exists()
    assert not list((tmp_path / "home" / "models").glob(".tmp-*"))


def _fake_dequantise(tiny_model_dir):
    def write(_gguf, out_dir):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            (out_dir / name).write_bytes((tiny_model_dir / name).read_bytes())

    return write


def test_crash_mid_write_leaves_no_cache(tmp_path, monkeypatch, tiny_model_dir):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")

    def crash(_gguf, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # a kill mid-write

    monkeypatch.setattr(cache, "_dequantise_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_model(resolve_model(str(gguf)), tmp_path)
    # no cache and no temporary directory: only the builders' lock file
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".m-" + _sha12(gguf) + ".lock"]

    monkeypatch.setattr(cache, "_dequantise_gguf", _fake_dequantise(tiny_model_dir))
    first = prepare_model(resolve_model(str(gguf)), tmp_path)
    assert not first.from_cache
    second = prepare_model(resolve_model(str(gguf)), tmp_path)
    assert second.from_cache and second.path == first.path
    manifest = json.loads((first.path / "MANIFEST.json").read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == first.weights_sha256


def _sha12(path) -> str:
    return cache.sha256_file(path)[:12]


def test_two_processes_preparing_at_once_build_it_once(tmp_path, monkeypatch, tiny_model_dir):
    """Replicas starting together on one data dir: the second waits for the first's build
    (it used to delete the first's temporary directory as a crash's leftover)."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    fake = _fake_dequantise(tiny_model_dir)
    builds, second_waits = [], threading.Event()

    def slow_build(source, out_dir):
        builds.append(out_dir)
        assert second_waits.wait(60), "the second preparer never reached the lock"
        fake(source, out_dir)

    real_exclusive = cache.exclusive

    @contextlib.contextmanager
    def exclusive(path):
        if threading.current_thread().name == "second":
            second_waits.set()  # about to block on the lock the first holds
        with real_exclusive(path):
            yield

    monkeypatch.setattr(cache, "_dequantise_gguf", slow_build)
    monkeypatch.setattr(cache, "exclusive", exclusive)
    results = {}

    def prepare(name):
        results[name] = prepare_model(resolve_model(str(gguf)), tmp_path)

    first = threading.Thread(target=prepare, args=("first",), name="first")
    first.start()
    while not builds:  # the first holds the lock and is building
        first.join(0.01)
        assert first.is_alive() or builds, "the first preparer ended without building"
    second = threading.Thread(target=prepare, args=("second",), name="second")
    second.start()
    first.join(60)
    second.join(60)
    assert len(builds) == 1
    assert not results["first"].from_cache and results["second"].from_cache
    assert results["second"].path == results["first"].path
    assert (results["first"].path / "model.safetensors").is_file()


def test_a_cache_of_an_older_format_is_rebuilt(tmp_path, monkeypatch, tiny_model_dir):
    """Caches from before the GGUF's own blocks were kept (no format in the manifest)."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    monkeypatch.setattr(cache, "_dequantise_gguf", _fake_dequantise(tiny_model_dir))
    first = prepare_model(resolve_model(str(gguf)), tmp_path)
    manifest_path = first.path / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == cache.CACHE_FORMAT
    del manifest["format"]
    manifest_path.write_text(json.dumps(manifest))
    again = prepare_model(resolve_model(str(gguf)), tmp_path)
    assert not again.from_cache and again.path == first.path
    assert prepare_model(resolve_model(str(gguf)), tmp_path).from_cache


def test_truncated_cache_is_rebuilt(tmp_path, monkeypatch, tiny_model_dir):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    monkeypatch.setattr(cache, "_dequantise_gguf", _fake_dequantise(tiny_model_dir))
    first = prepare_model(resolve_model(str(gguf)), tmp_path)
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # disk full / partial copy
    again = prepare_model(resolve_model(str(gguf)), tmp_path)
    assert not again.from_cache
    assert weights.stat().st_size == (tiny_model_dir / "model.safetensors").stat().st_size


@pytest.mark.slow
def test_shipped_default_model_dequantises_once_then_loads_from_cache(tmp_path, monkeypatch):
    source = resolve_model("smollm2-135m-instruct")
    first = prepare_model(source, tmp_path)

    def dequantise_again(*args):
        raise AssertionError("the cached model was dequantised again")

    monkeypatch.setattr(cache, "_dequantise_gguf", dequantise_again)
    second = prepare_model(source, tmp_path)
    assert not first.from_cache and second.from_cache and second.path == first.path
    config = json.loads((first.path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    # what vLLM and the dense loader read: every *.safetensors of the directory
    assert [f.name for f in first.path.glob("*.safetensors")] == ["model.safetensors"]
    assert (first.path / QUANT_FILE).is_file()  # the GGUF's own blocks, beside them
    tokenizer = Tokenizer.from_dir(first.path)
    assert tokenizer.token_to_id("<|im_end|>") in tokenizer.eos_token_ids
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def _qwen2_dir(out_dir):
    """A tiny Qwen2 (q/k/v biases, rows not permuted by llama.cpp) beside the tiny Llama."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ownllm.models.tiny import make_tokenizer

    out_dir.mkdir()
    make_tokenizer(out_dir)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=Tokenizer.from_file(str(out_dir / "tokenizer.json")).get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # zero by default: make them matter
                param.normal_(0.0, 0.5)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_dequantises_to_the_weights_it_was_written_from(tmp_path, tiny_model_dir, arch):
    """HF -> GGUF (f16, llama.cpp's layout) -> cache gives back every HF tensor, unpermuted."""
    import torch
    from safetensors.torch import load_file

    from ownllm.adapters.export import export_gguf

    base = tiny_model_dir if arch == "llama" else _qwen2_dir(tmp_path / "qwen2")
    gguf_file = export_gguf(base, None, tmp_path / f"{arch}.f16.gguf")
    prepared = prepare_model(resolve_model(str(gguf_file)), tmp_path / "home")
    config = json.loads((prepared.path / "config.json").read_text())
    original = json.loads((base / "config.json").read_text())
    assert config["architectures"] == original["architectures"]
    assert config["num_key_value_heads"] == original["num_key_value_heads"]
    expected = load_file(str(base / "model.safetensors"))
    got = load_file(str(prepared.path / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        want = tensor.half().float() if tensor.dim() == 2 else tensor.float()
        assert torch.equal(got[name], want), name
