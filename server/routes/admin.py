"""/admin: register, promote, roll back and remove adapter versions over HTTP.

Mounted only when an admin key is configured; every route needs it as a Bearer token.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from adapters.registry import PathNotAllowed, RegistryError, VersionNotFound
from adapters.validation import AdapterValidationError
from server.adapter_manager import AdapterManager
from server.auth import requires
from server.errors import AdapterNotFound, Conflict, InvalidAdapter, InvalidRequest
from server.protocol import COMMON_ERRORS, error_responses
from server.routes.deps import ServiceDep

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(requires("admin", open_without_keys=False))],
    tags=["admin"],
    responses=error_responses(*COMMON_ERRORS, 404, 409, 422, 502),
)


class AddAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096)
    variant: str = Field(min_length=1, max_length=128)
    parent: str | None = None
    source: dict[str, Any] | None = None


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=256)


async def _manager(service: ServiceDep) -> AdapterManager:
    if service.adapters is None:
        raise InvalidRequest("this gateway's engine has no local adapters (openai upstream)")
    return service.adapters


ManagerDep = Annotated[AdapterManager, Depends(_manager)]


async def _guard(coro: Any) -> Any:
    """Registry errors become API errors with the right status."""
    try:
        return await coro
    except VersionNotFound as exc:
        raise AdapterNotFound(str(exc)) from exc
    except AdapterValidationError as exc:
        raise InvalidAdapter(str(exc)) from exc
    except PathNotAllowed as exc:
        raise InvalidRequest(str(exc), param="path") from exc
    except RegistryError as exc:
        raise Conflict(str(exc)) from exc


@router.get("/adapters")
async def list_adapters(manager: ManagerDep, variant: str | None = None) -> dict:
    versions = await asyncio.to_thread(manager.registry.list, variant)
    resident = set(manager.resident())
    return {"data": [{**v.to_dict(), "resident": v.name in resident} for v in versions]}


@router.get("/adapters/{name}")
async def show_adapter(name: str, manager: ManagerDep) -> dict:
    version = await _guard(asyncio.to_thread(manager.registry.get, name))
    return {**version.to_dict(), "resident": name in manager.resident()}


@router.post("/adapters", status_code=201)
async def add_adapter(body: AddAdapter, manager: ManagerDep, service: ServiceDep) -> dict:
    if body.variant not in service.catalogue.variants:
        raise InvalidRequest(f"unknown variant {body.variant!r}", param="variant")
    version = await _guard(
        asyncio.to_thread(
            manager.registry.add,
            Path(body.path),
            variant=body.variant,
            base_model=service.base_source,
            max_rank=service.engine.max_lora_rank,
            parent=body.parent,
            source=body.source,
        )
    )
    return version.to_dict()


@router.delete("/adapters/{name}")
async def remove_adapter(name: str, manager: ManagerDep) -> dict:
    await _guard(manager.remove(name))
    return {"removed": name}


@router.get("/variants")
async def variants(manager: ManagerDep) -> dict:
    return {"aliases": manager.aliases(), "resident": manager.resident()}


@router.post("/variants/{variant}/promote")
async def promote(variant: str, body: Promote, manager: ManagerDep) -> dict:
    previous, current = await _guard(manager.promote(variant, body.version))
    return {"variant": variant, "previous": previous, "current": current}


@router.post("/variants/{variant}/rollback")
async def rollback(variant: str, manager: ManagerDep) -> dict:
    previous, current = await _guard(manager.rollback(variant))
    return {"variant": variant, "previous": previous, "current": current}
