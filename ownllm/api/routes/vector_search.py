"""POST /v1/vector_stores/{id}/search: OpenAI's vector store search, on the inference path.

Needs the `inference` scope (it runs the embedding model); limited and metered like
/v1/embeddings (`ownllm.api.retrieval.SearchRun`). `rewrite_query: true` is a 400: no
query rewriting model is served. `ranking_options.ranker` is accepted and means cosine
similarity, the one ranker.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ownllm.api.inference import serve
from ownllm.api.retrieval import Retrieval, SearchRun
from ownllm.api.schemas import ERROR_RESPONSES
from ownllm.api.state import AppState, get_state
from ownllm.api.vector_schemas import SearchRequest
from ownllm.errors import InvalidRequestError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.hooks import InferenceCall
from ownllm.gateway.principal import Principal
from ownllm.ids import new_id
from ownllm.models.embedding import EMBEDDING_MODEL_ID

router = APIRouter(prefix="/v1", tags=["inference"])

ENDPOINT = "vector_stores.search"
MAX_QUERIES = 16


def _queries(body: SearchRequest) -> list[str]:
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    if not queries or len(queries) > MAX_QUERIES:
        raise InvalidRequestError(f"Give 1 to {MAX_QUERIES} queries.", param="query")
    for i, q in enumerate(queries):
        if not q.strip():
            where = "query" if isinstance(body.query, str) else f"query[{i}]"
            raise InvalidRequestError("The query must not be empty.", param=where)
    return queries


@router.post("/vector_stores/{vector_store_id}/search", responses=ERROR_RESPONSES)
async def search_vector_store(
    vector_store_id: str,
    body: SearchRequest,
    request: Request,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
    principal: Principal = Depends(require_scope("inference")),
) -> Response:
    """Search a store's chunks: scored chunks with their file ids, filenames, attributes."""
    if body.rewrite_query:
        raise InvalidRequestError(
            "rewrite_query is not supported (no query-rewriting model is served); send "
            "rewrite_query: false.",
            param="rewrite_query",
        )
    queries = _queries(body)
    retrieval = await run_in_threadpool(
        Retrieval.resolve,
        state,
        principal,
        [vector_store_id],
        body.max_num_results,
        body.filters,
        body.ranking_options,
        "vector_store_id",
    )
    call = InferenceCall(
        request_id=new_id("vssearch"),
        endpoint=ENDPOINT,
        principal=principal,
        model=EMBEDDING_MODEL_ID,
        base_model=EMBEDDING_MODEL_ID,
        adapters=(),
        sampling=None,
        inputs=queries,
        started_at=time.monotonic(),
    )
    return await serve(SearchRun(call, retrieval, state, gateway), request)
