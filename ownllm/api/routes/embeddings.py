"""POST /v1/embeddings with the shipped all-MiniLM-L6-v2 (384 dimensions).

An embeddings call takes the same path as chat (`ownllm.api.inference.serve`): it counts
against the key's and tenant's rpm, tpm (its input tokens), concurrency and monthly budget,
passes the input guard, and writes one usage-ledger row whatever happens; rpm and
concurrency are checked before the model loads or reads an input, tpm and the budget on the
counted tokens. `EmbeddingRun` says what is particular to it: `prepare` counts the tokens
in the embedding model's own tokenizer (in a thread) and refuses over-long inputs, `start`
embeds.

- Input guard: a block refuses the request as for chat (400 content_policy_violation,
  `param` input[i]); a redaction is embedded as redacted, so the vector never encodes
  what the policy keeps from the model, and `usage` counts the redacted text's tokens.
- Capture: never. Stored completions are exchanges to train a chat model on; an
  embedding request has no answer to learn from, and its texts are often whole
  documents headed for a vector store.

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

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ownllm.api.inference import Run, serve
from ownllm.api.schemas import ERROR_RESPONSES, EmbeddingList, EmbeddingRequest
from ownllm.api.state import AppState, get_state
from ownllm.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.hooks import InferenceCall, InferenceOutcome
from ownllm.gateway.principal import Principal
from ownllm.ids import new_id
from ownllm.models.catalog import ModelLoadError
from ownllm.models.embedding import EMBEDDING_MODEL_ID, EmbeddingModel, is_embedding_model

router = APIRouter(prefix="/v1", tags=["inference"])

MAX_INPUTS = 2048
ENDPOINT = "embeddings"


async def embedding_model(state: AppState) -> EmbeddingModel:
    """The app's embedding model (loaded on first use); a 404 when it is not installed."""
    try:
        return await state.embedding_model.get()
    except ModelLoadError as e:
        raise ModelNotFoundError(str(e), param="model") from None


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


def embedding_call(principal: Principal, body: EmbeddingRequest) -> InferenceCall:
    """The call of one request; a 404/400 for a model or input no embedding model takes."""
    if not is_embedding_model(body.model):
        raise ModelNotFoundError(
            f"The model '{body.model}' does not exist or is not an embedding model; "
            f"use '{EMBEDDING_MODEL_ID}'.",
            param="model",
        )
    return InferenceCall(
        request_id=new_id("embd"),
        endpoint=ENDPOINT,
        principal=principal,
        model=EMBEDDING_MODEL_ID,  # one name in the ledger for the aliases clients use
        base_model=EMBEDDING_MODEL_ID,
        adapters=(),
        sampling=None,
        inputs=_texts(body),
        user=body.user,
        started_at=time.monotonic(),
    )


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class EmbeddingRun(Run):
    """An embeddings call on the shared path; the embedding model is its backend."""

    def __init__(
        self, call: InferenceCall, body: EmbeddingRequest, state: AppState, gateway: Gateway
    ) -> None:
        super().__init__(call, gateway, state.metrics)
        self.state = state
        self.encoding_format = body.encoding_format
        self.dimensions = body.dimensions
        self.model: EmbeddingModel | None = None
        self.vectors: list[list[float]] | None = None

    async def prepare(self) -> None:
        """Count the tokens of the inputs (again after a redaction) and check each fits."""
        model = self.model = await embedding_model(self.state)
        if self.dimensions is not None and self.dimensions != model.dimensions:
            raise InvalidRequestError(
                f"{EMBEDDING_MODEL_ID} has {model.dimensions} dimensions", param="dimensions"
            )
        ids = await asyncio.to_thread(model.token_ids, self.call.inputs)
        for i, token_ids in enumerate(ids):
            if len(token_ids) > model.max_length:
                raise ContextLengthExceededError(
                    f"input[{i}] has {len(token_ids)} tokens; {EMBEDDING_MODEL_ID} takes at "
                    f"most {model.max_length}. Split the text into smaller pieces.",
                    param="input",
                )
        self.call.prompt_token_ids = ids

    async def start(self) -> None:
        self.vectors = await asyncio.to_thread(self.model.embed, self.call.inputs)

    async def respond(self, request: Request) -> Response:
        await self.close()
        num_tokens = self.call.num_prompt_tokens
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": _encode(v, self.encoding_format),
                    }
                    for i, v in enumerate(self.vectors)
                ],
                "model": EMBEDDING_MODEL_ID,
                "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
            }
        )

    def outcome(self) -> InferenceOutcome:
        outcome = super().outcome()
        if self.vectors is not None:  # the model read every input
            outcome.num_prompt_tokens = self.call.num_prompt_tokens
            outcome.is_complete = True
        return outcome


@router.post("/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
    principal: Principal = Depends(require_scope("inference")),
) -> Response:
    """Embed a string or a list of strings; vectors are unit length (cosine = dot)."""
    return await serve(embedding_run(state, gateway, principal, body), request)


def embedding_run(
    state: AppState, gateway: Gateway, principal: Principal, body: EmbeddingRequest
) -> EmbeddingRun:
    """The run of one embeddings request (a live one, or a batch line)."""
    return EmbeddingRun(embedding_call(principal, body), body, state, gateway)
