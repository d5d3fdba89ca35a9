"""Dependencies the routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.errors import EngineUnavailable
from server.serving import ChatService


async def get_service(request: Request) -> ChatService:
    # async on purpose, like every dependency here: FastAPI runs plain ``def`` dependencies in a
    # thread pool, a thread hop per request that cost more than the rest of the gateway
    # (docs/PERFORMANCE.md)
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise EngineUnavailable("the service is still starting")
    return service


ServiceDep = Annotated[ChatService, Depends(get_service)]
