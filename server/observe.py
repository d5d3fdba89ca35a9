"""One request, followed: its ``x-request-id``, one log line, and the HTTP metrics.

``RequestObserver`` wraps the whole app (errors included), so every response carries the id, and
the 400/401/403/404/429 answers that never reach the chat service still count in ``/metrics``
and in the log. The id is the client's own ``x-request-id`` when it sends a sane one (Open WebUI
and proxies do), else a new one; the chat route forwards it to the engine as ``X-Request-Id``
(vLLM names its request after it: ``chatcmpl-<id>``, in its request logs with
``--enable-log-requests`` and its traces), so one learner turn can be followed to vLLM.

Routes add what only they know (key name, variant, adapter version, completion id, the request's
``Timing``) to ``record(scope)``; the line is written when the response is complete, so a stream's
line has its tokens and its time to first token.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from server.metrics import Metrics
from server.timing import Timing

REQUEST_ID = "tutor.request_id"  # ASGI scope keys
RECORD = "tutor.record"
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# label values stay few whatever clients send: route templates, these methods, "other"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

access_log = logging.getLogger("tutor.access")


def request_id(scope: dict) -> str | None:
    return scope.get(REQUEST_ID)


def record(scope: dict) -> dict[str, Any]:
    """The request's log fields, for routes to add to (a throwaway dict outside the observer)."""
    return scope.get(RECORD, {})


def _client_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            return text if _SANE_ID.fullmatch(text) else None
    return None


def fields(method: str, route: str, status: int, seconds: float, rec: dict) -> dict[str, Any]:
    """The log line's fields: the request, then the chat route's (if any), then its timing."""
    out: dict[str, Any] = {
        "request_id": rec.get("request_id"),
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
    }
    for key in ("key", "model", "variant", "adapter", "completion_id", "stream", "grounding"):
        if key in rec:
            out[key] = rec[key]
    timing: Timing | None = rec.get("timing")
    if timing is not None:
        if timing.first is not None:
            out["ttft_ms"] = round(timing.ttft * 1000, 2)
        out["prompt_tokens"] = timing.prompt_tokens
        out["completion_tokens"] = timing.completion_tokens
        out["outcome"] = timing.outcome
    return out


class RequestObserver:
    """ASGI middleware: request id in and out, a log line and HTTP metrics per request."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _client_id(scope["headers"]) or uuid.uuid4().hex
        rec: dict[str, Any] = {"request_id": rid}
        scope[REQUEST_ID], scope[RECORD] = rid, rec
        header = (b"x-request-id", rid.encode())
        status = 500  # what the client gets if the app raises before answering
        t0 = time.perf_counter()

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - t0
            matched = getattr(scope.get("route"), "path", None)
            route = matched or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.observe_http(route, method, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                # an unmatched path is the client's: escaped, so it cannot forge a log line
                path = matched or scope["path"].encode("unicode_escape").decode("ascii")
                line = fields(method, route, status, seconds, rec)
                access_log.info("%s %s %d", method, path, status, extra={"fields": line})
