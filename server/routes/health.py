"""GET /health and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.routes.deps import ServiceDep

router = APIRouter()


@router.get("/health")
async def health(service: ServiceDep) -> dict:
    return {"status": "ok", **await service.engine.health()}


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
