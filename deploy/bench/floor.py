"""The floor of a Python gateway on this machine: uvicorn and a bare relay.

A raw ASGI app (no FastAPI, no Starlette routing, no validation, no auth, no metrics) that sends
the client's body to the upstream over the gateway's own keep-alive pool and copies the
upstream's bytes back untouched, streamed or not, as the client asked. Whatever the gateway adds
beyond this is its own work; what this adds is what any Python gateway on uvicorn pays.
``deploy.bench.overhead --floor`` runs it beside the gateway.

    .venv/bin/python -m deploy.bench.floor --port 9100 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from server.engines.http_pool import Pool

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_JSON = [(b"content-type", b"application/json")]


def relay(upstream: str) -> Any:
    pool: Pool | None = None

    async def app(scope: dict, receive: Any, send: Any) -> None:
        nonlocal pool
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    pool = Pool(upstream, api_key="floor", timeout=120.0, connect_timeout=5.0)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if pool is not None:
                        pool.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": _JSON})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(parts)
        assert pool is not None
        chat = pool.chat(body)
        status, error = await anext(chat)
        stream = b'"stream":true' in body
        await send(
            {"type": "http.response.start", "status": status, "headers": _SSE if stream else _JSON}
        )
        if status != 200:
            await send({"type": "http.response.body", "body": error})
            return
        async for data, last in chat:
            await send({"type": "http.response.body", "body": data, "more_body": not last})

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the upstream's /v1 URL")
    args = p.parse_args(argv)
    uvicorn.run(
        relay(args.upstream),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
