"""POST /v1/embeddings with the shipped all-MiniLM-L6-v2 (384 dimensions).

The model loads on the first request (a few seconds) in a worker thread and stays
loaded; embedding runs in a worker thread too, so streams keep flowing meanwhile.
`encoding_format: base64` is little-endian float32, as OpenAI sends it (the official
client asks for base64 by default and decodes it).

Left out: token-array inputs (they would be token ids of OpenAI's tokenizer, meaningless
to MiniLM) and `dimensions` other than 384.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time

from fastapi import APIRouter, Depends

from ownllm.api.metrics import metrics_for
from ownllm.api.schemas import ERROR_RESPONSES, EmbeddingList, EmbeddingRequest
from ownllm.api.state import AppState, get_state
from ownllm.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal
from ownllm.models.catalog import ModelLoadError
from ownllm.models.embedding import EMBEDDING_MODEL_ID, EmbeddingModel, is_embedding_model

router = APIRouter(prefix="/v1", tags=["inference"])

MAX_INPUTS = 2048
ENDPOINT = "embeddings"


async def embedding_model(state: AppState) -> EmbeddingModel:
    """The app's embedding model, loaded once on first use."""
    lock = state.extras.setdefault("embedding_lock", asyncio.Lock())
    async with lock:
        model = state.extras.get("embedding_model")
        if model is None:
            try:
                model = await asyncio.to_thread(EmbeddingModel.load)
            except ModelLoadError as e:
                raise ModelNotFoundError(str(e), param="model") from None
            state.extras["embedding_model"] = model
    return model


def _texts(body: EmbeddingRequest) -> list[str]:
    value = body.input
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InvalidRequestError("input must not be empty", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError(
            "token-array inputs are not supported; send the text", param="input"
        )
    if len(texts) > MAX_INPUTS:
        raise InvalidRequestError(f"at most {MAX_INPUTS} inputs per request", param="input")
    for i, text in enumerate(texts):
        if not text:
            where = "input" if isinstance(value, str) else f"input[{i}]"
            raise InvalidRequestError("input strings must not be empty", param=where)
    return texts


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@router.post("/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingRequest,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(require_scope("inference")),
) -> dict:
    """Embed a string or a list of strings; vectors are unit length (cosine = dot)."""
    started = time.monotonic()
    if not is_embedding_model(body.model):
        raise ModelNotFoundError(
            f"The model '{body.model}' does not exist or is not an embedding model; "
            f"use '{EMBEDDING_MODEL_ID}'.",
            param="model",
        )
    texts = _texts(body)
    model = await embedding_model(state)
    if body.dimensions is not None and body.dimensions != model.dimensions:
        raise InvalidRequestError(
            f"{EMBEDDING_MODEL_ID} has {model.dimensions} dimensions", param="dimensions"
        )
    lengths = await asyncio.to_thread(model.count_tokens, texts)
    for i, n in enumerate(lengths):
        if n > model.max_length:
            raise ContextLengthExceededError(
                f"input[{i}] has {n} tokens; {EMBEDDING_MODEL_ID} takes at most "
                f"{model.max_length}. Split the text into smaller pieces.",
                param="input",
            )
    vectors = await asyncio.to_thread(model.embed, texts)
    metrics = metrics_for(state)
    metrics.requests.labels(ENDPOINT, "200").inc()
    metrics.prompt_tokens.labels(ENDPOINT).inc(sum(lengths))
    metrics.latency.labels(ENDPOINT).observe(time.monotonic() - started)
    num_tokens = sum(lengths)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": EMBEDDING_MODEL_ID,
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
    }
