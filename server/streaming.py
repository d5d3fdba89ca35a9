"""Deltas to OpenAI chunks: as SSE for streams, collected into one reply otherwise.

Both shapes come from the same delta stream, so a non-stream reply is exactly the collected
stream. Errors after the first byte of a stream are sent as an error event, then ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from server.engines.base import TextDelta
from server.errors import as_tutor_error
from server.protocol import completion_id, now

DONE = b"data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _usage(delta: TextDelta) -> dict[str, int]:
    p, c = delta.prompt_tokens or 0, delta.completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def sse_stream(
    first: TextDelta,
    rest: AsyncIterator[TextDelta],
    *,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    cid, created = completion_id(), now()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    delta: TextDelta | None = first
    try:
        while delta is not None:
            if delta.text:
                yield chunk({"content": delta.text})
            if delta.finish_reason is not None:
                yield chunk({}, delta.finish_reason)
                if include_usage:
                    yield _sse(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(delta),
                        }
                    )
                break
            delta = await anext(rest, None)
    except Exception as exc:  # noqa: BLE001 - reported in-band, the status line is long gone
        yield _sse(as_tutor_error(exc).body())
    finally:
        await rest.aclose()
    yield DONE


async def collect(
    first: TextDelta, rest: AsyncIterator[TextDelta], *, model: str
) -> dict[str, Any]:
    text: list[str] = []
    last = first
    delta: TextDelta | None = first
    try:
        while delta is not None:
            text.append(delta.text)
            last = delta
            if delta.finish_reason is not None:
                break
            delta = await anext(rest, None)
    finally:
        await rest.aclose()
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "logprobs": None,
                "finish_reason": last.finish_reason or "stop",
            }
        ],
        "usage": _usage(last),
    }
