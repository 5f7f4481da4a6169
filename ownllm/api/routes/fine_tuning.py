"""The OpenAI Fine-tuning Jobs API, backed by the job queue that `ownllm worker` drains.

    POST /v1/fine_tuning/jobs                       create (model: a base id or an `ft:` model)
    GET  /v1/fine_tuning/jobs                       ?after= &limit=  newest first
    GET  /v1/fine_tuning/jobs/{id}
    POST /v1/fine_tuning/jobs/{id}/cancel
    GET  /v1/fine_tuning/jobs/{id}/events           ?after= &limit=  newest first
    GET  /v1/fine_tuning/jobs/{id}/checkpoints      ?after= &limit=  newest first

Creating a job checks the files' structure at once (a bad file makes the job
`failed` with error{code, message, param} and line numbers, as OpenAI does);
tokenisation and the context-length check happen in the worker. `method` is
OpenAI's: `{"type": "supervised"}` (the default: chat JSONL) or `{"type": "dpo",
"dpo": {"hyperparameters": {"beta", …}}}` (preference JSONL, see
`ownllm.tuning.preferences`); a DPO job may start from an `ft:` model. LoRA
settings travel in an ownllm extension field: `"lora": {"r", "alpha",
"dropout", "target_modules", "base_quantization"}`; `base_quantization` ("none",
"int8", "q8_0", "q4_1") trains the adapter on a quantised frozen base (QLoRA-style,
see `ownllm.tuning.frozen`). `"promote": {"alias", "eval"}` (another extension) makes the
job the first step of the unattended loop (`ownllm.evals.loop`): once trained, the adapter
is evaluated and red-teamed and the alias promoted to it if its gate passes; the job's
`promotion` and events say how it went. Another tenant's job is a 404.
"""

from __future__ import annotations

import random
import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from ownllm.api.pages import cursor_page
from ownllm.api.state import AppState, get_state
from ownllm.errors import InvalidRequestError, ModelNotFoundError, NotFoundError
from ownllm.evals import loop
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal
from ownllm.ids import new_id
from ownllm.store.schema import FineTuningJob, JobCheckpoint, JobEvent
from ownllm.store.tenancy import visible, visible_rows
from ownllm.tuning import files as file_store
from ownllm.tuning import jobs
from ownllm.tuning.data import DataError, read_examples
from ownllm.tuning.hyperparams import ALL_TARGETS, LoraSettings, lora_settings, requested_method
from ownllm.tuning.preferences import read_pairs

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: Any = None  # validated by requested_method, which names the bad field
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    lora: dict[str, Any] | None = None
    promote: dict[str, Any] | None = None


def job_object(job: FineTuningJob, promotion: dict | None = None) -> dict:
    """The OpenAI job object, with ownllm's `lora` and, for a job that promotes an alias,
    `promotion` (the unattended loop's state: `ownllm.evals.loop`)."""
    hp = job.hyperparameters or {}
    out = {
        "id": job.id,
        "object": "fine_tuning.job",
        "model": job.model,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.tenant_id,
        "result_files": list(job.result_files or []),
        "status": job.status,
        "validation_file": job.validation_file,
        "training_file": job.training_file,
        "hyperparameters": hp,
        "method": {"type": job.method, job.method: {"hyperparameters": hp}},
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "user_provided_suffix": job.suffix,
        "seed": job.seed,
        "estimated_finish": job.estimated_finish,
        "integrations": [],
        "metadata": job.metadata_,
        "lora": job.lora,
    }
    if promotion is not None:
        out["promotion"] = promotion
    return out


def job_view(state: AppState, job: FineTuningJob) -> dict:
    return job_object(job, loop.promotions_of(state.db, [job.id]).get(job.id))


def _default_lora(state: AppState) -> LoraSettings:
    t = state.config.tuning
    targets = (
        ALL_TARGETS
        if t.lora_targets == "all-linear"
        else tuple(x.strip() for x in t.lora_targets.split(",") if x.strip())
    )
    return LoraSettings(
        r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout, target_modules=targets
    )


def _resolve_model(state: AppState, principal: Principal, model: str) -> tuple[str, str | None]:
    """(base model id, parent adapter id) for the requested model."""
    if model == state.model_id:
        return model, None
    if model.startswith("ft:"):
        from ownllm.adapters.registry import resolve_model

        record = resolve_model(state.db, principal, model)
        if record is not None and record.base_model == state.model_id:
            return record.base_model, record.id
    raise ModelNotFoundError(
        f"The model '{model}' does not exist or cannot be fine-tuned here "
        f"(use {state.model_id} or one of your ft: models).",
        param="model",
    )


def _check_file(state: AppState, principal: Principal, file_id: str, param: str):
    try:
        row = file_store.get_file(state.db, principal, file_id, param=param)
    except NotFoundError:
        raise InvalidRequestError(
            f"File {file_id} not found.", param=param, code="invalid_file"
        ) from None
    if row.purpose != "fine-tune":
        raise InvalidRequestError(
            f"File {file_id} has purpose '{row.purpose}'; upload it with purpose 'fine-tune'.",
            param=param,
            code="invalid_file",
        )
    return row


def _create(state: AppState, principal: Principal, body: CreateJob) -> FineTuningJob:
    base, parent = _resolve_model(state, principal, body.model)
    train = _check_file(state, principal, body.training_file, "training_file")
    valid = (
        _check_file(state, principal, body.validation_file, "validation_file")
        if body.validation_file
        else None
    )
    method, requested = requested_method(body.method, body.hyperparameters)
    lora = lora_settings(body.lora, _default_lora(state))
    promote = (
        loop.check_request(state.db, principal, body.promote) if body.promote is not None else None
    )
    job = FineTuningJob(
        id=new_id("ftjob"),
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,  # the ledger row of its training names the key
        model=body.model,
        base_model=base,
        parent_adapter_id=parent,
        training_file=train.id,
        validation_file=valid.id if valid else None,
        method=method,
        hyperparameters=requested,
        lora=lora.to_dict(),
        suffix=body.suffix or None,
        seed=body.seed if body.seed is not None else random.randrange(2**31),
        metadata_=body.metadata,
        status="validating_files",
        result_files=[],
        created_at=int(time.time()),
        cancel_requested=False,
        attempts=0,
    )
    with state.db.session() as s:
        s.add(job)
    if promote is not None:
        loop.create(state.db, job, promote)
    jobs.add_event(state.db, job.id, "Validating training file: " + train.id)
    try:
        for row, param in ((train, "training_file"), (valid, "validation_file")):
            if row is not None:
                read = read_pairs if method == "dpo" else read_examples
                read(file_store.file_path(state.data_dir, row), param=param)
    except DataError as e:
        error = {"code": e.code, "message": e.message, "param": e.param}
        jobs.set_status(state.db, job.id, "failed", error=error)
        jobs.add_event(state.db, job.id, e.message, level="error")
    else:
        jobs.set_status(state.db, job.id, "queued")
        jobs.add_event(state.db, job.id, "Files validated; job queued.")
    return jobs.get_job(state.db, job.id)


def _own_job(state: AppState, principal: Principal, job_id: str) -> FineTuningJob:
    job = jobs.get_job(state.db, job_id)
    return visible(job, principal, f"No fine-tuning job {job_id}.", "fine_tuning_job_id")


@router.post("/jobs")
async def create_job(
    body: CreateJob,
    principal: Principal = Depends(require_scope("fine-tuning")),
    state: AppState = Depends(get_state),
) -> dict:
    job = await run_in_threadpool(_create, state, principal, body)
    return await run_in_threadpool(job_view, state, job)


def _page(state: AppState, query, model, after_id: str | None, limit: int, order_col):
    """Newest first; `after_id` is the last id of the previous page."""
    with state.db.session() as s:
        if after_id:
            anchor = s.get(model, after_id)
            if anchor is not None:
                query = query.where(order_col < getattr(anchor, order_col.key))
        rows = list(s.scalars(query.order_by(order_col.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


@router.get("/jobs")
async def list_jobs(
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    principal: Principal = Depends(require_scope("fine-tuning")),
    state: AppState = Depends(get_state),
) -> dict:
    query = visible_rows(select(FineTuningJob), FineTuningJob, principal)
    # job ids sort in creation order (see ownllm.ids.new_id)
    rows, more = await run_in_threadpool(
        _page, state, query, FineTuningJob, after, limit, FineTuningJob.id
    )
    promotions = await run_in_threadpool(loop.promotions_of, state.db, [j.id for j in rows])
    data = [job_object(j, promotions.get(j.id)) for j in rows]
    return {"object": "list", "data": data, "has_more": more}


@router.get("/jobs/{job_id}")
async def retrieve_job(
    job_id: str,
    principal: Principal = Depends(require_scope("fine-tuning")),
    state: AppState = Depends(get_state),
) -> dict:
    job = await run_in_threadpool(_own_job, state, principal, job_id)
    return await run_in_threadpool(job_view, state, job)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: str,
    principal: Principal = Depends(require_scope("fine-tuning")),
    state: AppState = Depends(get_state),
) -> dict:
    job = await run_in_threadpool(_own_job, state, principal, job_id)
    if job.status in jobs.FINAL:
        raise InvalidRequestError(f"The job is already {job.status}.", param="fine_tuning_job_id")
    await run_in_threadpool(jobs.request_cancel, state.db, job_id)
    job = await run_in_threadpool(jobs.get_job, state.db, job_id)
    return await run_in_threadpool(job_view, state, job)


@router.get("/jobs/{job_id}/events")
async def list_events(
    job_id: str,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
    principal: Principal = Depends(require_scope("fine-tuning")),
    state: AppState = Depends(get_state),
) -> dict:
    await run_in_threadpool(_own_job, state, principal, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    rows, more = await run_in_threadpool(_page, state, query, JobEvent, after, limit, JobEvent.seq)
    data = [
        {
            "id": e.id,
            "object": "fine_tuning.job.event",
            "created_at": e.created_at,
            "level": e.level,
            "message": e.message,
            "data": e.data or {},
            "type": e.type,
        }
        for e in rows
    ]
    return {"object": "list", "data": data, "has_more": more}


@router.get("/jobs/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
    principal: Principal = Depends(require_scope("fine-tuning")),
    state: AppState = Depends(get_state),
) -> dict:
    await run_in_threadpool(_own_job, state, principal, job_id)
    query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    rows, more = await run_in_threadpool(
        _page, state, query, JobCheckpoint, after, limit, JobCheckpoint.step
    )
    data = [
        {
            "id": c.id,
            "object": "fine_tuning.job.checkpoint",
            "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.model_name,
            "fine_tuning_job_id": job_id,
            "step_number": c.step,
            "metrics": c.metrics,
        }
        for c in rows
    ]
    return cursor_page(data, more)
