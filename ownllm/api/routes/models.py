"""GET /v1/models and /v1/models/{id} in the OpenAI list shape.

Extensions beside OpenAI's fields: `root`, `parent` (an adapter's base), `max_model_len`,
`adapter_id`, `alias` on the caller's model aliases (`target`: the version it points
at, `version`, `updated_at`), and `generation_defaults` on the base model and its adapters (the sampling
values a request gets for the fields it leaves out).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from ownllm.api.routes.adapters import adapter_models
from ownllm.api.routes.aliases import alias_models
from ownllm.api.schemas import ERROR_RESPONSES, Model, ModelList
from ownllm.api.state import AppState, get_state
from ownllm.errors import ModelNotFoundError
from ownllm.gateway.auth import get_principal
from ownllm.gateway.principal import Principal

router = APIRouter(prefix="/v1", tags=["models"])


def _base_model(state: AppState) -> dict:
    return {
        "id": state.model_id,
        "object": "model",
        "created": int(state.started_at),
        "owned_by": "ownllm",
        "root": state.model_id,
        "parent": None,
        "max_model_len": state.backend.model_info.max_model_len if state.backend else None,
        "generation_defaults": state.generation_defaults.as_dict(),
    }


def _embedding_models(state: AppState) -> list[dict]:
    """The shipped embedding model, when its wheel is installed (it loads on first use)."""
    from ownllm.models.embedding import EMBEDDING_MODEL_ID, ModelLoadError, shipped_model_dir

    try:
        shipped_model_dir()
    except ModelLoadError:
        return []
    return [
        {
            "id": EMBEDDING_MODEL_ID,
            "object": "model",
            "created": int(state.started_at),
            "owned_by": "ownllm",
            "root": EMBEDDING_MODEL_ID,
            "parent": None,
        }
    ]


@router.get("/models", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(
    state: AppState = Depends(get_state), principal: Principal = Depends(get_principal)
) -> dict:
    # adapters of the served base the caller may use, with parent = the base (tenant-scoped);
    # they sample with the base model's generation defaults
    generation = {"generation_defaults": state.generation_defaults.as_dict()}
    adapters = [
        {**model, **generation}
        for model in await run_in_threadpool(adapter_models, state, principal)
    ]
    named = await run_in_threadpool(alias_models, state, principal)
    named = [{**model, **generation} for model in named]
    data = [_base_model(state), *named, *adapters, *_embedding_models(state)]
    return {"object": "list", "data": data}


@router.get(
    "/models/{model_id:path}",
    response_model=Model,
    response_model_exclude_unset=True,
    responses={status: ERROR_RESPONSES[status] for status in (401, 404)},
)
async def get_model(
    model_id: str,
    state: AppState = Depends(get_state),
    principal: Principal = Depends(get_principal),
) -> dict:
    for model in (await list_models(state, principal))["data"]:
        if model["id"] == model_id:
            return model
    raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
