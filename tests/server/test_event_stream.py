"""EventStreamResponse: chunks in order, the body closed however the stream ends, a client
that leaves ends it quietly and at once, a cancellation from outside is not swallowed.

Driven through a small ASGI harness whose ``receive`` behaves as uvicorn's does: it waits, and
answers ``http.disconnect`` when the client leaves or once the response is complete. The real
server path (uvicorn, the gateway, a held upstream) is in test_security.py's
``test_a_client_that_leaves_mid_stream_frees_its_upstream_request_at_once``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.event_stream import EventStreamResponse


class _Client:
    """uvicorn's side of one request: what was sent, and a disconnect to trigger.

    ``stall_writes``: every write after the first body chunk waits, as a write to a client
    whose socket buffer is full does (uvicorn's ``flow.drain``)."""

    def __init__(self, *, stall_writes: bool = False) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()
        self.stall_writes = stall_writes
        self.stalled = asyncio.Event()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if self.stall_writes and len(self.sent) >= 2:
            self.stalled.set()
            await asyncio.sleep(3600)
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.gone.set()  # uvicorn answers receive() with a disconnect once complete
            await asyncio.sleep(0)  # a server may yield here: the listener ends before we do

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


class _Body:
    """An SSE body that records how it ended; ``hold`` makes it wait after the first chunk."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.closed = False
        self.waiting = asyncio.Event()

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            if self.hold:
                self.waiting.set()
                await asyncio.sleep(3600)  # an upstream between tokens
            yield b"data: [DONE]\n\n"
        finally:
            self.closed = True


def _response(body: _Body) -> EventStreamResponse:
    return EventStreamResponse(body(), headers={"x-tutor-variant": "tutor"})


async def _settle() -> None:
    for _ in range(5):  # let any late done-callback run
        await asyncio.sleep(0)


def test_a_whole_stream_goes_out_in_order_and_nothing_cancels_it_afterwards():
    async def main() -> None:
        client, body = _Client(), _Body()
        task = asyncio.current_task()
        await _response(body)({"type": "http"}, client.receive, client.send)
        await _settle()  # the listener ends now (complete -> disconnect): it must cancel nothing
        assert task.cancelling() == 0
        start = client.sent[0]
        assert start["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
        assert (b"x-tutor-variant", b"tutor") in start["headers"]
        assert client.bodies() == [b"data: 1\n\n", b"data: [DONE]\n\n", b""]
        assert body.closed

    asyncio.run(main())


def test_a_client_that_leaves_between_chunks_ends_the_stream_at_once_and_quietly():
    async def main() -> None:
        client, body = _Client(), _Body(hold=True)
        task = asyncio.create_task(_response(body)({"type": "http"}, client.receive, client.send))
        await body.waiting.wait()
        client.gone.set()  # the learner closes the tab while the body awaits its next token
        await asyncio.wait_for(task, 2)  # returns, not CancelledError: the response just ends
        assert not task.cancelled() and task.cancelling() == 0
        assert body.closed  # its finally ran: the engine's upstream request is closed
        assert client.bodies() == [b"data: 1\n\n"]

    asyncio.run(main())


def test_a_client_that_leaves_during_a_stuck_write_still_closes_the_body():
    """The cancellation lands in ``send``, not in the body: the body, suspended at its
    ``yield``, must still be closed (its ``finally`` is where the engine closes the upstream
    request); left to the garbage collector, vLLM once generated on for nobody."""

    async def main() -> None:
        client, body = _Client(stall_writes=True), _Body()
        task = asyncio.create_task(_response(body)({"type": "http"}, client.receive, client.send))
        await client.stalled.wait()  # writing the second chunk, the body paused at its yield
        client.gone.set()
        await asyncio.wait_for(task, 2)
        assert not task.cancelled() and task.cancelling() == 0
        assert body.closed
        assert client.bodies() == [b"data: 1\n\n"]

    asyncio.run(main())


def test_a_cancellation_from_outside_is_not_swallowed():
    async def main() -> None:
        client, body = _Client(), _Body(hold=True)
        task = asyncio.create_task(_response(body)({"type": "http"}, client.receive, client.send))
        await body.waiting.wait()
        task.cancel()  # shutdown, or a middleware's timeout: not the client leaving
        with pytest.raises(asyncio.CancelledError):
            await task
        assert body.closed

    asyncio.run(main())
