"""GET /v1/models and /v1/models/{id}: the variants and the base model."""

from __future__ import annotations

from fastapi import APIRouter

from server.errors import ModelNotFound
from server.protocol import ModelCard, ModelList
from server.routes.deps import ServiceDep
from server.serving import ChatService

router = APIRouter()


def model_cards(service: ChatService) -> list[ModelCard]:
    cards = [
        ModelCard(
            id=service.base_id, created=service.created, owned_by="tutor", root=service.base_source
        )
    ]
    for v in service.catalogue.variants.values():
        target = service.resolve(v.id)
        cards.append(
            ModelCard(
                id=v.id,
                created=service.created,
                owned_by="tutor",
                parent=service.base_id,
                root=service.base_id,
                metadata={
                    "language": v.language,
                    "learner": v.learner,
                    "description": v.description,
                    "adapter": target.adapter_label,
                },
            )
        )
    return cards


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(service: ServiceDep) -> ModelList:
    return ModelList(data=model_cards(service))


@router.get(
    "/v1/models/{model_id:path}", response_model=ModelCard, response_model_exclude_none=True
)
async def get_model(model_id: str, service: ServiceDep) -> ModelCard:
    for card in model_cards(service):
        if card.id == model_id:
            return card
    raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")
