"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ownllm.api.state import AppState, get_state
from ownllm.gateway.routing import Router

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: AppState = Depends(get_state)) -> JSONResponse:
    """Ready: the model is loaded in the backend (behind a router: some local replica is
    healthy) and the database answers. A router's replicas are listed with their state
    (healthy, circuit_open, down)."""
    backend = state.backend
    backend_ok = backend is not None and await _healthy(
        backend, state.config.routing.health_timeout_s
    )
    db_ok = state.db is not None and state.db.ping()
    body = {
        "status": "ready" if backend_ok and db_ok else "not_ready",
        "model": state.model_id,
        "model_loaded": backend_ok,
        "database": db_ok,
    }
    if isinstance(backend, Router):
        body["replicas"] = backend.replica_states()
    return JSONResponse(body, status_code=200 if backend_ok and db_ok else 503)


async def _healthy(backend, timeout_s: float) -> bool:
    """The backend's health, a check that takes longer than `timeout_s` counting as down."""
    try:
        return await asyncio.wait_for(backend.health(), timeout_s)
    except TimeoutError:
        return False
