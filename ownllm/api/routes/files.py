"""The OpenAI Files API: upload (multipart, streamed to disk), list, retrieve, content, delete.

    POST   /v1/files                 multipart: `file`, `purpose`
    GET    /v1/files                 ?purpose= &after= &limit= (1..10000, default 10000) &order=
    GET    /v1/files/{file_id}
    GET    /v1/files/{file_id}/content
    DELETE /v1/files/{file_id}

The upload body is parsed as it arrives (`ownllm.api.uploads`): the file part
goes chunk by chunk into a temporary file with its sha256, and an upload over
`tuning.max_file_bytes` is refused with 413 as soon as it crosses the cap (or
at once, from Content-Length, by `ownllm.api.bodies` before the body is read),
and one past the tenant's storage quota (`store.tenant_quota_bytes`) with 429
`insufficient_quota` as soon as it crosses that, leaving nothing on disk.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ownllm.api.bodies import MULTIPART_SLACK, BodyLimit, upload_limit
from ownllm.api.pages import cursor_page
from ownllm.api.state import AppState, get_state
from ownllm.api.uploads import multipart_boundary, read_form
from ownllm.config import Config
from ownllm.errors import InvalidRequestError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal
from ownllm.store.quota import storage_quota
from ownllm.tuning import files as store

router = APIRouter(prefix="/v1", tags=["files"])


def _file_limit(config: Config) -> BodyLimit:
    cap = config.tuning.max_file_bytes
    return BodyLimit(
        cap + MULTIPART_SLACK,
        f"The file is larger than the {cap:,}-byte limit (setting tuning.max_file_bytes).",
        code="file_too_large",
        param="file",
    )


@router.post("/files")
@upload_limit(_file_limit)
async def create_file(
    request: Request,
    principal: Principal = Depends(require_scope("files")),
    state: AppState = Depends(get_state),
) -> dict:
    boundary = multipart_boundary(request, "'file' and 'purpose'")
    quota = storage_quota(principal, state.config.store.tenant_quota_bytes)
    used = await run_in_threadpool(quota.used, state.db) if quota is not None else 0
    cap = state.config.tuning.max_file_bytes
    form = await read_form(
        request, boundary, lambda _: store.PartialFile(state.data_dir, cap, quota, used)
    )
    upload = form.file
    purpose = form.fields.get("purpose", "").strip()
    problem = None
    if upload is None:
        problem = InvalidRequestError("Missing required parameter: 'file'.", param="file")
    elif not purpose:
        problem = InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose")
    elif purpose not in store.PURPOSES:
        problem = InvalidRequestError(
            f"Invalid purpose '{purpose}' (use one of {', '.join(store.PURPOSES)}).",
            param="purpose",
        )
    if problem is not None:
        if upload is not None:
            upload.discard()
        raise problem
    row = await run_in_threadpool(
        upload.commit, state.db, principal.tenant_id, form.filename or "upload", purpose
    )
    return store.file_object(row)


@router.get("/files")
async def list_files(
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
    principal: Principal = Depends(require_scope("files")),
    state: AppState = Depends(get_state),
) -> dict:
    rows, has_more = await run_in_threadpool(
        store.list_files,
        state.db,
        principal,
        purpose=purpose,
        after=after,
        limit=limit,
        order=order,
    )
    return cursor_page([store.file_object(r) for r in rows], has_more)


@router.get("/files/{file_id}")
async def retrieve_file(
    file_id: str,
    principal: Principal = Depends(require_scope("files")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(store.get_file, state.db, principal, file_id)
    return store.file_object(row)


@router.get("/files/{file_id}/content")
async def file_content(
    file_id: str,
    principal: Principal = Depends(require_scope("files")),
    state: AppState = Depends(get_state),
) -> FileResponse:
    row = await run_in_threadpool(store.get_file, state.db, principal, file_id)
    return FileResponse(
        store.file_path(state.data_dir, row),
        media_type="application/octet-stream",
        filename=row.filename,
    )


@router.delete("/files/{file_id}")
async def delete_file(
    file_id: str,
    principal: Principal = Depends(require_scope("files")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(store.delete_file, state.db, state.data_dir, principal, file_id)
    return {"id": row.id, "object": "file", "deleted": True}
