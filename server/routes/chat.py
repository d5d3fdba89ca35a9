"""POST /v1/chat/completions, and the legacy POST /v1/completions through the same conductor."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.auth import Principal, requires
from server.errors import TutorError
from server.observe import record, request_id
from server.protocol import (
    COMMON_ERRORS,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    TextCompletion,
    completion_id,
    error_responses,
)
from server.routes.deps import ServiceDep
from server.serving import ChatService
from server.streaming import collect, sse_stream
from server.timing import Timing, arrival
from server.tracing import trace_headers

router = APIRouter()


class _ClosingStreamingResponse(StreamingResponse):
    """A stream whose body is closed when the response ends, however it ends.

    When the client goes away, Starlette cancels the task that writes the stream but leaves the
    body generator suspended (it is closed only when garbage-collected). If the cancellation
    lands while a chunk is being written rather than while the next token is awaited, the
    engine's upstream request stays open and vLLM generates on for nobody: seen as a flaky
    ``test_client_disconnect_aborts_the_request_in_vllm``. Closing the generator here runs its
    ``finally`` blocks now, down to the engine, which closes the upstream connection.
    """

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


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
    is the learner's turn, so persona rules, limits and errors are the chat route's."""
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
    """One chat request from admission to its response, in the chat or the legacy shape."""
    timing = Timing(arrival(request.scope))
    rec = record(request.scope)
    rec.update(key=principal.name, model=body.model, stream=body.stream)
    service.check_access(principal, body.model)
    limiter = request.app.state.limiter
    await limiter.admit(principal)
    target, gen_request = await service.prepare(body, principal.name)
    forward = trace_headers()  # W3C traceparent, when tracing is on
    if rid := request_id(request.scope):
        forward["X-Request-Id"] = rid
    gen_request = replace(gen_request, headers=forward)
    cid = completion_id("cmpl" if legacy else "chatcmpl")
    rec.update(
        variant=target.model_id, adapter=target.adapter_label, completion_id=cid, timing=timing
    )
    deltas = limiter.hold(principal, service.generate(target, gen_request, timing))
    # Wait for the first delta before answering: an engine that is down or a bad adapter still
    # gets a real HTTP status instead of an error hidden inside a 200 stream.
    try:
        first = await anext(deltas)
    except BaseException:
        await deltas.aclose()
        raise
    headers = {"x-tutor-variant": target.model_id, "x-tutor-adapter": target.adapter_label}
    if "adapter_load_s" in first.extra:  # this request paid for a cold adapter load
        headers["x-tutor-adapter-load-ms"] = f"{first.extra['adapter_load_s'] * 1000:.1f}"
    if "grounding" in first.extra:  # changed | unchanged | rejected: what the corrector did
        headers["x-tutor-grounding"] = rec["grounding"] = first.extra["grounding"]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        headers["server-timing"] = timing.server_timing()
        stream = sse_stream(
            first, deltas, model=body.model, include_usage=include_usage, cid=cid, legacy=legacy
        )
        return _ClosingStreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    reply = await collect(first, deltas, model=body.model, cid=cid, legacy=legacy)
    headers["server-timing"] = timing.server_timing()  # with decode: the reply is complete
    return JSONResponse(reply, headers=headers)
