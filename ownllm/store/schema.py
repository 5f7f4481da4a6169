"""The one SQLAlchemy schema (SQLite by default, PostgreSQL by URL).

Every user-owned row carries `tenant_id`; queries filter on it in the
gateway, so isolation is one WHERE clause away from every read. Ids are the
OpenAI-style strings users see (`file-…`, `ftjob-…`, `chatcmpl-…`).
Timestamps are Unix seconds (int) like the OpenAI API, except where a float
is needed for latency.

Migrations live in `ownllm/store/migrations/versions/`; a test checks the
migrations produce exactly this schema.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the tenant's name
    created_at: Mapped[int] = mapped_column(BigInteger)
    capture_default: Mapped[bool] = mapped_column(Boolean, default=False)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # key-…
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(24), index=True)  # shown in listings
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # store completions made with this key (None: the tenant's capture_default decides)
    capture_default: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    status: Mapped[str] = mapped_column(String(20), default="processed")
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftjob-…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(512))
    base_model: Mapped[str] = mapped_column(String(256))
    parent_adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    method: Mapped[str] = mapped_column(String(16), default="supervised")  # supervised | dpo
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    lora: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # who created it
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftevent-…
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)  # order within the job
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(10))
    type: Mapped[str] = mapped_column(String(10))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftckpt-…
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(512))
    adapter_id: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Adapter(Base):
    __tablename__ = "adapters"
    # names are unique per tenant, and ids (adapter-<hex>) are a namespace of their own
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_adapters_tenant_id_name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # adapter-…
    name: Mapped[str] = mapped_column(String(512), index=True)  # the model id clients use
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    base_sha256: Mapped[str] = mapped_column(String(64))
    parents: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(16))  # trained | imported | composed | checkpoint
    datasets: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{file_id, sha256}]
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list[Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # content hash of the adapter files
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


class UsageRecord(Base):
    """One ledger row: an API request (tokens), or a finished fine-tuning job
    (`trained_tokens`, endpoint `fine_tuning.jobs`) or adapter export (`bytes`,
    endpoint `adapters.export`)."""

    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    day: Mapped[str] = mapped_column(String(10), default="")  # YYYY-MM-DD (UTC), for grouping
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(512))
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(24))  # ok | error | cancelled | disconnected
    http_status: Mapped[int] = mapped_column(Integer, default=200)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # a batch's line
    # behind a router: the backend that served it; a remote's price (USD) from the price table
    backend: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remote: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    remote_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)


def usage_day(wall: float) -> str:
    """The UTC day (YYYY-MM-DD) a usage row written at Unix time `wall` is grouped under."""
    return time.strftime("%Y-%m-%d", time.gmtime(wall))


class QuotaCounter(Base):
    """Tokens charged against a monthly budget: one row per (scope, month).

    `scope` is `key:<key id>` or `tenant:<tenant id>`, `period` is `YYYY-MM`
    (UTC). The gateway reserves tokens with one conditional UPDATE
    (`used_tokens + n <= limit`), which holds across replicas sharing the DB.
    """

    __tablename__ = "quota_counters"
    scope: Mapped[str] = mapped_column(String(120), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    used_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class EngineTime(Base):
    """Engine busy time per serving host and day (UTC), for the cost account: the gateway
    adds the growth of `backend.stats().busy_seconds` here every few seconds."""

    __tablename__ = "engine_time"
    replica: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    first_at: Mapped[float] = mapped_column(Float)
    last_at: Mapped[float] = mapped_column(Float)


class StoredCompletion(Base):
    __tablename__ = "stored_completions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # chatcmpl-…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model: Mapped[str] = mapped_column(String(512), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    stored_at: Mapped[float] = mapped_column(Float, default=0.0)  # orders listings (sub-second)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # messages + params, redacted
    response: Mapped[dict[str, Any]] = mapped_column(JSON)  # the completion, redacted
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)


class StoredResponse(Base):
    """A Responses API response kept for `GET /v1/responses/{id}` and for conversations
    continued with `previous_response_id` (OpenAI's `store`, true by default)."""

    __tablename__ = "stored_responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # resp-…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    previous_response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)  # the response object
    input_items: Mapped[list[Any]] = mapped_column(JSON)  # this request's items, with ids
    # the conversation so far as chat messages (history, this input, this output), which
    # a response continuing it starts from; without the instructions, as OpenAI does
    conversation: Mapped[list[Any]] = mapped_column(JSON)


class ModelAlias(Base):
    """A stable model id of a tenant (`support`) that points at a version: an adapter
    (`target`, trained or composed) or the base model (`target` None). Promotion and
    rollback move it with one conditional UPDATE on `version`, so replicas sharing the
    database never see half a move; `history` is the stack of earlier targets that
    `rollback` pops."""

    __tablename__ = "model_aliases"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_model_aliases_tenant_id_name"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # alias-…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    target: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)  # earlier targets, oldest first
    gate: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)  # moves so far, the first is 1
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    # a router alias: its versions with their training data's indexes, and the threshold
    # (`ownllm.adapters.routing.Router`); None: the alias points at `target`
    router: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AliasMove(Base):
    """One move of an alias: who, when, from and to, and the gate's figures."""

    __tablename__ = "alias_moves"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias_id: Mapped[str] = mapped_column(ForeignKey("model_aliases.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)  # the alias's version after the move
    action: Mapped[str] = mapped_column(String(16))  # create | promote | rollback | refused
    from_target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))  # key id, `cli`, or `job:<ftjob id>`
    created_at: Mapped[float] = mapped_column(Float)
    gate: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # figures and verdict
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Promotion(Base):
    """The unattended loop of one fine-tuning job (`promote` at its creation): once the job
    succeeds, its adapter is evaluated and red-teamed, and the alias moves to it if the
    alias's gate passes. `status`: waiting (training) | evaluating | promoted | refused |
    failed | skipped (the job did not succeed); each step is a conditional UPDATE on it, so
    replicas sharing the database start and decide each loop once."""

    __tablename__ = "promotions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # promo-…
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the job's creator
    alias: Mapped[str] = mapped_column(String(256))  # the alias's name
    eval_id: Mapped[str] = mapped_column(String(40))
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)  # the run to repeat on the adapter
    status: Mapped[str] = mapped_column(String(16), index=True)
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    eval_run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    redteam_run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the verdict
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class EvalDefinition(Base):
    """An eval (OpenAI's Evals API): how items look and how samples are graded. `kind`
    is `eval`, or `redteam` for the shipped red-team suite's evals."""

    __tablename__ = "evals"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # eval_…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="eval")
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


class EvalRun(Base):
    """One run of an eval against a model, adapter or alias: a row claimed by a worker
    (`FOR UPDATE SKIP LOCKED` on PostgreSQL), its items' results in `eval_output_items`
    so a run resumes where a lost worker left it."""

    __tablename__ = "eval_runs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # evalrun_…
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # who created it
    name: Mapped[str] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(512))  # as the run names it
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # resolved once
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    result_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    per_testing_criteria_results: Mapped[list[Any]] = mapped_column(JSON, default=list)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # red-team rates
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class EvalOutputItem(Base):
    """The result of one data-source item in a run: its sample and each grader's verdict."""

    __tablename__ = "eval_output_items"
    __table_args__ = (
        UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # outputitem_…
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    datasource_item_id: Mapped[int] = mapped_column(Integer)
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8))  # pass | fail | error
    results: Mapped[list[Any]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)


class GuardEvent(Base):
    __tablename__ = "guard_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(8))  # input | output | capture
    action: Mapped[str] = mapped_column(String(8))  # block | redact | flag
    rule_ids: Mapped[list[Any]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)  # {rule_id: n}; never the text


class Batch(Base):
    """One `/v1/batches` object. Its lines are `BatchLine` rows once validated; its counts
    are read from them. `worker_id` / `lease_until` are the claim of whichever worker is
    validating or finalizing it (lines carry their own)."""

    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # batch_…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # who created it
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # validation errors
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    num_lines: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class BatchLine(Base):
    """One request of a batch, and once answered its result, durably: the output file is
    assembled from these rows at finalize, so a worker killed mid-batch loses nothing and
    its successor answers only the lines still open.

    status: pending → running (claimed: `worker_id`, `lease_until`) → done | failed,
    or expired / cancelled when the batch ended first."""

    __tablename__ = "batch_lines"
    __table_args__ = (UniqueConstraint("batch_id", "line", name="uq_batch_lines_batch_id_line"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)  # 1-based line of the input file
    custom_id: Mapped[str] = mapped_column(String(512))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), index=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the output line


class VectorStore(Base):
    """A tenant's vector store (`vs_…`). `version` grows whenever its searchable chunks
    change (a file completed or removed), so every replica's index of it knows when to
    reload."""

    __tablename__ = "vector_stores"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # vs_…
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # who created it
    name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    embedding_model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    last_active_at: Mapped[int] = mapped_column(BigInteger)
    expires_after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class VectorStoreFile(Base):
    """A file attached to a vector store, and its ingestion: `in_progress` rows are the
    queue (a worker owns one while its id is in `worker_id`), then `completed`, `failed`
    (with `last_error`) or `cancelled`."""

    __tablename__ = "vector_store_files"
    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id"), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    chunking: Mapped[dict[str, Any]] = mapped_column(JSON)  # max_chunk_size_tokens, overlap
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    num_chunks: Mapped[int] = mapped_column(Integer, default=0)
    num_tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # embedded so far
    created_at: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)  # attach time in µs: the listing order
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class VectorStoreFileBatch(Base):
    __tablename__ = "vector_store_file_batches"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # vsfb_…
    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    is_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)


class VectorStoreChunk(Base):
    """One chunk of a file in a store: its text and its vector (float32, little-endian)."""

    __tablename__ = "vector_store_chunks"
    __table_args__ = (
        UniqueConstraint(
            "vector_store_id", "file_id", "seq", name="uq_vector_store_chunks_store_file_seq"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id"), index=True)
    file_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)  # the chunk's number in its file
    text: Mapped[str] = mapped_column(Text)
    num_tokens: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


Index("ix_batch_lines_batch_status", BatchLine.batch_id, BatchLine.status)
Index("ix_usage_tenant_created", UsageRecord.tenant_id, UsageRecord.created_at)
Index("ix_stored_completions_tenant_stored", StoredCompletion.tenant_id, StoredCompletion.stored_at)
