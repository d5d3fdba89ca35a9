"""A FAKE OpenAI-compatible upstream for benchmarks: canned tokens, streamed at once.

It generates nothing. Every reply is built at start-up and sent as fast as the socket takes it,
so a request through the gateway minus the same request sent here directly is the gateway's own
cost. ``--token-interval-ms`` paces the tokens like a real model instead.

    python -m deploy.bench.fake_upstream --port 8200 --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CANNED = [
    "Oh", ",", "you", "went", "to", "the", "store", "yesterday", "?",
    "What", "did", "you", "buy", "there", "?", "I", "love", "apples", "!",
]  # fmt: skip
PROMPT_TOKENS = 24


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(obj: dict) -> bytes:
    return b"data: " + _dump(obj) + b"\n\n"


def build_app(*, model: str = "fake-model", tokens: int = 16, interval_ms: float = 0.0):
    words = [(" " if i else "") + CANNED[i % len(CANNED)] for i in range(tokens)]
    cid, created = "chatcmpl-fake", 1700000000

    def chunk(delta: dict, finish: str | None = None, **more) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
            **more,
        }

    def usage(n: int) -> dict:
        return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": 24 + n}

    role = _sse(chunk({"role": "assistant", "content": ""}))
    pieces = [_sse(chunk({"content": w})) for w in words]
    finish = {n: _sse(chunk({}, "length" if n == tokens else "stop")) for n in range(1, tokens + 1)}
    usage_events = {
        n: _sse({**chunk({}), "choices": [], "usage": usage(n)}) for n in range(1, tokens + 1)
    }
    whole = {
        n: _dump(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words[:n])},
                        "logprobs": None,
                        "finish_reason": "length" if n == tokens else "stop",
                    }
                ],
                "usage": usage(n),
            }
        )
        for n in range(1, tokens + 1)
    }
    interval = interval_ms / 1000.0

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        n = max(1, min(int(body.get("max_tokens") or tokens), tokens))
        if not body.get("stream"):
            if interval:
                await asyncio.sleep(interval * n)
            return Response(whole[n], media_type="application/json")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            yield role
            for piece in pieces[:n]:
                if interval:
                    await asyncio.sleep(interval)
                yield piece
            yield finish[n]
            if include_usage:
                yield usage_events[n]
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fake"}]}
        )

    async def health(_: Request) -> Response:
        return Response(b"ok")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--model", default="fake-model", help="the model id it answers as")
    p.add_argument("--tokens", type=int, default=16, help="canned tokens per reply (at most)")
    p.add_argument("--token-interval-ms", type=float, default=0.0, help="0: all at once")
    a = p.parse_args(argv)
    app = build_app(model=a.model, tokens=a.tokens, interval_ms=a.token_interval_ms)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
