"""Turn a ModelSource into a ready Hugging Face model directory.

A GGUF file is dequantised once (through transformers' GGUF reader, which
also undoes llama.cpp's q/k permutation) and cached under
`<data_dir>/models/<name>-<sha12>/` as config.json + model.safetensors (fp32)
+ tokenizer files + MANIFEST.json. The cache is written into a temporary
directory and renamed into place only when complete, and MANIFEST.json (file
sizes and sha256) is checked on every later load, so a crash mid-write never
leaves a cache that loads as garbage. A local HF directory is used in place.

Left out: re-quantised caches (weights are cached dequantised, fp32).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ownllm.models.catalog import ModelLoadError, ModelSource

MANIFEST = "MANIFEST.json"
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
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as e:  # transformers raises many types for a bad file
        raise ModelLoadError(f"cannot read GGUF file {str(gguf_path)!r}: {e}") from None
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, out_dir / "model.safetensors")
    tokenizer.save_pretrained(out_dir)
    generation = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation))


def _write_manifest(out_dir: Path, source: Path, source_sha: str) -> dict:
    files = {}
    for file in sorted(out_dir.iterdir()):
        if file.is_file():
            files[file.name] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    manifest = {"source": str(source), "source_sha256": source_sha, "files": files}
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
    manifest = _check_manifest(cache_dir)
    if manifest is None:
        models_dir.mkdir(parents=True, exist_ok=True)
        for stale in models_dir.glob(f".tmp-{cache_dir.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash mid-write
        if cache_dir.exists():  # incomplete or corrupt: rebuild
            shutil.rmtree(cache_dir)
        tmp_dir = models_dir / f".tmp-{cache_dir.name}-{uuid.uuid4().hex[:8]}"
        tmp_dir.mkdir()
        try:
            _dequantise_gguf(source.path, tmp_dir)
            manifest = _write_manifest(tmp_dir, source.path, source_sha)
            _fsync_dir(tmp_dir)
            try:
                os.rename(tmp_dir, cache_dir)
            except OSError:
                # another process finished the same cache first: use theirs
                if _check_manifest(cache_dir) is None:
                    raise
                shutil.rmtree(tmp_dir, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        from_cache = False
    else:
        from_cache = True
    weights_sha = manifest["files"]["model.safetensors"]["sha256"]
    return PreparedModel(source.id, cache_dir, weights_sha, from_cache, time.perf_counter() - start)
