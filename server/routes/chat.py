"""POST /v1/chat/completions, and the legacy POST /v1/completions through the same conductor."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.auth import Principal, requires
from server.errors import TutorError
from server.event_stream import EventStreamResponse
from server.observe import record, request_id
from server.protocol import (
    COMMON_ERRORS,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    TextCompletion,
    error_responses,
)
from server.routes.deps import ServiceDep, get_service
from server.serving import ChatService
from server.streaming import collect, sse_stream
from server.timing import Timing, arrival

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "A completion, or with `stream` an SSE stream of chunks",
        },
        **error_responses(*COMMON_ERRORS, 404, 422, 502),
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    service: ServiceDep,
    request: Request,
    principal: Annotated[Principal, Depends(requires("chat"))],
):
    """Chat completions. Declared here for the OpenAPI document; ``ChatEndpoint`` serves it."""
    return await answer(body, service, request, principal)


@router.post(
    "/v1/completions",
    response_model=TextCompletion,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "A text completion, or with `stream` an SSE stream of them",
        },
        **error_responses(*COMMON_ERRORS, 404, 422, 502),
    },
)
async def create_completion(
    body: CompletionRequest,
    service: ServiceDep,
    request: Request,
    principal: Annotated[Principal, Depends(requires("chat"))],
):
    """Legacy completions, for eval harnesses and load tools that still use them: the prompt
    is the learner's turn, so persona rules, limits and errors are the chat route's. Declared
    here for the OpenAPI document; ``ChatEndpoint`` serves it."""
    return await legacy_answer(body, service, request, principal)


class ChatEndpoint:
    """The two completion routes as plain ASGI apps: what serves them (server/app.py puts these
    ahead of the FastAPI routes above, which stay for the OpenAPI document).

    FastAPI's per-request machinery (solving the dependency graph, validating parameters,
    wrapping the handler) was a third of the gateway's event-loop time on this route under
    load (docs/PERFORMANCE.md, section 6). This does the same steps by hand, in the same order
    and with the same errors: the body is parsed as FastAPI parses it (``json.loads``, so a
    lone surrogate still reaches the model's own check and is named), validated by the same
    pydantic model, a validation error raised as FastAPI's ``RequestValidationError`` (the
    one handler words it), then the key (``requires``), the service, and ``answer``.
    """

    def __init__(self, path: str, *, legacy: bool) -> None:
        self.route = Route(path, self, methods=["POST"])
        self.legacy = legacy
        self.model: type[ChatCompletionRequest | CompletionRequest] = (
            CompletionRequest if legacy else ChatCompletionRequest
        )
        self.principal = requires("chat")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the route template for the access line and the HTTP metrics (server/observe.py):
        # FastAPI's router records it for its own routes only
        scope["route"] = self.route
        request = Request(scope, receive)
        data = _decode(request.headers.get("content-type"), await request.body())
        principal = await self.principal(request)  # FastAPI's order: JSON, then keys, then model
        body = self._validate(data)
        service = await get_service(request)
        if not self.legacy:
            response = await answer(body, service, request, principal)
        else:
            response = await legacy_answer(body, service, request, principal)
        await response(scope, receive, send)

    def _validate(self, data: Any) -> Any:
        if data is _NO_BODY:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        if isinstance(data, bytes):  # FastAPI validates such a body as bytes; its words
            raise RequestValidationError(
                [
                    {
                        "type": "model_attributes_type",
                        "loc": ("body",),
                        "msg": "Input should be a valid dictionary or object to extract fields "
                        "from",
                        "input": data,
                    }
                ]
            )
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            raise RequestValidationError(errors, body=data) from None


_NO_BODY = object()


def _decode(content_type: str | None, raw: bytes) -> Any:
    """The body as FastAPI (strict about content types) reads it: parsed when it says it is
    JSON; the bytes as they are otherwise, and ``_NO_BODY`` for none, both refused only after
    the key is checked, as FastAPI does."""
    if not raw:
        return _NO_BODY
    if content_type is None or not _is_json(content_type):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    except Exception as exc:  # bytes that are not UTF-8, nesting deeper than the parser goes
        raise HTTPException(400, "There was an error parsing the body") from exc


def completion_routes() -> list[Route]:
    """The routes ``ChatEndpoint`` serves, for server/app.py to put first."""
    return [
        ChatEndpoint("/v1/chat/completions", legacy=False).route,
        ChatEndpoint("/v1/completions", legacy=True).route,
    ]


def _is_json(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


async def legacy_answer(
    body: CompletionRequest, service: ChatService, request: Request, principal: Principal
) -> Response:
    """Legacy completions through the chat conductor, errors named as the client sent them."""
    try:
        return await answer(body.as_chat(), service, request, principal, legacy=True)
    except TutorError as exc:  # the learner's turn is the prompt: name it as the client sent it
        if exc.param and exc.param.startswith("messages"):
            exc.param = "prompt"
        raise


async def answer(
    body: ChatCompletionRequest,
    service: ChatService,
    request: Request,
    principal: Principal,
    *,
    legacy: bool = False,
) -> Response:
    """One chat request's HTTP response, in the chat or the legacy shape: the conductor
    (``ChatService.open_turn``) admits and starts it; this frames its deltas as SSE or JSON."""
    timing = Timing(arrival(request.scope))
    rec = record(request.scope)
    rec.update(key=principal.name, model=body.model, stream=body.stream)
    turn = await service.open_turn(
        body,
        principal,
        timing=timing,
        request_id=request_id(request.scope),
        legacy=legacy,
        record=rec,
    )
    headers = turn.headers
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        headers["server-timing"] = timing.server_timing()
        stream = sse_stream(
            turn.first,
            turn.deltas,
            model=body.model,
            include_usage=include_usage,
            cid=turn.cid,
            legacy=legacy,
        )
        return EventStreamResponse(
            stream, headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    reply = await collect(turn.first, turn.deltas, model=body.model, cid=turn.cid, legacy=legacy)
    headers["server-timing"] = timing.server_timing()  # with decode: the reply is complete
    return JSONResponse(reply, headers=headers)
