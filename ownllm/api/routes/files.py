"""The OpenAI Files API: upload (multipart, streamed to disk), list, retrieve, content, delete.

    POST   /v1/files                 multipart: `file`, `purpose`
    GET    /v1/files                 ?purpose= &after= &limit= (1..10000, default 10000) &order=
    GET    /v1/files/{file_id}
    GET    /v1/files/{file_id}/content
    DELETE /v1/files/{file_id}

The upload body is parsed as it arrives (python-multipart's push parser): the
file part goes chunk by chunk into a temporary file with its sha256, and an
upload over `tuning.max_file_bytes` is refused with 413 as soon as it crosses
the cap (or at once, from Content-Length), and one past the tenant's storage
quota (`store.tenant_quota_bytes`) with 429 `insufficient_quota` as soon as it
crosses that, leaving nothing on disk.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from ownllm.api.pages import cursor_page
from ownllm.api.state import AppState, get_state
from ownllm.errors import InvalidRequestError, PayloadTooLargeError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal
from ownllm.store.quota import StorageQuota, storage_quota
from ownllm.tuning import files as store

router = APIRouter(prefix="/v1", tags=["files"])
MAX_FIELD_BYTES = 4096


class _Upload:
    """Push-parser callbacks: the `file` part streams to a PartialFile, other parts are small."""

    def __init__(self, state: AppState, quota: StorageQuota | None, used_bytes: int) -> None:
        self.state, self.quota, self.used_bytes = state, quota, used_bytes
        self.fields: dict[str, bytes] = {}
        self.file: store.PartialFile | None = None
        self.filename = "upload"
        self._name: str | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.error: Exception | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: setattr(
                self, "_header_field", self._header_field + d[s:e]
            ),
            "on_header_value": lambda d, s, e: setattr(
                self, "_header_value", self._header_value + d[s:e]
            ),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
        }

    def _begin(self) -> None:
        self._headers, self._name = {}, None

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.file is not None:
                raise InvalidRequestError("Only one 'file' part is allowed.", param="file")
            raw = options.get(b"filename", b"upload")
            self.filename = raw.decode("utf-8", "replace") or "upload"
            self.file = store.PartialFile(
                self.state.data_dir,
                self.state.config.tuning.max_file_bytes,
                self.quota,
                self.used_bytes,
            )

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file" and self.file is not None:
            self.file.write(data[start:end])
        elif self._name:
            value = self.fields.get(self._name, b"") + data[start:end]
            if len(value) > MAX_FIELD_BYTES:
                raise InvalidRequestError(f"'{self._name}' is too long.", param=self._name)
            self.fields[self._name] = value


@router.post("/files")
async def create_file(
    request: Request,
    principal: Principal = Depends(require_scope("files")),
    state: AppState = Depends(get_state),
) -> dict:
    cap = state.config.tuning.max_file_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap + 64 * 1024:
        raise PayloadTooLargeError(
            f"The file is larger than the {cap:,}-byte limit (setting tuning.max_file_bytes).",
            param="file",
        )
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequestError(
            "Upload the file as multipart/form-data with 'file' and 'purpose' fields.",
            param="file",
        )
    quota = storage_quota(principal, state.config.store.tenant_quota_bytes)
    used = await run_in_threadpool(quota.used, state.db) if quota is not None else 0
    upload = _Upload(state, quota, used)
    parser = MultipartParser(options[b"boundary"], upload.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException:
        if upload.file is not None:
            upload.file.discard()
        raise
    purpose = upload.fields.get("purpose", b"").decode("utf-8", "replace").strip()
    problem = None
    if upload.file is None:
        problem = InvalidRequestError("Missing required parameter: 'file'.", param="file")
    elif not purpose:
        problem = InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose")
    elif purpose not in store.PURPOSES:
        problem = InvalidRequestError(
            f"Invalid purpose '{purpose}' (use one of {', '.join(store.PURPOSES)}).",
            param="purpose",
        )
    if problem is not None:
        if upload.file is not None:
            upload.file.discard()
        raise problem
    row = await run_in_threadpool(
        upload.file.commit, state.db, principal.tenant_id, upload.filename, purpose
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
