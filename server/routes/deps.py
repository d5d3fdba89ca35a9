"""Dependencies the routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.errors import EngineUnavailable
from server.serving import ChatService


def get_service(request: Request) -> ChatService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise EngineUnavailable("the service is still starting")
    return service


ServiceDep = Annotated[ChatService, Depends(get_service)]
