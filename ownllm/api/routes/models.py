"""GET /v1/models and /v1/models/{id} in the OpenAI list shape."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ownllm.api.state import AppState, get_state
from ownllm.errors import ModelNotFoundError

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
    }


@router.get("/models")
async def list_models(state: AppState = Depends(get_state)) -> dict:
    return {"object": "list", "data": [_base_model(state)]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: AppState = Depends(get_state)) -> dict:
    for model in (await list_models(state))["data"]:
        if model["id"] == model_id:
            return model
    raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
