"""The gateway's hot path, made cheaper for the overhead benchmark, keeps its behaviour.

The `openai`/`vllm` engines stream the chat call over their own keep-alive HTTP/1.1 pool
(server/engines/http_pool.py) and the SSE writer serialises chunks from templates and batches
events already in hand (server/streaming.py). These tests pin what must not change: connections
are reused, a connection the upstream dropped while idle is retried once, cuts and timeouts are
"engine unavailable", upstream errors keep their mapping, and the events are byte for byte those
of the plain ``json.dumps`` writer. No timings are asserted.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

import httpx
import pytest

from common.settings import Settings
from deploy.bench.fake_upstream import build_app
from server.app import create_app
from server.engines.base import GenerationRequest, SamplingParams, TextDelta
from server.engines.openai_engine import OpenAIEngine
from server.errors import EngineError, EngineUnavailable, InvalidRequest, ModelNotFound
from server.streaming import _Events, _sse, sse_stream
from tests.support import running_server

REQUEST = GenerationRequest(
    messages=[{"role": "user", "content": "I has a cat."}], params=SamplingParams(max_tokens=8)
)


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
TOKENS = [_event({"choices": [{"index": 0, "delta": {"content": t}}]}) for t in ("Oh", ",", " you")]
FINISH = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"
WHOLE = HEAD + _chunked(*TOKENS, FINISH, USAGE, DONE) + b"0\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = json.loads(await reader.readexactly(length))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    return True


async def _with_upstream(handler: Handler, client: Callable[[str], Awaitable[None]]) -> None:
    """Run a raw HTTP upstream (``handler`` per connection, numbered) and the client against it."""
    count = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        try:
            await handler(reader, writer, count)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await client(f"http://127.0.0.1:{port}/v1")
    finally:
        server.close()


async def _collect(engine: OpenAIEngine) -> list[TextDelta]:
    return [d async for d in engine.generate(REQUEST)]


def test_keep_alive_connections_are_reused_against_the_fake_upstream():
    with running_server(build_app(model="fake-model", tokens=8)) as url:

        async def main() -> None:
            engine = OpenAIEngine(f"{url}/v1", default_model="fake-model")
            try:
                for _ in range(5):
                    deltas = await _collect(engine)
                    assert "".join(d.text for d in deltas).startswith("Oh , you went")
                    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("length", 8)
                results = await asyncio.gather(*(_collect(engine) for _ in range(4)))
                assert all(len(r) == 9 for r in results)
                assert engine._pool is not None and engine._pool.opened <= 4
            finally:
                await engine.aclose()

        asyncio.run(main())


def test_a_collected_request_asks_for_one_body_and_yields_what_the_stream_would():
    """``stream=False`` (a non-stream client, a corrector turn): the upstream is asked for one
    JSON body, over the same pool, and its text, logprobs, tool calls (indexed as streamed ones
    are), finish reason and usage come back as the deltas a stream of it would have given; the
    fake upstream's body and stream of the same reply collect to the same text and usage."""
    logprobs = [{"token": "Oh", "logprob": -0.1, "top_logprobs": []}]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    reply = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Oh, you", "tool_calls": [call]},
                "logprobs": {"content": logprobs},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }
    payload = json.dumps(reply).encode()
    asked = []

    async def handler(reader, writer, n: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        asked.append(json.loads(await reader.readexactly(length)))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        await writer.drain()
        await reader.read(1)

    async def client(url: str) -> None:
        engine = OpenAIEngine(url, default_model="m")
        try:
            deltas = [d async for d in engine.generate(replace(REQUEST, stream=False))]
        finally:
            await engine.aclose()
        assert asked[0]["stream"] is False and "stream_options" not in asked[0]
        first, last = deltas
        assert (first.text, first.logprobs) == ("Oh, you", logprobs)
        assert first.tool_calls == [{**call, "index": 0}]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
            "tool_calls",
            5,
            3,
        )

    asyncio.run(_with_upstream(handler, client))

    with running_server(build_app(model="fake-model", tokens=8)) as url:

        async def both() -> None:
            engine = OpenAIEngine(f"{url}/v1", default_model="fake-model")
            try:
                streamed = await _collect(engine)
                body = [d async for d in engine.generate(replace(REQUEST, stream=False))]
            finally:
                await engine.aclose()
            assert len(body) == 2 < len(streamed)
            assert "".join(d.text for d in body) == "".join(d.text for d in streamed)
            assert (body[-1].finish_reason, body[-1].completion_tokens) == (
                streamed[-1].finish_reason,
                streamed[-1].completion_tokens,
            )

        asyncio.run(both())


def test_a_connection_dropped_while_idle_is_retried_once_on_a_fresh_one():
    async def handler(reader, writer, n: int) -> None:
        await _read_request(reader)
        writer.write(WHOLE)  # keep-alive promised...
        await writer.drain()
        if n == 1:
            await reader.read(1)  # ...but the next request on this connection is dropped unread
            return
        while await _read_request(reader):
            writer.write(WHOLE)
            await writer.drain()

    async def client(url: str) -> None:
        engine = OpenAIEngine(url, default_model="m")
        try:
            for _ in range(3):
                deltas = await _collect(engine)
                assert [d.text for d in deltas[:-1]] == ["Oh", ",", " you"]
                assert deltas[-1].completion_tokens == 3
            assert engine._pool.opened == 2
        finally:
            await engine.aclose()

    asyncio.run(_with_upstream(handler, client))


def test_deltas_read_together_say_more_follows():
    async def handler(reader, writer, n: int) -> None:
        await _read_request(reader)
        writer.write(HEAD + _chunked(TOKENS[0]))
        await writer.drain()
        await asyncio.sleep(0.05)  # the rest arrives in a later read
        writer.write(_chunked(TOKENS[1], TOKENS[2], FINISH, USAGE, DONE) + b"0\r\n\r\n")
        await writer.drain()

    async def client(url: str) -> None:
        engine = OpenAIEngine(url, default_model="m")
        try:
            deltas = await _collect(engine)
        finally:
            await engine.aclose()
        # the first token came alone: flushed at once; the others came with the end
        assert [d.extra.get("more", False) for d in deltas] == [False, True, True, False]
        pieces = [
            piece
            async for piece in sse_stream(
                deltas[0], _aiter(deltas[1:]), model="m", include_usage=True, cid="chatcmpl-t"
            )
        ]
        events = b"".join(pieces).split(b"\n\n")[:-1]
        assert len(pieces) == 2 and len(events) == 1 + 3 + 2 + 1  # role, tokens, finish+usage, DONE

    asyncio.run(_with_upstream(handler, client))


async def _aiter(items):
    for item in items:
        yield item


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, ModelNotFound),
        (503, EngineUnavailable),
        (429, EngineUnavailable),
        (400, InvalidRequest),
        (500, EngineError),
    ],
)
def test_upstream_statuses_keep_their_meaning(status, error):
    body = json.dumps({"error": {"message": "nope"}}).encode()

    async def handler(reader, writer, n: int) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )
        await writer.drain()

    async def client(url: str) -> None:
        engine = OpenAIEngine(url, default_model="m")
        try:
            with pytest.raises(error, match="nope"):
                await _collect(engine)
        finally:
            await engine.aclose()

    asyncio.run(_with_upstream(handler, client))


def test_an_error_event_a_cut_and_a_stall_end_the_stream_with_the_right_error():
    async def handler(reader, writer, n: int) -> None:
        await _read_request(reader)
        if n == 1:  # an error event inside the stream
            err = _event({"error": {"message": "model crashed", "type": "x"}})
            writer.write(HEAD + _chunked(TOKENS[0], err))
        elif n == 2:  # the upstream dies mid-body
            writer.write(HEAD + _chunked(TOKENS[0]))
            await writer.drain()
            writer.transport.abort()
            return
        else:  # the upstream stalls
            writer.write(HEAD + _chunked(TOKENS[0]))
            await writer.drain()
            await asyncio.sleep(5)
        await writer.drain()
        await reader.read(1)

    async def client(url: str) -> None:
        engine = OpenAIEngine(url, default_model="m", timeout=0.5)
        try:
            with pytest.raises(EngineError, match="model crashed"):
                await _collect(engine)
            with pytest.raises(EngineUnavailable, match="closed the connection mid-response"):
                await _collect(engine)
            with pytest.raises(EngineUnavailable, match="timed out"):
                await _collect(engine)
        finally:
            await engine.aclose()

    asyncio.run(_with_upstream(handler, client))


def test_an_upstream_that_is_down_is_unavailable():
    async def main() -> None:
        from tests.support import free_port

        engine = OpenAIEngine(f"http://127.0.0.1:{free_port()}/v1", default_model="m")
        try:
            with pytest.raises(EngineUnavailable, match="unreachable"):
                await _collect(engine)
        finally:
            await engine.aclose()

    asyncio.run(main())


def test_templated_events_are_the_bytes_json_dumps_writes():
    def plain(obj: dict) -> bytes:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        return b"data: " + text.encode() + b"\n\n"

    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    for model in ("tutor", 'odd"model\\é', "漢字"):
        events = _Events("chatcmpl-1", 1700000000, model)

        def chunk(delta: dict, finish: str | None = None, model: str = model) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return plain({**base, "model": model, "choices": [choice]})

        assert events.role() == chunk({"role": "assistant", "content": ""})
        for text in ("Oh", ' "so"\n', "é漢😀\t\x01\x7f", "\\", "</script>", "\u2028"):
            assert events.content(text) == chunk({"content": text})
        assert events.finish("length") == chunk({}, "length")
        usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        last = TextDelta(finish_reason="stop", prompt_tokens=4, completion_tokens=2)
        assert events.usage(last) == plain({**base, "model": model, "choices": [], "usage": usage})
    err = {"error": {"message": "é", "type": "t", "param": None, "code": None}}
    assert _sse(err) == plain(err)


def test_start_up_objects_are_frozen_while_serving_and_released_at_shutdown():
    """``gc.freeze()`` after start-up keeps full collections from walking the gateway's
    long-lived objects under load (the 26 ms pause behind the p99 of 32 paced streams,
    docs/PERFORMANCE.md section 6); shutdown unfreezes them, so an app that ends (as in these
    tests, many per process) leaves nothing the collector cannot reach."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with running_server(build_app()) as up:
        settings = Settings(engine="openai", model="fake-model", upstream_url=f"{up}/v1")
        with running_server(create_app(settings)) as url:
            frozen = gc.get_freeze_count()
            r = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]},
                timeout=10,
            )
            assert r.status_code == 200, r.text
        assert frozen > 0
        assert gc.get_freeze_count() == 0
