"""GET /health and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.auth import requires_if
from server.protocol import COMMON_ERRORS, error_responses
from server.routes.deps import ServiceDep

router = APIRouter()


@router.get(
    "/health",
    dependencies=[Depends(requires_if("public_health", "chat"))],
    responses=error_responses(*COMMON_ERRORS),
)
async def health(service: ServiceDep) -> dict:
    return {"status": "ok", **await service.engine.health()}


@router.get(
    "/metrics",
    dependencies=[Depends(requires_if("public_metrics", "admin"))],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(*COMMON_ERRORS),
    },
)
async def metrics(request: Request) -> Response:
    # the app's, not the service's: there from the first request on, while the engine starts too
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
