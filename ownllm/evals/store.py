"""Evals, eval runs and output items in the database, in OpenAI's Evals API shapes.

Every read filters on the caller's tenant: another tenant's eval or run does not exist
(404). A run is a queued row until a worker claims it (`claim_run`: `FOR UPDATE SKIP
LOCKED` on PostgreSQL, a conditional UPDATE on SQLite), renews its heartbeat while it
works, and writes one `eval_output_items` row per item as it is graded (unique per run and
item), so a run whose worker is lost is claimed again once its heartbeat is older than the
lease and carries on from the items it has; `finish_run` counts the items into the run.

A run's data source (OpenAI's):

    {"type": "completions", "model": "support", "sampling_params": {...},
     "input_messages": {"type": "template", "template": [{"role", "content"}]}
                     | {"type": "item_reference", "item_reference": "item.messages"},
     "source": {"type": "file_content", "content": [{"item": {...}}]}
             | {"type": "file_id", "id": "file-…"}}          (JSONL of {"item": {...}})
    {"type": "jsonl", "source": …}   items that carry their own {"sample": {"output_text"}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from ownllm.errors import InvalidRequestError, ModelNotFoundError, NotFoundError
from ownllm.evals.graders import check_criteria
from ownllm.ids import new_id
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import EvalDefinition, EvalOutputItem, EvalRun, File

MAX_ITEMS = 10_000
MAX_FILE_BYTES = 64 << 20
RUN_STATUSES = ("queued", "in_progress", "completed", "failed", "canceled")
OPEN_STATUSES = ("queued", "in_progress")
SAMPLING_FIELDS = ("temperature", "max_completion_tokens", "top_p", "seed")


class Viewer:  # what this module needs of a principal (ownllm.gateway.principal.Principal)
    tenant_id: str
    key_id: str | None


@dataclass(frozen=True)
class Page:
    limit: int = 20
    after: str | None = None
    order: str = "asc"

    @classmethod
    def of(cls, limit: int | None, after: str | None, order: str | None) -> Page:
        if limit is not None and not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be from 1 to 100", param="limit")
        if order not in (None, "asc", "desc"):
            raise InvalidRequestError("order must be asc or desc", param="order")
        return cls(limit or 20, after, order or "asc")


def _page(session, query, model, page: Page, key) -> dict[str, Any]:
    created, ident = model.created_at, model.id
    if page.after is not None:
        anchor = session.get(model, page.after)
        if anchor is None:
            raise InvalidRequestError(f"no object {page.after!r} to list after", param="after")
        if page.order == "asc":
            query = query.where(
                or_(
                    created > anchor.created_at,
                    (created == anchor.created_at) & (ident > anchor.id),
                )
            )
        else:
            query = query.where(
                or_(
                    created < anchor.created_at,
                    (created == anchor.created_at) & (ident < anchor.id),
                )
            )
    order = (created.asc(), ident.asc()) if page.order == "asc" else (created.desc(), ident.desc())
    rows = list(session.scalars(query.order_by(*order).limit(page.limit + 1)))
    data = [key(row) for row in rows[: page.limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > page.limit,
    }


# -- evals --------------------------------------------------------------------------------------


def check_data_source_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or config.get("type") != "custom":
        raise InvalidRequestError(
            "data_source_config.type must be 'custom' (items of your own, with an item_schema)",
            param="data_source_config.type",
        )
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            "data_source_config.item_schema (a JSON schema of one item) is required",
            param="data_source_config.item_schema",
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidRequestError(
            f"data_source_config.item_schema is not a valid JSON schema: {e.message}",
            param="data_source_config.item_schema",
        ) from None
    include = bool(config.get("include_sample_schema", False))
    return {"type": "custom", "item_schema": schema, "include_sample_schema": include}


def eval_object(row: EvalDefinition) -> dict[str, Any]:
    config = row.data_source_config
    properties: dict[str, Any] = {"item": config["item_schema"]}
    if config.get("include_sample_schema"):
        properties["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "data_source_config": {
            "type": "custom",
            "schema": {"type": "object", "properties": properties, "required": list(properties)},
        },
        "testing_criteria": row.testing_criteria,
        "created_at": row.created_at,
        "metadata": row.metadata_ or {},
        "kind": row.kind,
    }


def create_eval(
    db: Database,
    viewer: Viewer,
    *,
    name: str | None,
    data_source_config: Any,
    testing_criteria: Any,
    metadata: dict[str, Any] | None = None,
    kind: str = "eval",
) -> dict[str, Any]:
    config = check_data_source_config(data_source_config)
    criteria = check_criteria(testing_criteria)
    row = EvalDefinition(
        id=new_id("eval"),
        tenant_id=viewer.tenant_id,
        name=name or "eval",
        kind=kind,
        data_source_config=config,
        testing_criteria=criteria,
        metadata_=dict(metadata or {}),
        created_at=int(time.time()),
    )
    with db.session() as s:
        s.add(row)
    return eval_object(row)


def _own_eval(session, viewer: Viewer, ref: str) -> EvalDefinition:
    from ownllm.evals.gate import find_eval_row

    row = find_eval_row(session, viewer.tenant_id, ref)
    if row is None:
        raise NotFoundError(f"No eval found with id or name '{ref}'.", param="eval_id")
    return row


def get_eval(db: Database, viewer: Viewer, ref: str) -> dict[str, Any]:
    """The caller's eval by id (or by name: the newest of that name)."""
    with db.session() as s:
        return eval_object(_own_eval(s, viewer, ref))


def list_evals(db: Database, viewer: Viewer, page: Page, kind: str | None = None) -> dict[str, Any]:
    query = select(EvalDefinition).where(EvalDefinition.tenant_id == viewer.tenant_id)
    if kind is not None:
        query = query.where(EvalDefinition.kind == kind)
    with db.session() as s:
        return _page(s, query, EvalDefinition, page, eval_object)


def update_eval(
    db: Database, viewer: Viewer, ref: str, name: str | None, metadata: dict | None
) -> dict[str, Any]:
    with db.session() as s:
        row = _own_eval(s, viewer, ref)
        if name is not None:
            row.name = name
        if metadata is not None:
            row.metadata_ = dict(metadata)
        s.flush()
        return eval_object(row)


def delete_eval(db: Database, viewer: Viewer, ref: str) -> str:
    """Delete the eval with its runs and their items; its id."""
    with db.session() as s:
        row = _own_eval(s, viewer, ref)
        run_ids = list(s.scalars(select(EvalRun.id).where(EvalRun.eval_id == row.id)))
        if run_ids:
            s.query(EvalOutputItem).filter(EvalOutputItem.run_id.in_(run_ids)).delete()
            s.query(EvalRun).filter(EvalRun.id.in_(run_ids)).delete()
        s.delete(row)
        return row.id


# -- runs ---------------------------------------------------------------------------------------


def _items_of(raw: list, where: str) -> list[dict[str, Any]]:
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), dict):
            raise InvalidRequestError(
                f"{where}[{i}] must be an object with an 'item' object", param=f"{where}[{i}]"
            )
        out.append(entry)
    return out


def check_data_source(data_source: Any, item_schema: dict, db: Database, viewer: Viewer) -> dict:
    """The run's data source, checked: its type, template, sampling params and items (each
    against the eval's item_schema); a 400 naming the field."""
    if not isinstance(data_source, dict) or data_source.get("type") not in ("completions", "jsonl"):
        raise InvalidRequestError(
            "data_source.type must be 'completions' or 'jsonl'", param="data_source.type"
        )
    source = data_source.get("source")
    if not isinstance(source, dict) or source.get("type") not in ("file_content", "file_id"):
        raise InvalidRequestError(
            "data_source.source.type must be 'file_content' or 'file_id'",
            param="data_source.source",
        )
    if data_source["type"] == "completions":
        if not isinstance(data_source.get("model"), str) or not data_source["model"]:
            raise InvalidRequestError(
                "data_source.model (the model, adapter or alias to run) is required",
                param="data_source.model",
            )
        messages = data_source.get("input_messages")
        template = messages.get("template") if isinstance(messages, dict) else None
        if isinstance(messages, dict) and messages.get("type") == "item_reference":
            reference = messages.get("item_reference")
            if not isinstance(reference, str) or not reference.startswith("item."):
                raise InvalidRequestError(
                    "data_source.input_messages.item_reference must name a field of the item "
                    "holding its messages, e.g. 'item.messages'",
                    param="data_source.input_messages.item_reference",
                )
        elif not isinstance(template, list) or not template or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
            ("system", "developer", "user", "assistant") for m in template
        ):  # fmt: skip
            raise InvalidRequestError(
                "data_source.input_messages must be {'type': 'template', 'template': "
                "[{'role', 'content'}, …]}",
                param="data_source.input_messages",
            )
        params = data_source.get("sampling_params") or {}
        unknown = sorted(set(params) - set(SAMPLING_FIELDS))
        if not isinstance(params, dict) or unknown:
            raise InvalidRequestError(
                f"data_source.sampling_params takes {', '.join(SAMPLING_FIELDS)}",
                param="data_source.sampling_params",
            )
    if source["type"] == "file_content":
        content = source.get("content")
        if not isinstance(content, list) or not content:
            raise InvalidRequestError(
                "data_source.source.content must be a non-empty list of {'item': {...}}",
                param="data_source.source.content",
            )
        items = _items_of(content, "data_source.source.content")
    else:
        file_id = source.get("id")
        if not isinstance(file_id, str):
            raise InvalidRequestError(
                "data_source.source.id is required", param="data_source.source.id"
            )
        with db.session() as s:
            row = s.get(File, file_id)
            if row is None or row.tenant_id != viewer.tenant_id:
                raise NotFoundError(
                    f"No such File object: {file_id}", param="data_source.source.id"
                )
        items = None  # read, and checked, when a worker runs it
    if items is not None:
        if len(items) > MAX_ITEMS:
            raise InvalidRequestError(
                f"at most {MAX_ITEMS} items per run", param="data_source.source.content"
            )
        check_items(items, item_schema, data_source["type"], "data_source.source.content")
    return data_source


def check_items(items: list[dict], item_schema: dict, kind: str, where: str) -> None:
    validator = jsonschema.validators.validator_for(item_schema)(item_schema)
    for i, entry in enumerate(items):
        error = jsonschema.exceptions.best_match(validator.iter_errors(entry["item"]))
        if error is not None:
            raise InvalidRequestError(
                f"{where}[{i}].item does not match the eval's item_schema: {error.message}",
                param=f"{where}[{i}].item",
            )
        sample = entry.get("sample")
        if kind == "jsonl" and not (
            isinstance(sample, dict) and isinstance(sample.get("output_text"), str)
        ):
            raise InvalidRequestError(
                f"{where}[{i}].sample.output_text is required for a jsonl data source",
                param=f"{where}[{i}].sample",
            )


def read_file_items(db: Database, data_dir: DataDir, tenant_id: str, file_id: str) -> list[dict]:
    """The entries of a JSONL file of the tenant: each line {"item": …} (or a bare object,
    taken as the item). Raises InvalidRequestError naming the line."""
    with db.session() as s:
        row = s.get(File, file_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError(f"No such File object: {file_id}", param="data_source.source.id")
    if row.bytes > MAX_FILE_BYTES:
        raise InvalidRequestError(f"file {file_id} is larger than {MAX_FILE_BYTES} bytes")
    items = []
    with open(data_dir.resolve(row.path), encoding="utf-8") as f:
        for item in item_lines(f, file_id, InvalidRequestError):
            items.append(item)
            if len(items) > MAX_ITEMS:
                raise InvalidRequestError(f"{file_id} has more than {MAX_ITEMS} items")
    return items


def item_lines(lines: Iterable[str], name: str, error: type[Exception]) -> Iterator[dict]:
    """The entries of JSONL `lines` (blank ones skipped): each {"item": …}, or a bare object
    taken as the item. A line that is not a JSON object raises `error` naming `name` and
    the line's number."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise error(f"{name} line {n} is not JSON") from None
        if not isinstance(value, dict):
            raise error(f"{name} line {n} is not a JSON object")
        yield value if isinstance(value.get("item"), dict) else {"item": value}


def run_object(row: EvalRun) -> dict[str, Any]:
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "name": row.name,
        "model": row.model,
        "adapter_id": row.adapter_id,
        "status": row.status,
        "data_source": row.data_source,
        "result_counts": row.result_counts or {"total": 0, "errored": 0, "failed": 0, "passed": 0},
        "per_testing_criteria_results": row.per_testing_criteria_results or [],
        "per_model_usage": (row.report or {}).get("per_model_usage", []),
        "report": {k: v for k, v in (row.report or {}).items() if k != "per_model_usage"} or None,
        "report_url": f"/dashboard/evals/{row.eval_id}/runs/{row.id}",
        "error": row.error,
        "metadata": row.metadata_ or {},
        "created_at": row.created_at,
    }


def pinned_version(db: Database, viewer: Any, model: str, base_model: str) -> str | None:
    """The adapter id `model` runs now (None: the base model): the version the caller's
    alias points at, else the adapter it names. Unknown is a 404 on data_source.model."""
    from ownllm.adapters.aliases import find_alias
    from ownllm.adapters.registry import resolve_model

    if model == base_model:
        return None
    alias = find_alias(db, viewer.tenant_id, model)
    if alias is not None:
        return alias.target
    record = resolve_model(db, viewer, model)
    if record is None:
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="data_source.model")
    return record.id


def create_run(
    db: Database,
    viewer: Viewer,
    eval_ref: str,
    *,
    data_source: Any,
    adapter_id: str | None,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A queued run; `adapter_id` is the version `data_source.model` resolved to now (the
    caller resolves it once: every item of the run uses that version)."""
    with db.session() as s:
        definition = _own_eval(s, viewer, eval_ref)
        item_schema = definition.data_source_config["item_schema"]
        eval_id = definition.id
    checked = check_data_source(data_source, item_schema, db, viewer)
    model = checked.get("model") or "(samples given)"
    row = EvalRun(
        id=new_id("evalrun"),
        eval_id=eval_id,
        tenant_id=viewer.tenant_id,
        key_id=viewer.key_id,
        name=name or f"{model}-run",
        model=model,
        adapter_id=adapter_id,
        data_source=checked,
        status="queued",
        result_counts={},
        per_testing_criteria_results=[],
        metadata_=dict(metadata or {}),
        attempts=0,
        created_at=int(time.time()),
    )
    with db.session() as s:
        s.add(row)
    return run_object(row)


def _own_run(session, viewer: Viewer, eval_id: str, run_id: str) -> EvalRun:
    row = session.get(EvalRun, run_id)
    if row is None or row.tenant_id != viewer.tenant_id or row.eval_id != eval_id:
        raise NotFoundError(f"No eval run found with id '{run_id}'.", param="run_id")
    return row


def get_run(db: Database, viewer: Viewer, eval_ref: str, run_id: str) -> dict[str, Any]:
    with db.session() as s:
        eval_id = _own_eval(s, viewer, eval_ref).id
        return run_object(_own_run(s, viewer, eval_id, run_id))


def run_by_id(db: Database, viewer: Viewer, run_id: str) -> dict[str, Any]:
    """The caller's run by its id alone (the CLI's `show` and `compare`)."""
    with db.session() as s:
        row = s.get(EvalRun, run_id)
        if row is None or row.tenant_id != viewer.tenant_id:
            raise NotFoundError(f"No eval run found with id '{run_id}'.", param="run_id")
        return run_object(row)


def list_runs(
    db: Database, viewer: Viewer, eval_ref: str, page: Page, status: str | None = None
) -> dict[str, Any]:
    with db.session() as s:
        eval_id = _own_eval(s, viewer, eval_ref).id
        query = select(EvalRun).where(
            EvalRun.eval_id == eval_id, EvalRun.tenant_id == viewer.tenant_id
        )
        if status is not None:
            if status not in RUN_STATUSES:
                raise InvalidRequestError(
                    f"status must be one of {', '.join(RUN_STATUSES)}", param="status"
                )
            query = query.where(EvalRun.status == status)
        return _page(s, query, EvalRun, page, run_object)


def cancel_run(db: Database, viewer: Viewer, eval_ref: str, run_id: str) -> dict[str, Any]:
    """Cancel an open run (its worker stops at the next item); a finished one is unchanged."""
    with db.session() as s:
        eval_id = _own_eval(s, viewer, eval_ref).id
        row = _own_run(s, viewer, eval_id, run_id)
        if row.status in OPEN_STATUSES:
            row.status = "canceled"
            row.finished_at = int(time.time())
        s.flush()
        return run_object(row)


def delete_run(db: Database, viewer: Viewer, eval_ref: str, run_id: str) -> str:
    with db.session() as s:
        eval_id = _own_eval(s, viewer, eval_ref).id
        row = _own_run(s, viewer, eval_id, run_id)
        s.query(EvalOutputItem).filter(EvalOutputItem.run_id == row.id).delete()
        s.delete(row)
        return row.id


# -- output items -------------------------------------------------------------------------------


def item_object(row: EvalOutputItem, eval_id: str) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": row.id,
        "run_id": row.run_id,
        "eval_id": eval_id,
        "created_at": row.created_at,
        "status": row.status,
        "datasource_item_id": row.datasource_item_id,
        "datasource_item": row.datasource_item,
        "results": row.results,
        "sample": row.sample,
    }


def list_output_items(
    db: Database, viewer: Viewer, eval_ref: str, run_id: str, page: Page, status: str | None = None
) -> dict[str, Any]:
    with db.session() as s:
        eval_id = _own_eval(s, viewer, eval_ref).id
        run = _own_run(s, viewer, eval_id, run_id)
        query = select(EvalOutputItem).where(EvalOutputItem.run_id == run.id)
        if status is not None:
            if status not in ("pass", "fail", "error"):
                raise InvalidRequestError("status must be pass, fail or error", param="status")
            query = query.where(EvalOutputItem.status == status)
        return _page(s, query, EvalOutputItem, page, lambda r: item_object(r, eval_id))


def get_output_item(
    db: Database, viewer: Viewer, eval_ref: str, run_id: str, item_id: str
) -> dict[str, Any]:
    with db.session() as s:
        eval_id = _own_eval(s, viewer, eval_ref).id
        run = _own_run(s, viewer, eval_id, run_id)
        row = s.get(EvalOutputItem, item_id)
        if row is None or row.run_id != run.id:
            raise NotFoundError(
                f"No output item found with id '{item_id}'.", param="output_item_id"
            )
        return item_object(row, eval_id)


def run_items(db: Database, run_id: str) -> dict[int, dict[str, Any]]:
    """datasource_item_id -> {status, results} of a run's graded items (for compare)."""
    with db.session() as s:
        rows = s.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id))
        return {
            r.datasource_item_id: {"status": r.status, "results": r.results, "item": r.datasource_item,
                                   "sample": r.sample}
            for r in rows
        }  # fmt: skip


# -- the worker's side --------------------------------------------------------------------------


def claim_run(db: Database, worker_id: str, lease_s: float) -> EvalRun | None:
    """Take the oldest queued run, or one whose worker stopped renewing its heartbeat more
    than `lease_s` ago (it resumes from its items)."""
    now = time.time()
    stale = now - lease_s
    free = or_(
        EvalRun.status == "queued",
        (EvalRun.status == "in_progress") & (EvalRun.heartbeat_at < stale),
    )
    query = select(EvalRun.id).where(free).order_by(EvalRun.created_at, EvalRun.id).limit(1)

    def take(s: Any, picked: Any) -> str | None:
        values = {
            "status": "in_progress",
            "worker_id": worker_id,
            "heartbeat_at": now,
            "attempts": EvalRun.attempts + 1,
        }
        done = s.execute(update(EvalRun).where(EvalRun.id == picked.id, free).values(**values))
        return picked.id if done.rowcount == 1 else None

    run_id = db.claim_first(query, EvalRun, take)
    if run_id is None:
        return None
    with db.session() as s:
        return s.get(EvalRun, run_id)


def heartbeat(db: Database, run_id: str, worker_id: str) -> bool:
    """Renew the claim; False when the run is no longer this worker's (canceled, taken)."""
    with db.session() as s:
        return bool(
            s.execute(
                update(EvalRun)
                .where(
                    EvalRun.id == run_id,
                    EvalRun.worker_id == worker_id,
                    EvalRun.status == "in_progress",
                )
                .values(heartbeat_at=time.time())
            ).rowcount
        )


def graded_item_ids(db: Database, run_id: str) -> set[int]:
    with db.session() as s:
        query = select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)
        return set(s.scalars(query))


def record_item(
    db: Database,
    run: EvalRun,
    index: int,
    entry: dict[str, Any],
    status: str,
    results: list[dict[str, Any]],
    sample: dict[str, Any],
) -> None:
    """One graded item; a second write of the same item (two workers after a lost lease)
    keeps the first."""
    row = EvalOutputItem(
        id=new_id("outputitem"),
        run_id=run.id,
        tenant_id=run.tenant_id,
        datasource_item_id=index,
        datasource_item=entry["item"],
        status=status,
        results=results,
        sample=sample,
        created_at=int(time.time()),
    )
    try:
        with db.session() as s:
            s.add(row)
    except IntegrityError:
        pass  # already graded by the worker that held the run before


def _usage(rows: list[EvalOutputItem]) -> list[dict[str, Any]]:
    """OpenAI's per_model_usage: the tokens of the sampled model's calls."""
    by_model: dict[str, dict[str, int]] = {}
    for r in rows:
        usage = (r.sample or {}).get("usage")
        if not usage:
            continue
        model = by_model.setdefault(
            r.sample.get("model") or "",
            {"invocation_count": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        )
        model["invocation_count"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            model[key] += int(usage.get(key) or 0)
    return [{"model_name": name, **totals} for name, totals in by_model.items()]


def finish_run(
    db: Database,
    run_id: str,
    worker_id: str,
    criteria: list[dict[str, Any]],
    *,
    report: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Count the items into the run and end it (failed with `error`); False when the run
    was no longer this worker's."""
    with db.session() as s:
        rows = list(s.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)))
        counts = {"total": len(rows), "errored": 0, "failed": 0, "passed": 0}
        for r in rows:
            counts[{"pass": "passed", "fail": "failed"}.get(r.status, "errored")] += 1
        per_criterion = []
        for c in criteria:
            passed = sum(
                1 for r in rows for g in r.results if g["name"] == c["name"] and g["passed"]
            )
            graded = sum(1 for r in rows for g in r.results if g["name"] == c["name"])
            per_criterion.append(
                {"testing_criteria": c["name"], "passed": passed, "failed": graded - passed}
            )
        report = {**(report or {}), "per_model_usage": _usage(rows)}
        values: dict[str, Any] = {
            "status": "failed" if error is not None else "completed",
            "result_counts": counts,
            "per_testing_criteria_results": per_criterion,
            "finished_at": int(time.time()),
            "error": error,
        }
        values["report"] = report
        done = s.execute(
            update(EvalRun)
            .where(
                EvalRun.id == run_id,
                EvalRun.worker_id == worker_id,
                EvalRun.status == "in_progress",
            )
            .values(**values)
        ).rowcount
    return bool(done)
