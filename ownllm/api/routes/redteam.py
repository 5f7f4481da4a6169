"""/v1/redteam/runs: run the shipped red-team suite against a model, adapter or alias
(ownllm extension). A run is an eval run of the tenant's red-team eval (`kind` redteam,
made on first use): queued here, run by the eval worker through the inference path with
the tenant's guard policy, its `report` the attack success and false-positive rates per
OWASP category. The same runs, and their items, are under /v1/evals too. Another tenant's
run is a 404.

    POST /v1/redteam/runs            {"model", "seed": optional (fixed canaries)}
    GET  /v1/redteam/runs/{run_id}
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ownllm.api.routes.evals import _db, scope
from ownllm.api.state import AppState, get_state
from ownllm.errors import NotFoundError
from ownllm.evals import store
from ownllm.gateway.principal import Principal
from ownllm.redteam.suite import create_redteam_run

router = APIRouter(prefix="/v1", tags=["redteam"])


class RedteamBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    seed: int | None = None


@router.post("/redteam/runs")
async def create_run(
    body: RedteamBody, principal: Principal = Depends(scope), state: AppState = Depends(get_state)
) -> dict:
    def work():
        run = create_redteam_run(_db(state), principal, body.model, state.model_id, body.seed)
        if state.eval_worker is not None:
            state.eval_worker.wake()
        return run

    return await run_in_threadpool(work)


@router.get("/redteam/runs/{run_id}")
async def get_run(
    run_id: str, principal: Principal = Depends(scope), state: AppState = Depends(get_state)
) -> dict:
    run = await run_in_threadpool(store.run_by_id, _db(state), principal, run_id)
    if run["report"] is None and run["status"] == "completed":
        raise NotFoundError(f"No red-team run found with id '{run_id}'.", param="run_id")
    return run
