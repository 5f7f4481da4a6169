"""/v1/adapters: list, show, import, compose, export and delete LoRA adapters.

The same operations as `ownllm adapters …`, for automation; every route needs
the `adapters` scope and sees only the caller's own and public adapters.
`{adapter}` is an id (`adapter-…`) or one of the caller's names. Imports and
compositions are refused past the engine's LoRA rank limit (400) and past
the tenant's storage quota (429 `insufficient_quota`).

    GET    /v1/adapters                   list
    GET    /v1/adapters/{adapter}         show (by name or id)
    POST   /v1/adapters                   import: multipart `file` (.tar.gz/.tgz/.tar/.zip
                                          of a PEFT adapter), `name`, optional `is_public`
    POST   /v1/adapters/compose           {"name", "method", "adapters": [{"id", "weight"}],
                                           "density", "seed", "majority_sign_method"}
    POST   /v1/adapters/{adapter}/export  {"format": "hf"|"gguf"|"gguf-lora", "type": "f16"|"q8_0"}
                                          answers the file (GGUF) or a .tar.gz (hf); one
                                          usage-ledger row (adapters.export, bytes sent)
    DELETE /v1/adapters/{adapter}         also unloads it from the engine

`adapter_models` gives the adapters as `/v1/models` entries (parent = base).
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel as Body
from pydantic import Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ownllm.adapters import registry
from ownllm.adapters.operations import (
    ARCHIVE_SUFFIXES,
    BaseModel,
    compose_adapters,
    export_adapter,
    import_adapter,
    is_archive,
)
from ownllm.api.bodies import MULTIPART_SLACK, BodyLimit, upload_limit
from ownllm.api.state import AppState, get_state
from ownllm.api.uploads import multipart_boundary, read_form
from ownllm.config import Config
from ownllm.errors import InvalidRequestError, ModelNotFoundError, PayloadTooLargeError, ServerError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal
from ownllm.gateway.usage import UsageLedger, UsageRow
from ownllm.ids import new_id
from ownllm.store.quota import StorageQuota, storage_quota

router = APIRouter(prefix="/v1", tags=["adapters"])
MAX_UPLOAD_BYTES = 2 << 30
TOO_LARGE = "the archive is larger than 2 GiB"


class AdapterWeightBody(Body):
    id: str = Field(description="adapter name or id")
    weight: float = 1.0


class ComposeBody(Body):
    name: str
    method: str = "cat"
    adapters: list[AdapterWeightBody] = Field(min_length=1)
    density: float | None = None
    seed: int = 0
    majority_sign_method: str = "total"
    is_public: bool = False


class ExportBody(Body):
    format: str = "hf"
    type: str = "f16"


def _require_db(state: AppState) -> None:
    if state.db is None or state.model is None:
        raise ServerError("This server has no database or base model; adapters need both.")


def _base(state: AppState) -> BaseModel:
    return BaseModel(id=state.model_id, path=state.model.path, sha256=state.model.weights_sha256)


def _quota(state: AppState, principal: Principal) -> StorageQuota | None:
    return storage_quota(principal, state.config.store.tenant_quota_bytes)


def adapter_models(state: AppState, principal: Principal) -> list[dict]:
    """The principal's adapters of the served base model as OpenAI model objects, each
    named so that the name resolves back to it (its id where its name means another)."""
    if state.db is None or state.model is None:
        return []
    records = registry.list_adapters(state.db, principal)
    names = registry.model_names(records, principal)
    return [
        {
            "id": names[r.id],
            "object": "model",
            "created": r.created_at,
            "owned_by": r.tenant_id,
            "root": state.model_id,
            "parent": state.model_id,
            "adapter_id": r.id,
        }
        for r in records
        if r.base_sha256 == state.model.weights_sha256
    ]


@router.get("/adapters")
async def list_adapters(
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    _require_db(state)
    records = await run_in_threadpool(registry.list_adapters, state.db, principal)
    return {"object": "list", "data": [r.to_dict() for r in records]}


def _archive_limit(_config: Config) -> BodyLimit:
    return BodyLimit(
        MAX_UPLOAD_BYTES + MULTIPART_SLACK, TOO_LARGE, code="file_too_large", param="file"
    )


class _Archive:
    """The uploaded archive, written as it arrives into the route's scratch directory."""

    def __init__(self, path: Path) -> None:
        self.path, self.size = path, 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close/discard)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_UPLOAD_BYTES:
            raise PayloadTooLargeError(TOO_LARGE, param="file")
        self._f.write(chunk)

    def close(self) -> None:
        self._f.close()

    discard = close  # the route removes its scratch directory either way


def _form_bool(value: str, param: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("", "0", "false", "f", "no", "n", "off"):
        return False
    raise InvalidRequestError(
        f"Invalid value for '{param}': {value!r} is not a boolean.", param=param
    )


IMPORT_FORM = {  # the route reads its body as a stream, so FastAPI cannot describe it
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a .tar.gz, .tgz, .tar or .zip of a PEFT adapter",
                        },
                        "name": {"type": "string"},
                        "is_public": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


@router.post("/adapters", openapi_extra=IMPORT_FORM)
@upload_limit(_archive_limit)
async def import_adapter_route(
    request: Request,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    _require_db(state)
    boundary = multipart_boundary(request, "'file' and 'name'")
    scratch = state.data_dir.tmp / f"upload-{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)

    def open_archive(filename: str) -> _Archive:
        filename = Path(filename or "adapter").name
        if not is_archive(filename):
            raise InvalidRequestError(
                f"upload a {' or '.join(ARCHIVE_SUFFIXES)} archive of a PEFT adapter directory",
                param="file",
            )
        return _Archive(scratch / filename)

    try:
        form = await read_form(request, boundary, open_archive)
        archive = form.file
        if archive is None:
            raise InvalidRequestError("Missing required parameter: 'file'.", param="file")
        archive.close()
        name = form.fields.get("name", "")
        if not name:
            raise InvalidRequestError("Missing required parameter: 'name'.", param="name")
        record = await run_in_threadpool(
            import_adapter,
            state.db,
            state.data_dir,
            principal,
            archive.path,
            name=name,
            base=_base(state),
            max_rank=state.config.engine.max_lora_rank,
            quota=_quota(state, principal),
            is_public=_form_bool(form.fields.get("is_public", ""), "is_public"),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return record.to_dict()


@router.post("/adapters/compose")
async def compose_route(
    body: ComposeBody,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    _require_db(state)
    record = await run_in_threadpool(
        lambda: compose_adapters(
            state.db,
            state.data_dir,
            principal,
            name=body.name,
            adapters=[(a.id, a.weight) for a in body.adapters],
            method=body.method,
            density=body.density,
            seed=body.seed,
            majority_sign_method=body.majority_sign_method,
            max_rank=state.config.engine.max_lora_rank,
            quota=_quota(state, principal),
            is_public=body.is_public,
        )
    )
    return record.to_dict()


@router.post("/adapters/{ref:path}/export")
async def export_route(
    ref: str,
    body: ExportBody,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
):
    _require_db(state)
    export_id = new_id("export")
    scratch = state.data_dir.tmp / export_id
    scratch.mkdir(parents=True)
    cleanup = BackgroundTask(shutil.rmtree, scratch, ignore_errors=True)
    started, record = time.monotonic(), None
    try:
        record = await run_in_threadpool(registry.get_adapter, state.db, principal, ref)
        stem = record.name.replace("/", "_").replace(":", "_")
        suffix = {"hf": "", "gguf": f".{body.type}.gguf", "gguf-lora": ".lora.gguf"}
        output = scratch / f"{stem}{suffix.get(body.format, '')}"
        path = await run_in_threadpool(
            lambda: export_adapter(
                state.db,
                state.data_dir,
                principal,
                record.id,
                fmt=body.format,
                output=output,
                base=_base(state),
                gguf_type=body.type,
            )
        )
        if body.format == "hf":
            packed = scratch / f"{stem}.tar.gz"
            await run_in_threadpool(_tar_dir, path, packed)
            path, media_type = packed, "application/gzip"
        else:
            media_type = "application/octet-stream"
        _meter_export(
            gateway.ledger, principal, export_id, record, started, num_bytes=path.stat().st_size
        )
        return FileResponse(path, media_type=media_type, filename=path.name, background=cleanup)
    except BaseException as e:
        shutil.rmtree(scratch, ignore_errors=True)
        if record is not None:  # a refused or failed export of an adapter the caller sees
            _meter_export(gateway.ledger, principal, export_id, record, started, error=e)
        raise


def _meter_export(
    ledger: UsageLedger, principal, export_id, record, started, *, num_bytes=0, error=None
):
    """The export's ledger row: the bytes sent, or the error that stopped it."""
    code = getattr(error, "status_code", 500) if error is not None else 200
    ledger.record(
        UsageRow(
            request_id=export_id,
            tenant_id=principal.tenant_id,
            key_id=principal.key_id,
            endpoint="adapters.export",
            model=record.name,
            adapter_id=record.id,
            status="ok" if error is None else "error",
            bytes=num_bytes,
            latency_ms=(time.monotonic() - started) * 1000,
            http_status=code,
            error_code=None if error is None else getattr(error, "code", None) or "internal_error",
        )
    )


def _tar_dir(directory: Path, out: Path) -> None:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(directory, arcname=directory.name)


@router.get("/adapters/{ref:path}")
async def show_adapter(
    ref: str,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    _require_db(state)
    record = await run_in_threadpool(registry.get_adapter, state.db, principal, ref)
    return record.to_dict()


@router.delete("/adapters/{ref:path}")
async def delete_adapter_route(
    ref: str,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    _require_db(state)
    record = await run_in_threadpool(
        registry.delete_adapter, state.db, state.data_dir, principal, ref
    )
    if state.backend is not None:
        with contextlib.suppress(ModelNotFoundError):  # it was never loaded
            await state.backend.unload_adapter(record.id)
    return {"id": record.id, "name": record.name, "object": "adapter.deleted", "deleted": True}
