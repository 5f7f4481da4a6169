"""Turn a ModelSource into a ready Hugging Face model directory.

A GGUF file is dequantised once (its tensors with the gguf package, undoing
llama.cpp's q/k permutation; its config and tokenizer through transformers'
GGUF reader) and cached under `<data_dir>/models/<name>-<sha12>/` as
config.json + model.safetensors (fp32) + tokenizer files + MANIFEST.json, and the file's
own q4_0/q4_1/q8_0 blocks, undequantised, in quant.blocks (`ownllm.formats.quant`;
the engine serves those with `model.quantization`). The cache is written into a temporary
directory and renamed into place only when complete, and MANIFEST.json (file
sizes and sha256) is checked on every later load, so a crash mid-write never
leaves a cache that loads as garbage. A local HF directory is used in place.

Left out: re-quantised caches (a type the file does not hold is quantised at load); GGUF
architectures other than llama, qwen2 and qwen3 (the engine serves no others).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownllm.formats.gguf_names import GGUF_ARCHES, GgufNames, permute_rows
from ownllm.formats.quant import QUANT_FILE, QuantWeight, from_gguf_tensor, save_quant_file
from ownllm.models.catalog import ModelLoadError, ModelSource

if TYPE_CHECKING:
    import numpy as np

MANIFEST = "MANIFEST.json"
CACHE_FORMAT = 3  # 3: with quant.blocks (2 named it quant.safetensors, which vLLM loaded as
# weights); a cache of an older format is rebuilt
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PreparedModel:
    id: str
    path: Path  # a Hugging Face model directory
    weights_sha256: str
    from_cache: bool
    seconds: float


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint_dir(path: Path) -> str:
    """A cheap identity for a local model directory: names, sizes and headers of its weights."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(str(file.stat().st_size).encode())
        with open(file, "rb") as f:
            digest.update(f.read(_CHUNK))
    return digest.hexdigest()


def _check_manifest(cache_dir: Path) -> dict | None:
    """The manifest when every file it lists is present with its recorded size, else None."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
        for name, meta in manifest["files"].items():
            if (cache_dir / name).stat().st_size != meta["bytes"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _dequantise_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write config.json, model.safetensors and tokenizer files for a GGUF model."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        hf_config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        config, state, quant = _read_gguf_weights(gguf_path, hf_config)
    except Exception as e:  # transformers and gguf raise many types for a bad file
        raise ModelLoadError(f"cannot read GGUF file {str(gguf_path)!r}: {e}") from None
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: torch.from_numpy(v) for k, v in state.items()}, out_dir / "model.safetensors")
    save_quant_file(out_dir / QUANT_FILE, quant)
    tokenizer.save_pretrained(out_dir)
    generation = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation))


def _read_gguf_weights(
    gguf_path: Path, hf_config: Any
) -> tuple[dict, dict[str, np.ndarray], dict[str, QuantWeight]]:
    """The HF config dict, fp32 HF-named tensors of a GGUF file, and the tensors held in
    q4_0, q4_1 or q8_0 as their own blocks (rows in HF order), read with the gguf package.

    transformers' GGUF model loader is avoided: it refuses to run without accelerate
    (a runtime dependency for nothing else), and the architectures it moves to its
    newer path keep their weights packed in GGUF blocks when `kernels` is installed.
    HF tensor names come from a meta-device model of the config (no memory), mapped
    to GGUF names by `ownllm.formats.gguf_names`, as convert_hf_to_gguf and
    ownllm.adapters.export map them the other way.
    """
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    arch = hf_config.model_type
    if arch not in GGUF_ARCHES:
        raise ValueError(
            f"architecture {arch} is not supported (supported: {', '.join(GGUF_ARCHES)})"
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    hf_names = list(model.state_dict())
    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    names = GgufNames(arch, hf_config.num_hidden_layers, num_heads, num_kv_heads)
    to_hf = {names.gguf_name(n): n for n in hf_names}
    state: dict[str, np.ndarray] = {}
    quant: dict[str, QuantWeight] = {}
    for tensor in gguf.GGUFReader(gguf_path).tensors:
        hf_name = to_hf.get(tensor.name)
        if hf_name is None:
            raise ValueError(f"tensor {tensor.name} has no place in {type(model).__name__}")
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        blocks = from_gguf_tensor(tensor)
        if (heads := names.rotary_heads(hf_name)) is not None:
            weights = permute_rows(weights, heads, inverse=True)
            if blocks is not None:  # each row is its own blocks: permute them whole
                data = permute_rows(blocks.data, heads, inverse=True).contiguous()
                blocks = QuantWeight(blocks.qtype, blocks.shape, data)
        if blocks is not None:
            quant[hf_name] = blocks
        state[hf_name] = np.array(weights, dtype=np.float32)  # a writable, contiguous copy
    expected = set(hf_names)
    if hf_config.tie_word_embeddings:  # lm_head is the embedding (the GGUF has no output.weight)
        expected.discard("lm_head.weight")
        state.pop("lm_head.weight", None)
        quant.pop("lm_head.weight", None)
    if missing := sorted(expected - set(state)):
        raise ValueError(f"no tensor for {', '.join(missing[:3])}")
    config = hf_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "float32"
    return config, state, quant


def _write_manifest(out_dir: Path, source: Path, source_sha: str) -> dict:
    files = {}
    for file in sorted(out_dir.iterdir()):
        if file.is_file():
            files[file.name] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    manifest = {
        "format": CACHE_FORMAT,
        "source": str(source),
        "source_sha256": source_sha,
        "files": files,
    }
    with open(out_dir / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_manifest(cache_dir: Path) -> dict | None:
    """The cache's manifest when it is complete and of this format, else None (rebuild)."""
    manifest = _check_manifest(cache_dir)
    if manifest is not None and manifest.get("format", 1) < CACHE_FORMAT:
        return None  # written before caches kept the file's own blocks
    return manifest


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (flock: released by the kernel if we die)."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_cache(source: ModelSource, source_sha: str, models_dir: Path, cache_dir: Path) -> dict:
    """Dequantise into a temporary directory, then rename it into place; under the lock."""
    for stale in models_dir.glob(f".tmp-{cache_dir.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a crash mid-write
    if cache_dir.exists():  # incomplete, corrupt or of an older format
        shutil.rmtree(cache_dir)
    tmp_dir = models_dir / f".tmp-{cache_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        _dequantise_gguf(source.path, tmp_dir)
        manifest = _write_manifest(tmp_dir, source.path, source_sha)
        _fsync_dir(tmp_dir)
        os.rename(tmp_dir, cache_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return manifest


def prepare_model(source: ModelSource, data_dir: Path) -> PreparedModel:
    """Return a loadable HF directory for `source`, dequantising and caching GGUF once."""
    start = time.perf_counter()
    if source.kind == "hf_dir":
        return PreparedModel(
            source.id,
            source.path,
            _fingerprint_dir(source.path),
            False,
            time.perf_counter() - start,
        )
    try:
        source_sha = sha256_file(source.path)
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {str(source.path)!r}: {e.strerror}") from None
    models_dir = Path(data_dir) / "models"
    cache_dir = models_dir / f"{source.path.stem}-{source_sha[:12]}"
    manifest = _current_manifest(cache_dir)
    from_cache = manifest is not None
    if manifest is None:
        models_dir.mkdir(parents=True, exist_ok=True)
        # one builder at a time (replicas starting together on a shared data dir): the others
        # wait, then find its cache; so a temporary directory is never another's, in progress
        with exclusive(models_dir / f".{cache_dir.name}.lock"):
            manifest = _current_manifest(cache_dir)
            from_cache = manifest is not None
            if manifest is None:
                manifest = _build_cache(source, source_sha, models_dir, cache_dir)
    weights_sha = manifest["files"]["model.safetensors"]["sha256"]
    return PreparedModel(source.id, cache_dir, weights_sha, from_cache, time.perf_counter() - start)
