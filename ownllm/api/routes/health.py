"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ownllm.api.state import AppState, get_state

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: AppState = Depends(get_state)) -> JSONResponse:
    """Ready: the model is loaded in the backend and the database answers."""
    backend_ok = state.backend is not None and await state.backend.health()
    db_ok = state.db is not None and state.db.ping()
    body = {
        "status": "ready" if backend_ok and db_ok else "not_ready",
        "model": state.model_id,
        "model_loaded": backend_ok,
        "database": db_ok,
    }
    return JSONResponse(body, status_code=200 if backend_ok and db_ok else 503)
