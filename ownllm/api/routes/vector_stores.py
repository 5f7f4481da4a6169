"""The OpenAI vector store API: stores, their files, file batches (search is in
`ownllm.api.routes.vector_search`).

    POST/GET          /v1/vector_stores                       ?limit= &order= &after= &before=
    GET/POST/DELETE   /v1/vector_stores/{id}
    POST/GET          /v1/vector_stores/{id}/files            ?filter= (a status) and the page
    GET/POST/DELETE   /v1/vector_stores/{id}/files/{file_id}  (POST: attributes)
    GET               /v1/vector_stores/{id}/files/{file_id}/content
    POST              /v1/vector_stores/{id}/file_batches
    GET               /v1/vector_stores/{id}/file_batches/{batch_id}
    POST              /v1/vector_stores/{id}/file_batches/{batch_id}/cancel
    GET               /v1/vector_stores/{id}/file_batches/{batch_id}/files

These need the `files` scope. Attaching queues the file for the ingestion worker
(`ownllm.vectors.ingest`, run by `ownllm serve` or `ownllm worker`); the answer comes at
once with `status: in_progress`. Another tenant's store, file or batch is a 404.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from ownllm.api.pages import cursor_page
from ownllm.api.state import AppState, get_state
from ownllm.api.vector_schemas import (
    CreateFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    UpdateFileAttributesRequest,
    UpdateVectorStoreRequest,
)
from ownllm.errors import InvalidRequestError, ModelNotFoundError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal
from ownllm.models.embedding import EMBEDDING_MODEL_ID, is_embedding_model
from ownllm.vectors import stores
from ownllm.vectors.chunking import parse_chunking
from ownllm.vectors.filters import check_attributes

router = APIRouter(prefix="/v1", tags=["vector_stores"])

Order = Literal["asc", "desc"]
FILES = require_scope("files")


def _embedding_model(name: str | None) -> str:
    if name is None or is_embedding_model(name):
        return EMBEDDING_MODEL_ID
    raise ModelNotFoundError(
        f"The model '{name}' does not exist or is not an embedding model; use "
        f"'{EMBEDDING_MODEL_ID}'.",
        param="embedding_model",
    )


@router.post("/vector_stores")
async def create_vector_store(
    body: CreateVectorStoreRequest,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    chunking = parse_chunking(body.chunking_strategy)
    expires_after = stores.check_expires_after(body.expires_after)
    model = _embedding_model(body.embedding_model)

    def create():
        row = stores.create_store(
            state.db,
            principal,
            name=body.name,
            description=body.description,
            metadata=body.metadata,
            expires_after=expires_after,
            embedding_model=model,
        )
        if body.file_ids:
            try:
                stores.attach_files(
                    state.db,
                    principal,
                    row,
                    [(f, chunking, None) for f in body.file_ids],
                    param="file_ids",
                    batch_id=None,
                )
            except BaseException:
                stores.delete_store(state.db, principal, row.id)
                raise
        return stores.store_object(state.db, row)

    return await run_in_threadpool(create)


@router.get("/vector_stores")
async def list_vector_stores(
    limit: int = Query(20, ge=1, le=100),
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    def page():
        rows, has_more = stores.list_stores(
            state.db, principal, after=after, before=before, limit=limit, order=order
        )
        return cursor_page([stores.store_object(state.db, r) for r in rows], has_more)

    return await run_in_threadpool(page)


@router.get("/vector_stores/{vector_store_id}")
async def retrieve_vector_store(
    vector_store_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    def get():
        return stores.store_object(state.db, stores.get_store(state.db, principal, vector_store_id))

    return await run_in_threadpool(get)


@router.post("/vector_stores/{vector_store_id}")
async def modify_vector_store(
    vector_store_id: str,
    body: UpdateVectorStoreRequest,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    changes = body.model_dump(exclude_unset=True)
    if "expires_after" in changes:
        changes["expires_after"] = stores.check_expires_after(changes["expires_after"])

    def update():
        row = stores.update_store(state.db, principal, vector_store_id, changes)
        return stores.store_object(state.db, row)

    return await run_in_threadpool(update)


@router.delete("/vector_stores/{vector_store_id}")
async def delete_vector_store(
    vector_store_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(stores.delete_store, state.db, principal, vector_store_id)
    state.vector_index.drop(row.id)
    return {"id": row.id, "object": "vector_store.deleted", "deleted": True}


# -- files ------------------------------------------------------------------------------------


@router.post("/vector_stores/{vector_store_id}/files")
async def create_vector_store_file(
    vector_store_id: str,
    body: CreateVectorStoreFileRequest,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    chunking = parse_chunking(body.chunking_strategy)
    attributes = check_attributes(body.attributes)

    def attach():
        store = stores.get_store(state.db, principal, vector_store_id)
        (row,) = stores.attach_files(
            state.db, principal, store, [(body.file_id, chunking, attributes)]
        )
        return stores.file_object(row)

    return await run_in_threadpool(attach)


def _status(value: str | None) -> str | None:
    if value is not None and value not in stores.STATUSES:
        raise InvalidRequestError(
            f"Invalid 'filter': {value!r}; expected one of {', '.join(stores.STATUSES)}.",
            param="filter",
        )
    return value


@router.get("/vector_stores/{vector_store_id}/files")
async def list_vector_store_files(
    vector_store_id: str,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
    filter: str | None = None,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    status = _status(filter)

    def page():
        store = stores.get_store(state.db, principal, vector_store_id)
        rows, has_more = stores.list_store_files(
            state.db, store, status=status, after=after, before=before, limit=limit, order=order
        )
        return cursor_page([stores.file_object(r) for r in rows], has_more)

    return await run_in_threadpool(page)


@router.get("/vector_stores/{vector_store_id}/files/{file_id}")
async def retrieve_vector_store_file(
    vector_store_id: str,
    file_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    def get():
        store = stores.get_store(state.db, principal, vector_store_id)
        return stores.file_object(stores.get_store_file(state.db, store, file_id))

    return await run_in_threadpool(get)


@router.post("/vector_stores/{vector_store_id}/files/{file_id}")
async def update_vector_store_file(
    vector_store_id: str,
    file_id: str,
    body: UpdateFileAttributesRequest,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    attributes = check_attributes(body.attributes)

    def update():
        store = stores.get_store(state.db, principal, vector_store_id)
        return stores.file_object(stores.update_attributes(state.db, store, file_id, attributes))

    return await run_in_threadpool(update)


@router.delete("/vector_stores/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(
    vector_store_id: str,
    file_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    def remove():
        store = stores.get_store(state.db, principal, vector_store_id)
        stores.remove_file(state.db, store, file_id)

    await run_in_threadpool(remove)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.get("/vector_stores/{vector_store_id}/files/{file_id}/content")
async def vector_store_file_content(
    vector_store_id: str,
    file_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    """The file's text as it was chunked (chunks in order, overlaps included)."""

    def content():
        store = stores.get_store(state.db, principal, vector_store_id)
        return stores.file_chunks(state.db, store, file_id)

    texts = await run_in_threadpool(content)
    return {
        "object": "vector_store.file_content.page",
        "data": [{"type": "text", "text": t} for t in texts],
        "has_more": False,
        "next_page": None,
    }


# -- batches ----------------------------------------------------------------------------------


@router.post("/vector_stores/{vector_store_id}/file_batches")
async def create_file_batch(
    vector_store_id: str,
    body: CreateFileBatchRequest,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    if (body.file_ids is None) == (body.files is None):
        raise InvalidRequestError(
            "Give exactly one of 'file_ids' and 'files'.",
            param="file_ids" if body.file_ids is None else "files",
        )
    if body.file_ids is not None:
        chunking = parse_chunking(body.chunking_strategy)
        attributes = check_attributes(body.attributes)
        files = [(f, chunking, attributes) for f in body.file_ids]
        param = "file_ids"
    else:
        files = [
            (
                f.file_id,
                parse_chunking(f.chunking_strategy, f"files[{i}].chunking_strategy"),
                check_attributes(f.attributes, f"files[{i}].attributes"),
            )
            for i, f in enumerate(body.files)
        ]
        param = "files"

    def create():
        store = stores.get_store(state.db, principal, vector_store_id)
        batch = stores.create_batch(state.db, principal, store, files, param)
        return stores.batch_object(state.db, batch)

    return await run_in_threadpool(create)


@router.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}")
async def retrieve_file_batch(
    vector_store_id: str,
    batch_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    def get():
        store = stores.get_store(state.db, principal, vector_store_id)
        return stores.batch_object(state.db, stores.get_batch(state.db, store, batch_id))

    return await run_in_threadpool(get)


@router.post("/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(
    vector_store_id: str,
    batch_id: str,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    def cancel():
        store = stores.get_store(state.db, principal, vector_store_id)
        return stores.batch_object(state.db, stores.cancel_batch(state.db, store, batch_id))

    return await run_in_threadpool(cancel)


@router.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
async def list_file_batch_files(
    vector_store_id: str,
    batch_id: str,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
    filter: str | None = None,
    principal: Principal = Depends(FILES),
    state: AppState = Depends(get_state),
) -> dict:
    status = _status(filter)

    def page():
        store = stores.get_store(state.db, principal, vector_store_id)
        batch = stores.get_batch(state.db, store, batch_id)
        rows, has_more = stores.list_store_files(
            state.db,
            store,
            status=status,
            after=after,
            before=before,
            limit=limit,
            order=order,
            batch_id=batch.id,
        )
        return cursor_page([stores.file_object(r) for r in rows], has_more)

    return await run_in_threadpool(page)
