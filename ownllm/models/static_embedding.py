"""Static token vectors distilled from the shipped MiniLM: a text's vector in microseconds.

Each vocabulary token's vector is MiniLM's own sentence vector for that token alone
(`[CLS] token [SEP]`, mean-pooled, as `EmbeddingModel.embed` pools), normalised, then
weighted by a Zipf prior on its id (BERT's word pieces are numbered roughly by frequency,
so `log(1 + id)` weighs rare, telling tokens over "the" and "?"): model2vec's recipe
without its PCA. A text's vector is the normalised mean of its tokens' vectors — no
attention, so word order and context are lost; a router uses it as a first stage only
(`ownllm.adapters.routing`).

The table (vocabulary × 384, float16, ~23 MB) is distilled once (one batched forward of
every token: ~35 s of one core) and cached in `directory` under a name keyed by the
model's files, written atomically; later loads read it back.

Left out: PCA, a learned token weighting (model2vec's tokenlearn), other models.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RECIPE = "mean-cls-sep-norm-zipf-v1"  # in the cache key: a new recipe distils again
DISTILL_BATCH = 2048


class StaticEmbedding:
    """Texts in, unit vectors out, by a table lookup and a mean (`table`: [V, D] float32)."""

    num_distilled = 0  # distillations this process ran (tests observe the cache with it)

    def __init__(self, table: np.ndarray, tokenizer: Any) -> None:
        self.table = table
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`, no padding or truncation
        self.dimensions = int(table.shape[1])

    @classmethod
    def load_or_distill(
        cls, model: Any, model_dir: Path, directory: Path, distill: bool = True
    ) -> StaticEmbedding | None:
        """The cached table for the model in `model_dir`, distilled from `model` (an
        `EmbeddingModel`, or a callable giving one) and cached when missing; None when it
        is missing and `distill` is false."""
        path = directory / f"static-{cache_key(model_dir)}.npy"
        if path.is_file():
            table = np.load(path).astype(np.float32)
        elif not distill:
            return None
        else:
            stored = distill_table(model() if callable(model) else model).astype(np.float16)
            _write_atomic(path, stored)
            cls.num_distilled += 1
            table = stored.astype(np.float32)  # as a later load reads it
        return cls(table, _plain_tokenizer(model_dir))

    def embed(self, texts: list[str]) -> list[list[float] | None]:
        """One unit vector per text; None for a text with no tokens."""
        out: list[list[float] | None] = []
        for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            out.append(self._mean(encoding.ids))
        return out

    def _mean(self, ids: list[int]) -> list[float] | None:
        if not ids:
            return None
        vector = self.table[ids].mean(0)  # [D]
        norm = float(np.linalg.norm(vector))
        return (vector / norm).tolist() if norm > 0 else None


def distill_table(model: Any) -> np.ndarray:
    """[V, D]: each token's MiniLM vector alone, normalised and Zipf-weighted."""
    import torch

    tokenizer = model.tokenizer
    vocab_size = len(tokenizer)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    table = np.zeros((vocab_size, model.dimensions), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab_size, DISTILL_BATCH):
            ids = torch.arange(start, min(vocab_size, start + DISTILL_BATCH))
            x = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1)
            hidden = model.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            table[start : start + len(ids)] = hidden.mean(1).numpy()  # [B, 3, D] -> [B, D]
    table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    table *= np.log1p(np.arange(vocab_size, dtype=np.float32))[:, None]
    return table


def cache_key(model_dir: Path) -> str:
    """Names the model's files (config, tokenizer, the weights' size) and the recipe."""
    h = hashlib.sha256(RECIPE.encode())
    for name in ("config.json", "tokenizer.json"):
        h.update((model_dir / name).read_bytes())
    h.update(str((model_dir / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()[:16]


def _plain_tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _write_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
