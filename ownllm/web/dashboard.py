"""`/v1/dashboard/*`: the few read-only views the dashboard needs that the public API lacks.

    GET /v1/dashboard/me                     who the signed-in key is (tenant, scopes, admin)
    GET /v1/dashboard/usage                  requests and tokens over time by model, key or tenant,
                                             latency percentiles, and totals
    GET /v1/dashboard/cost                   self-hosted cost vs each API in the price table
    GET /v1/dashboard/files/{id}/problems    a training file's invalid lines, by line number
    GET /v1/dashboard/evals/{id}/compare     two completed runs of an eval side by side (base
                                             vs candidate: per criterion the pass rates, the
                                             delta and its 95% interval, the items that changed)

All are tenant-scoped through the principal: a tenant key sees only its own tenant's
usage and files (another tenant's file is a 404), the admin sees every tenant. Everything
else the dashboard shows comes from the OpenAI-shaped API any client uses.
The usage view reads the window's ledger rows rather than a SQL aggregate, so its latency
percentiles are exact; a window is capped at 400 buckets. The cost view prices a tenant's
own tokens on each API and at the operator's `cost.tenant_price_per_million`, and reads
nothing of other tenants' traffic (a share of the hardware by tokens served would tell a
tenant the server's totals); the admin sees the whole server's account. Left out: writes of any kind (the pages use the
public API for those), per-request drill-down.

What the views read is a `Dashboard` (database, data dir, cost settings, served model id),
built by the app factory beside the app's `Gateway` (auth for open mode, the ledger to
flush before a report); this package imports nothing of `ownllm.api`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from ownllm.config import CostConfig
from ownllm.errors import InvalidRequestError, ServerError
from ownllm.gateway.auth import get_principal, require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal
from ownllm.gateway.usage import parse_since
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])

MAX_PROBLEMS = 200
MAX_BUCKETS = 400
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard's views read, built once by the app factory."""

    db: Database | None
    data_dir: DataDir
    cost: CostConfig
    model_id: str  # the served base model

    def require_db(self, what: str) -> Database:
        if self.db is None:
            raise ServerError(f"This server has no database; {what}.")
        return self.db


async def get_dashboard(request: Request) -> Dashboard:
    """FastAPI dependency: the app's Dashboard (async: no worker thread for a lookup)."""
    return request.app.state.dashboard


@router.get("/me")
async def me(
    principal: Principal = Depends(get_principal),
    dashboard: Dashboard = Depends(get_dashboard),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    return {
        "object": "dashboard.principal",
        "tenant": principal.tenant_id,
        "key_id": principal.key_id,
        "is_admin": principal.is_admin,
        "scopes": sorted(principal.scopes),
        "open_mode": await run_in_threadpool(gateway.auth.is_open),
        "model": dashboard.model_id,
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank percentiles p50/p90/p99 (None for no values)."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        if not ordered:
            out[f"p{p}"] = None
            continue
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = round(ordered[rank - 1], 2)
    return out


def bucket_seconds(span_s: float, bucket: str) -> int:
    """Bucket width in seconds; `auto` keeps a range between about 15 and 400 points."""
    if bucket == "minute":
        size = 60
    elif bucket == "hour":
        size = 3600
    elif bucket == "day":
        size = 86400
    elif bucket == "auto":
        size = 60 if span_s <= 6 * 3600 else 3600 if span_s <= 14 * 86400 else 86400
    else:
        raise InvalidRequestError(
            f"Invalid bucket {bucket!r}: one of auto, minute, hour, day.", param="bucket"
        )
    if span_s / size > MAX_BUCKETS:
        raise InvalidRequestError(
            f"{bucket} buckets over this range make more than {MAX_BUCKETS} points; "
            "pick a larger bucket or a shorter range.",
            param="bucket",
        )
    return size


def usage_report(
    db: Any, *, tenant_id: str | None, since: float, until: float, size: int, by: str
) -> dict[str, Any]:
    """Time series per group, latency percentiles and totals over [since, until), of API
    requests (the ledger's rows of fine-tuning jobs and exports are `ownllm usage`'s)."""
    from sqlalchemy import select

    from ownllm.gateway.usage import NOT_REQUESTS
    from ownllm.store.schema import UsageRecord as U

    group = {"model": U.model, "key": U.key_id, "tenant": U.tenant_id}[by]
    query = select(
        U.created_at, group, U.prompt_tokens, U.completion_tokens, U.latency_ms, U.ttft_ms, U.status
    ).where(U.created_at >= since, U.created_at < until, U.endpoint.not_in(NOT_REQUESTS))
    if tenant_id is not None:
        query = query.where(U.tenant_id == tenant_id)
    with db.session() as session:
        rows = session.execute(query.order_by(U.created_at)).all()
    start = int(since // size * size)
    num_buckets = int((until - start) // size) + 1
    series: dict[str, list[dict[str, int]]] = {}
    latency, ttft = [], []
    # errors: every request that did not finish ok (error, cancelled, disconnected)
    totals = {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for created, name, prompt, completion, latency_ms, ttft_ms, status in rows:
        points = series.setdefault(
            name or "(none)",
            [{"t": start + i * size, "requests": 0, "tokens": 0} for i in range(num_buckets)],
        )
        point = points[min(num_buckets - 1, int((created - start) // size))]
        point["requests"] += 1
        point["tokens"] += prompt + completion
        totals["requests"] += 1
        totals["errors"] += status != "ok"
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        if status == "ok":
            latency.append(latency_ms)
            if ttft_ms is not None:
                ttft.append(ttft_ms)
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return {
        "object": "dashboard.usage",
        "by": by,
        "since": since,
        "until": until,
        "bucket_seconds": size,
        "series": [{"name": k, "points": v} for k, v in sorted(series.items())],
        "totals": totals,
        "latency_ms": percentiles(latency),
        "ttft_ms": percentiles(ttft),
    }


@router.get("/usage")
async def usage(
    since: str = Query("24h", description="7d, 24h, 30m, YYYY-MM-DD or Unix seconds"),
    bucket: str = Query("auto", description="auto | minute | hour | day"),
    by: str = Query("model", description="model | key | tenant"),
    tenant: str | None = Query(None, description="admin only: one tenant"),
    principal: Principal = Depends(require_scope("usage")),
    dashboard: Dashboard = Depends(get_dashboard),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    db = dashboard.require_db("the usage ledger needs one")
    if by not in ("model", "key", "tenant"):
        raise InvalidRequestError(f"Invalid by {by!r}: one of model, key, tenant.", param="by")
    until = time.time()
    start = parse_since(since, now=until)
    size = bucket_seconds(until - start, bucket)
    tenant_id = tenant if principal.is_admin else principal.tenant_id

    def query() -> dict:
        gateway.ledger.flush()
        return usage_report(db, tenant_id=tenant_id, since=start, until=until, size=size, by=by)

    report = await run_in_threadpool(query)
    return {**report, "tenant": tenant_id}


def file_problems(db: Database, data_dir: DataDir, principal: Principal, file_id: str) -> dict:
    from ownllm.tuning.data import Problem, parse_line
    from ownllm.tuning.files import file_path, get_file

    row = get_file(db, principal, file_id)
    num_examples, problems = 0, []
    with open(file_path(data_dir, row), encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parsed = parse_line(number, line)
            if isinstance(parsed, Problem):
                problems.append({"line": parsed.line, "reason": parsed.reason})
            else:
                num_examples += 1
    return {
        "object": "dashboard.file_problems",
        "id": row.id,
        "filename": row.filename,
        "num_examples": num_examples,
        "num_problems": len(problems),
        "problems": problems[:MAX_PROBLEMS],
    }


def eval_comparison(
    db: Database, principal: Principal, eval_ref: str, base: str | None, candidate: str | None
) -> dict[str, Any]:
    """Run `base` against run `candidate` of the caller's eval (`ownllm.evals.compare`, as
    `ownllm eval compare` prints it). Left out, they are chosen: the candidate is the newest
    completed run, the base the newest completed run on the base model before it, else the
    completed run before the candidate."""
    from ownllm.evals import store
    from ownllm.evals.compare import compare_runs

    evaluation = store.get_eval(db, principal, eval_ref)
    runs = store.list_runs(db, principal, evaluation["id"], store.Page(100, None, "desc"),
                           status="completed")["data"]  # fmt: skip
    by_id = {r["id"]: r for r in runs}
    for run_id, param in ((base, "base"), (candidate, "candidate")):
        if run_id is not None and run_id not in by_id:
            store.get_run(db, principal, evaluation["id"], run_id)  # 404 if it is not theirs
            raise InvalidRequestError(f"run {run_id} has not completed", param=param)
    b = by_id[candidate] if candidate else (runs[0] if runs else None)
    earlier = [r for r in runs if b is not None and r["id"] != b["id"]
               and (r["created_at"], r["id"]) < (b["created_at"], b["id"])]  # fmt: skip
    a = by_id[base] if base else next((r for r in earlier if r["adapter_id"] is None), None)
    if a is None and earlier:
        a = earlier[0]
    out: dict[str, Any] = {
        "eval": evaluation,
        "base_run": a,
        "candidate_run": b,
        "comparison": None,
    }
    if a is not None and b is not None:
        out["comparison"] = compare_runs(
            evaluation["testing_criteria"],
            store.run_items(db, a["id"]),
            store.run_items(db, b["id"]),
        )
    return out


@router.get("/evals/{eval_id}/compare")
async def compare(
    eval_id: str,
    base: str | None = None,
    candidate: str | None = None,
    principal: Principal = Depends(require_scope("inference")),
    dashboard: Dashboard = Depends(get_dashboard),
) -> dict:
    db = dashboard.require_db("evals need one")
    return await run_in_threadpool(eval_comparison, db, principal, eval_id, base, candidate)


@router.get("/files/{file_id}/problems")
async def problems(
    file_id: str,
    principal: Principal = Depends(require_scope("files")),
    dashboard: Dashboard = Depends(get_dashboard),
) -> dict:
    db = dashboard.require_db("files need one")
    return await run_in_threadpool(file_problems, db, dashboard.data_dir, principal, file_id)


def _tenant_tokens(db: Any, tenant_id: str, since: float | None, until: float) -> tuple:
    """(prompt, completion, requests, embedding tokens, first request time or None) of one
    tenant, as `observed_traffic` counts them: embedding tokens apart from chat's."""
    from sqlalchemy import case, func, select

    from ownllm.gateway.cost import EMBEDDINGS
    from ownllm.store.schema import UsageRecord as U

    is_chat = U.endpoint != EMBEDDINGS
    query = select(
        func.coalesce(func.sum(case((is_chat, U.prompt_tokens), else_=0)), 0),
        func.coalesce(func.sum(case((is_chat, U.completion_tokens), else_=0)), 0),
        func.count(),
        func.coalesce(func.sum(case((is_chat, 0), else_=U.prompt_tokens)), 0),
        func.min(U.created_at),
    ).where(U.tenant_id == tenant_id, U.created_at < until)
    if since is not None:
        query = query.where(U.created_at >= since)
    with db.session() as session:
        *counts, first_at = session.execute(query).one()
    return (*(int(v) for v in counts), first_at)


def cost_report(
    db: Database, config: CostConfig, principal: Principal, since: float | None
) -> dict:
    """The cost account over [since, now): the whole server for the admin; for a tenant, its
    own traffic priced on each API and at `cost.tenant_price_per_million` (None when unset),
    with nothing computed from other tenants' traffic."""
    from ownllm.gateway import cost

    until = time.time()
    try:
        table = cost.load_price_table(config.price_table or None)
        hardware = cost.hardware_from_config(config, table)
    except cost.CostError as e:
        raise ServerError(f"The cost account is not configured: {e}") from None
    if principal.is_admin:
        server = cost.observed_traffic(db, since, until, now=until)
        acc = cost.account(server, hardware, table)
        prompt, completion = server.prompt_tokens, server.completion_tokens
        requests, embedded = server.requests, server.embedding_tokens
        start = since if since is not None else until - server.window_s
        self_cost: float | None = acc.hardware_cost
        utilisation = acc.utilisation
        cost_per_million = self_cost / (prompt + completion) * 1e6 if prompt + completion else None
    else:
        prompt, completion, requests, embedded, first_at = _tenant_tokens(
            db, principal.tenant_id, since, until
        )
        start = since if since is not None else (first_at if first_at is not None else until)
        rate = config.tenant_price_per_million
        self_cost = (prompt + completion) * rate / 1e6 if rate > 0 else None
        utilisation, cost_per_million = None, rate if rate > 0 else None
    apis = []
    for api in table.apis:
        api_cost = api.cost(prompt, completion)
        apis.append(
            {
                "name": api.name,
                "provider": api.provider,
                "input_per_million": api.input,
                "output_per_million": api.output,
                "cost": api_cost,
                "savings": api_cost - self_cost if self_cost is not None else None,
                "source": api.source,
                "as_of": api.as_of,
            }
        )
    return {
        "object": "dashboard.cost",
        "scope": "server" if principal.is_admin else "tenant",
        "since": start,
        "until": until,
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "self_hosted_cost": self_cost,
        "cost_per_million": cost_per_million,
        "utilisation": utilisation,
        "hardware": {
            "name": hardware.name,
            "price_per_hour": hardware.price_per_hour,
            "replicas": hardware.replicas,
            "source": hardware.source,
            "as_of": hardware.as_of,
        },
        "price_table_as_of": table.as_of,
        "apis": apis,
        "embedding_tokens": embedded,  # priced on embedding APIs, not in the figures above
        "embedding_apis": [
            {
                "name": e.name,
                "provider": e.provider,
                "input_per_million": e.input,
                "cost": e.cost(embedded),
                "source": e.source,
                "as_of": e.as_of,
            }
            for e in table.embeddings
        ],
    }


@router.get("/cost")
async def cost_view(
    since: str | None = Query(None, description="window start; default: the first request"),
    principal: Principal = Depends(require_scope("usage")),
    dashboard: Dashboard = Depends(get_dashboard),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    db = dashboard.require_db("the cost account needs one")
    start = parse_since(since)

    def report() -> dict:
        gateway.ledger.flush()
        return cost_report(db, dashboard.cost, principal, start)

    return await run_in_threadpool(report)
