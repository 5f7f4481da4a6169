"""GET /metrics: Prometheus text format (see ownllm.api.metrics for what is measured)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ownllm.api.state import AppState, get_state

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(state: AppState = Depends(get_state)) -> Response:
    """Request counts, tokens, latency histograms and engine gauges."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
