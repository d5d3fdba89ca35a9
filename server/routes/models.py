"""GET /v1/models and /v1/models/{id}: the base, the variants, and registered versions."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from server.auth import requires
from server.errors import ModelNotFound
from server.protocol import COMMON_ERRORS, ModelCard, ModelList, error_responses
from server.routes.deps import ServiceDep
from server.serving import BASE_SUFFIX, ChatService

router = APIRouter(dependencies=[Depends(requires("chat"))])


async def model_cards(service: ChatService) -> list[ModelCard]:
    base = service.base_id
    cards = [
        ModelCard(
            id=base,
            created=service.created,
            name=base,
            root=base,
            metadata={"dtype": service.engine.dtype},  # the served weights' dtype, if known
        )
    ]
    # how the spelling pass picks a misspelt word's spelling: a model in context, or frequency
    spelling_by = "context" if service.spells_in_context else "frequency"
    correctors = {}  # a grounded turn's corrector, where the catalogue names another model
    for v in service.catalogue.variants.values():
        if (who := await service.corrector_of(v)) is not None:
            correctors[v.id] = who.adapter_label
    for v in service.catalogue.variants.values():
        target = await service.resolve(v.id)
        meta = {
            "language": v.language,
            "learner": v.learner,
            "role": v.role,  # tutor, or a corrector other variants ground their replies with
            "description": v.description,
            "adapter": target.adapter_label,
            "grounded": v.grounded,  # the default; a request's `grounded` overrides it
            "corrector": correctors.get(v.id),
            "spelling": v.spelling,  # the spelling pass before the corrector turn, if any
            "spelling_by": spelling_by if v.spelling else None,
            "dtype": service.engine.dtype,  # the served weights' dtype, where the engine knows it
        }
        cards.append(
            ModelCard(
                id=v.id, created=service.created, name=v.name, parent=base, root=base, metadata=meta
            )
        )
    if service.adapters is not None:
        spelling = {v.id: v.spelling for v in service.catalogue.variants.values()}
        versions = await asyncio.to_thread(service.registry.list)
        resident = set(service.adapters.resident())
        for ver in versions:
            meta = {
                "variant": ver.variant,
                "rank": ver.rank,
                "lineage_parent": ver.parent,
                "source": ver.source,
                "resident": ver.name in resident,
                "corrector": correctors.get(ver.variant),
                "spelling": spelling.get(ver.variant),
                "spelling_by": spelling_by if spelling.get(ver.variant) else None,
                "dtype": service.engine.dtype,
            }
            cards.append(
                ModelCard(
                    id=ver.name,
                    created=int(ver.created),
                    name=ver.name,
                    parent=ver.variant,
                    root=base,
                    metadata=meta,
                )
            )
    return cards


@router.get(
    "/v1/models",
    response_model=ModelList,
    response_model_exclude_none=True,
    responses=error_responses(*COMMON_ERRORS),
)
async def list_models(service: ServiceDep, request: Request) -> ModelList:
    principal = request.state.principal
    cards = [c for c in await model_cards(service) if service.visible(principal, c.id)]
    return ModelList(data=cards)


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    response_model_exclude_none=True,
    responses=error_responses(*COMMON_ERRORS, 404),
)
async def get_model(model_id: str, service: ServiceDep, request: Request) -> ModelCard:
    service.check_access(request.state.principal, model_id)
    for card in await model_cards(service):
        if card.id == model_id:
            return card
    variant = service.catalogue.variants.get(model_id.removesuffix(BASE_SUFFIX))
    if model_id.endswith(BASE_SUFFIX) and variant is not None:
        # not listed (clients would offer it as a model), but answerable: eval resolves it
        meta = {
            "language": variant.language,
            "learner": variant.learner,
            "adapter": "base",
            "persona": variant.id,
            "grounded": False,
            "dtype": service.engine.dtype,
        }
        base = service.base_id
        return ModelCard(
            id=model_id,
            created=service.created,
            name=model_id,
            parent=base,
            root=base,
            metadata=meta,
        )
    raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")
