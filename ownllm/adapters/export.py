"""Export an adapter to other runtimes: a merged HF directory, a merged GGUF, a GGUF LoRA.

- `export_hf`: the base weights with every LoRA delta added (`W + scaling * B A`,
  computed in fp32, stored in the base's dtype) as `model.safetensors`, with
  the base's config, generation config and tokenizer files: a directory that
  `transformers`, vLLM or `convert_hf_to_gguf.py` load like any other model.
- `export_gguf`: the same merged weights as one GGUF file (`f16` or `q8_0`)
  for llama.cpp / Ollama, written with the `gguf` package following the
  conventions of llama.cpp's `convert_hf_to_gguf.py`: tensor names from
  `gguf.get_tensor_name_map`, Llama's q/k rows permuted to llama.cpp's rotary
  layout, 1-D tensors kept in f32. The tokenizer is copied from the base's
  original GGUF when the base was dequantised from one (the shipped model),
  else built from tokenizer.json (byte-level BPE only).
- `export_gguf_lora`: the adapter itself as a GGUF LoRA (`blk.N.attn_q.weight.lora_a`
  / `.lora_b`, `adapter.lora.alpha`), B's rows permuted like the base's q/k,
  for `llama.cpp --lora` on top of a GGUF of the same base.

Every file is written under a temporary name and renamed into place.
Left out: sentencepiece tokenizers, rope scaling other than linear, MoE models.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownllm.errors import InvalidRequestError
from ownllm.formats.gguf_names import HF_TO_GGUF_ARCH, GgufNames, permute_rows
from ownllm.formats.peft import PeftAdapter, read_adapter

if TYPE_CHECKING:
    import numpy as np
    import torch

GGUF_TYPES = ("f16", "q8_0")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """A temporary sibling path that replaces `final` only if the block succeeds."""
    final = Path(final)
    if final.exists():
        raise InvalidRequestError(
            f"{final} already exists; choose a new output path", param="output"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _base_config(base_dir: Path) -> dict[str, Any]:
    return json.loads((Path(base_dir) / "config.json").read_text())


def merged_weights(base_dir: str | Path, adapter: PeftAdapter | None) -> dict[str, torch.Tensor]:
    """The base model's tensors with `adapter`'s deltas added (base dtype)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if adapter is None:
        return tensors
    for module in adapter.modules:
        name = f"{module}.weight"
        if name not in tensors:
            raise InvalidRequestError(f"the base model has no {name} for adapter module {module}")
        base = tensors[name]
        tensors[name] = (base.float() + adapter.delta(module)).to(base.dtype)
    return tensors


def export_hf(base_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path) -> Path:
    """Write the merged model as a Hugging Face directory at `out_dir` (must not exist)."""
    from safetensors.torch import save_file

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    adapter = read_adapter(adapter_dir) if adapter_dir is not None else None
    tensors = merged_weights(base_dir, adapter)
    with _atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        shutil.copyfile(base_dir / "config.json", tmp / "config.json")
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, tmp / name)
    return out_dir


def _gguf_names(config: dict[str, Any]) -> GgufNames:
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in HF_TO_GGUF_ARCH:
        raise InvalidRequestError(f"GGUF export does not support architecture {arch}")
    num_heads = config["num_attention_heads"]
    num_kv_heads = config.get("num_key_value_heads") or num_heads
    return GgufNames(HF_TO_GGUF_ARCH[arch], config["num_hidden_layers"], num_heads, num_kv_heads)


def _gguf_name(names: GgufNames, hf_name: str) -> str:
    new = names.gguf_name(hf_name)
    if new is None:
        raise InvalidRequestError(f"GGUF export cannot map tensor {hf_name}")
    return new


def _add_hparams(writer: Any, config: dict[str, Any], file_type: int) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = rope.get("rope_theta") or config.get("rope_theta", 10000.0)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in ("default", None):
        raise InvalidRequestError(f"GGUF export does not support rope scaling {rope_type!r}")


def _source_gguf(base_dir: Path) -> Path | None:
    """The GGUF file the base model was dequantised from, per its cache manifest."""
    try:
        manifest = json.loads((base_dir / "MANIFEST.json").read_text())
        source = Path(manifest["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return source if source.suffix == ".gguf" and source.is_file() else None


def _copy_tokenizer_from_gguf(writer: Any, source: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(source))
    for name, f in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        value_type = f.types[0]
        sub_type = f.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), value_type, sub_type=sub_type)


def _pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the byte-level BPE pre-tokenizer (tokenizer.ggml.pre)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds and kinds[0] == "Split" and "\\p{N}" in json.dumps(parts[0]):
        return "qwen2"
    return "default"


def _add_tokenizer(writer: Any, base_dir: Path, vocab_size: int) -> None:
    source = _source_gguf(base_dir)
    if source is not None:
        _copy_tokenizer_from_gguf(writer, source)
        return
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = json.loads((base_dir / "tokenizer.json").read_text())
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise InvalidRequestError("GGUF export supports byte-level BPE tokenizers only")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(base_dir, load_merges=True).add_to_gguf(writer, quiet=True)


def _to_numpy(tensor: torch.Tensor, outtype: str, is_matrix: bool) -> tuple[np.ndarray, Any]:
    import gguf

    data = tensor.float().numpy()
    if not is_matrix:
        return data, None
    if outtype == "q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, q), q
    return data.astype("float16"), None


def export_gguf(
    base_dir: str | Path,
    adapter_dir: str | Path | None,
    out_file: str | Path,
    outtype: str = "f16",
    name: str = "",
) -> Path:
    """Write the base merged with the adapter (or the bare base) as one GGUF file."""
    import gguf

    if outtype not in GGUF_TYPES:
        raise InvalidRequestError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}", param="type")
    base_dir, out_file = Path(base_dir), Path(out_file)
    config = _base_config(base_dir)
    names = _gguf_names(config)
    adapter = read_adapter(adapter_dir) if adapter_dir is not None else None
    tensors = merged_weights(base_dir, adapter)
    file_type = (
        gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    )
    with _atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), names.arch_name)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or base_dir.name)
        _add_hparams(writer, config, int(file_type))
        _add_tokenizer(writer, base_dir, config["vocab_size"])
        for hf_name, tensor in tensors.items():
            if (heads := names.rotary_heads(hf_name)) is not None:
                tensor = permute_rows(tensor, heads)
            data, raw = _to_numpy(tensor, outtype, tensor.dim() == 2)
            writer.add_tensor(_gguf_name(names, hf_name), data, raw_dtype=raw)
        _write(writer)
    return out_file


def export_gguf_lora(base_dir: str | Path, adapter_dir: str | Path, out_file: str | Path) -> Path:
    """Write the adapter as a GGUF LoRA (f32) for llama.cpp's `--lora` on a GGUF of the base."""
    import gguf

    base_dir, out_file = Path(base_dir), Path(out_file)
    config = _base_config(base_dir)
    names = _gguf_names(config)
    adapter = read_adapter(adapter_dir)
    alpha = float(adapter.config["lora_alpha"])
    with _atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), names.arch_name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for module, (a, b) in adapter.modules.items():
            hf_name = f"{module}.weight"
            # llama.cpp scales by alpha / rank of each tensor; fold in anything else (rsLoRA)
            b = b.float() * (adapter.scaling(module) * a.shape[0] / alpha)
            if (heads := names.rotary_heads(hf_name)) is not None:
                b = permute_rows(b, heads)
            gguf_name = _gguf_name(names, hf_name)
            writer.add_tensor(f"{gguf_name}.lora_a", a.float().contiguous().numpy())
            writer.add_tensor(f"{gguf_name}.lora_b", b.contiguous().numpy())
        _write(writer)
    return out_file


def _write(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
