"""An SSE response that writes its chunks straight to the server and stops when the client leaves.

Starlette's ``StreamingResponse`` does the same job with an anyio task group per stream (one
task writes, one listens for the disconnect, a cancel scope ties them). On this gateway's
hottest path that machinery was an eighth of the event loop's time under streaming load
(``deploy.bench.profile --mode stream``: anyio 6.7%, Starlette 6.9%; docs/PERFORMANCE.md,
section 6). Here the writing stays in the request's own task and the listening is one plain
asyncio task whose completion cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    """``text/event-stream`` from an async iterator of ready-made SSE bytes.

    When the client goes away, the request's task is cancelled at once, whatever it awaits (the
    next token, a write), and the body iterator is closed, so its ``finally`` blocks run down
    to the engine, which closes the upstream request: vLLM stops generating for nobody. The
    iterator is closed however the response ends (Starlette's leaves it to the garbage
    collector, which once let a cancelled stream keep vLLM busy).
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None  # an ASGI app runs in a task
        state = {"done": False, "gone": False}

        def client_left(listener: asyncio.Future) -> None:
            # runs on the loop after the listener ends; a response that has ended ignores it
            if listener.cancelled() or listener.exception() is not None or state["done"]:
                return
            state["gone"] = True
            task.cancel()

        listener = asyncio.ensure_future(_until_disconnect(receive))
        listener.add_done_callback(client_left)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise  # cancelled from outside (shutdown): not ours to swallow
            task.uncancel()  # the client left: the response ends quietly, as Starlette's does
        finally:
            state["done"] = True
            listener.cancel()
            await self.body_iterator.aclose()


async def _until_disconnect(receive: Receive) -> None:
    """Wait for ``http.disconnect``. uvicorn also sends it once the response is complete; the
    response has set its ``done`` flag by then, so that one cancels nothing."""
    while (await receive())["type"] != "http.disconnect":
        pass
