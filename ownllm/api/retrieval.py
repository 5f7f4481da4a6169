"""Retrieval on the inference path: vector store search, and chat answers with sources.

Both embed text with the embedding model, so both take the one inference path
(`ownllm.api.inference.serve`): rpm and concurrency before anything is read, the query's
tokens against tpm and the monthly budget, the input guard, one usage-ledger row.

- `SearchRun` (POST /v1/vector_stores/{id}/search): the queries are the call's `inputs`;
  the ledger row counts their embedding tokens, which the answer reports in the
  `x-ownllm-prompt-tokens` header (OpenAI's search page has no `usage` and allows no
  field beyond its own).
- `FileSearchRun` (chat completions with the ownllm `file_search` extension): before the
  prompt is tokenised, the last user message is searched in the named stores and the hits
  go into the last user message as numbered sources (`ownllm.vectors.sources`); then it is
  a chat call like any, so the sources count as prompt tokens, pass the input guard, and
  the answer's message carries `citations`.

Search resolves its store in the route, before the path; chat resolves its stores at
`prepare` (the run is also built for batch lines). Another tenant's store is a 404.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ownllm.api.formats import ChatFormat, ChoiceText
from ownllm.api.generation import GenerationRun
from ownllm.api.inference import Run
from ownllm.api.routes.embeddings import embedding_model
from ownllm.api.state import AppState
from ownllm.errors import ContextLengthExceededError, InvalidRequestError
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.hooks import InferenceCall, InferenceOutcome
from ownllm.store.schema import VectorStore
from ownllm.vectors import stores as store_rows
from ownllm.vectors.filters import Predicate, parse_filter
from ownllm.vectors.search import Hit, search
from ownllm.vectors.sources import citations, query_of, with_sources


@dataclass
class Retrieval:
    """What to search: the principal's stores, how many results, which files."""

    stores: list[VectorStore]
    max_num_results: int
    predicate: Predicate | None = None
    score_threshold: float = 0.0

    @classmethod
    def resolve(
        cls,
        state: AppState,
        principal: Any,
        store_ids: list[str],
        max_num_results: int,
        filters: dict | None,
        ranking_options: Any,
        param: str,
    ) -> Retrieval:
        """Blocking (reads the stores): a 404 for a store the principal cannot see, a 400
        for an expired one or a bad filter."""
        rows = []
        for i, store_id in enumerate(dict.fromkeys(store_ids)):
            where = f"{param}[{i}]" if param.endswith("_ids") else param
            row = store_rows.get_store(state.db, principal, store_id, param=where)
            if store_rows.is_expired(row):
                raise InvalidRequestError(
                    f"The vector store '{store_id}' has expired; create a new one.", param=where
                )
            rows.append(row)
        predicate = parse_filter(filters) if filters is not None else None
        threshold = ranking_options.score_threshold if ranking_options is not None else 0.0
        return cls(rows, max_num_results, predicate, threshold)

    async def run(self, state: AppState, vectors: list[list[float]], dimensions: int) -> list[Hit]:
        def work() -> list[Hit]:
            hits = search(
                state.db,
                state.vector_index,
                self.stores,
                vectors,
                max_num_results=self.max_num_results,
                predicate=self.predicate,
                score_threshold=self.score_threshold,
                dimensions=dimensions,
            )
            for row in self.stores:
                store_rows.touch(state.db, row)
            return hits

        return await asyncio.to_thread(work)


async def _embed_checked(state: AppState, call: InferenceCall, texts: list[str], param: str):
    """(model, token ids) of `texts`, refusing one longer than the model reads."""
    model = await embedding_model(state)
    ids = await asyncio.to_thread(model.token_ids, texts)
    for i, token_ids in enumerate(ids):
        if len(token_ids) > model.max_length:
            raise ContextLengthExceededError(
                f"{param}[{i}] has {len(token_ids)} tokens; the embedding model reads at most "
                f"{model.max_length}. Search with a shorter query.",
                param=param,
            )
    return model, ids


class SearchRun(Run):
    """A vector store search on the shared path; the embedding model is its backend."""

    def __init__(
        self, call: InferenceCall, retrieval: Retrieval, state: AppState, gateway: Gateway
    ) -> None:
        super().__init__(call, gateway, state.metrics)
        self.state, self.retrieval = state, retrieval
        self.model: Any = None
        self.hits: list[Hit] | None = None

    async def prepare(self) -> None:
        self.model, self.call.prompt_token_ids = await _embed_checked(
            self.state, self.call, self.call.inputs, "query"
        )

    async def start(self) -> None:
        vectors = await asyncio.to_thread(self.model.embed, self.call.inputs)
        self.hits = await self.retrieval.run(self.state, vectors, self.model.dimensions)

    async def respond(self, request: Request) -> Response:
        await self.close()
        return JSONResponse(
            {
                "object": "vector_store.search_results.page",
                "search_query": self.call.inputs,
                "data": [h.result() for h in self.hits],
                "has_more": False,
                "next_page": None,
            },
            headers={"x-ownllm-prompt-tokens": str(self.call.num_prompt_tokens)},
        )

    def outcome(self) -> InferenceOutcome:
        outcome = super().outcome()
        if self.hits is not None:
            outcome.num_prompt_tokens = self.call.num_prompt_tokens
            outcome.is_complete = True
        return outcome


class CitingChatFormat(ChatFormat):
    """Chat completions whose message (and first stream delta) carries `citations`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.citations: list[dict[str, Any]] = []

    def start_chunks(self, indices: list[int]) -> list[dict[str, Any]]:
        chunks = super().start_chunks(indices)
        for chunk in chunks:
            for choice in chunk["choices"]:
                choice["delta"]["citations"] = self.citations
        return chunks

    def choice(self, choice: ChoiceText) -> dict[str, Any]:
        out = super().choice(choice)
        out["message"]["citations"] = self.citations
        return out


class FileSearchRun(GenerationRun):
    """A chat call that first retrieves sources for its last user message. The stores are
    resolved on the path (after admit_request), so an unknown one is a metered 404."""

    def __init__(
        self,
        call: InferenceCall,
        fmt: CitingChatFormat,
        state: AppState,
        gateway: Gateway,
        options: Any,  # ownllm.api.schemas.FileSearchOptions
    ) -> None:
        super().__init__(call, fmt, state, gateway)
        self.options = options
        self.hits: list[Hit] | None = None

    async def prepare(self) -> None:
        if self.hits is None:  # once: a guard redaction prepares again, over the sources
            _, self.hits = await retrieve_sources(self.state, self.call, self.options)
            self.fmt.citations = citations(self.hits)
        await super().prepare()


async def retrieve_sources(
    state: AppState, call: InferenceCall, options: Any
) -> tuple[str, list[Hit]]:
    """(the query, the hits) for a call's last user message in the stores `options` names
    (a `FileSearchOptions`); the hits go into the call's messages as numbered sources."""
    retrieval = await asyncio.to_thread(
        Retrieval.resolve,
        state,
        call.principal,
        options.vector_store_ids,
        options.max_num_results,
        options.filters,
        options.ranking_options,
        "file_search.vector_store_ids",
    )
    query = query_of(call.messages)
    hits: list[Hit] = []
    if query:
        model = await embedding_model(state)
        vectors = await asyncio.to_thread(model.embed, [query])  # truncated to fit
        hits = await retrieval.run(state, vectors, model.dimensions)
    call.messages = with_sources(call.messages, hits)
    return query, hits
