"""GET /v1/usage: the usage ledger aggregated by day, model, key, tenant, status or
endpoint.

The same aggregation as `ownllm usage`. A tenant key (scope `usage`) sees only its own
tenant's rows; the admin sees every tenant, or one with `?tenant=`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from ownllm.api.state import AppState, get_state
from ownllm.errors import ServerError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal
from ownllm.gateway.usage import parse_since, summarize

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage")
async def usage(
    by: str = Query("day", description="day | model | key | tenant | status | endpoint"),
    since: str | None = Query(None, description="7d, 24h, YYYY-MM-DD or Unix seconds"),
    until: str | None = Query(None),
    tenant: str | None = Query(None, description="admin only: one tenant"),
    principal: Principal = Depends(require_scope("usage")),
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    if state.db is None:
        raise ServerError("This server has no database; the usage ledger needs one.")
    tenant_id = tenant if principal.is_admin else principal.tenant_id
    start, end = parse_since(since), parse_since(until)

    def query() -> list[dict]:
        gateway.ledger.flush()
        return summarize(state.db, by=by, tenant_id=tenant_id, since=start, until=end)

    rows = await run_in_threadpool(query)
    return {"object": "list", "by": by, "tenant": tenant_id, "data": rows}
