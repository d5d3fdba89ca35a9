"""Deltas to OpenAI chunks: as SSE for streams, collected into one reply otherwise.

Both shapes come from the same delta stream, so a non-stream reply is exactly the collected
stream. Errors after the first byte of a stream are sent as an error event, then ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from server.engines.base import TextDelta
from server.errors import as_tutor_error
from server.protocol import now

DONE = b"data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> bytes:
    # orjson writes what json.dumps(ensure_ascii=False, separators=(",", ":")) writes, faster
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage(delta: TextDelta) -> dict[str, int]:
    p, c = delta.prompt_tokens or 0, delta.completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


_OPEN = b',"logprobs":null,"finish_reason":null}]}\n\n'  # the end of a chunk that goes on


def _head(cid: str, obj: str, created: int, model: str) -> bytes:
    """What is the same in every chunk of one completion, serialised once."""
    return b"".join(
        [
            b'data: {"id":',
            orjson.dumps(cid),
            b',"object":',
            orjson.dumps(obj),
            b',"created":',
            orjson.dumps(created),
            b',"model":',
            orjson.dumps(model),
        ]
    )


class _Events:
    """The chunk events of one completion, each the bytes ``_sse`` would make of its dict.

    What is the same in every chunk (id, created, model) is serialised once; a token costs one
    orjson call on its text.
    """

    __slots__ = ("_choice", "_usage")

    def __init__(self, cid: str, created: int, model: str) -> None:
        head = _head(cid, "chat.completion.chunk", created, model)
        self._choice = head + b',"choices":[{"index":0,"delta":'
        self._usage = head + b',"choices":[],"usage":'

    def role(self) -> bytes:
        return self._choice + b'{"role":"assistant","content":""}' + _OPEN

    def content(self, text: str) -> bytes:
        return self._choice + b'{"content":' + orjson.dumps(text) + b"}" + _OPEN

    def content_with_logprobs(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        return (
            self._choice
            + b'{"content":'
            + orjson.dumps(text)
            + b'},"logprobs":{"content":'
            + orjson.dumps(logprobs)
            + b'},"finish_reason":null}]}\n\n'
        )

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        return self._choice + b'{"tool_calls":' + orjson.dumps(calls) + b"}" + _OPEN

    def finish(self, reason: str) -> bytes:
        end = b',"logprobs":null,"finish_reason":' + orjson.dumps(reason) + b"}]}\n\n"
        return self._choice + b"{}" + end

    def usage(self, delta: TextDelta) -> bytes:
        return self._usage + orjson.dumps(_usage(delta)) + b"}\n\n"


def legacy_logprobs(entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """Chat logprobs entries in the legacy completions shape (tokens, token_logprobs,
    top_logprobs as token -> logprob, text_offset from ``offset``)."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs") or ()} for e in entries
        ],
        "text_offset": offsets,
    }


class _CompletionEvents:
    """The chunk events of a legacy ``/v1/completions`` stream (``text_completion``): the same
    deltas as a chat stream, in the older shape (no role chunk, ``text`` instead of ``delta``)."""

    __slots__ = ("_head", "_usage", "_offset")

    def __init__(self, cid: str, created: int, model: str) -> None:
        head = _head(cid, "text_completion", created, model)
        self._head = head + b',"choices":[{"index":0,"text":'
        self._usage = head + b',"choices":[],"usage":'
        self._offset = 0

    def role(self) -> bytes:
        return b""

    def content(self, text: str) -> bytes:
        self._offset += len(text)
        return self._head + orjson.dumps(text) + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def content_with_logprobs(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        lp = orjson.dumps(legacy_logprobs(logprobs, self._offset))
        self._offset += len(text)
        return (
            self._head + orjson.dumps(text) + b',"logprobs":' + lp + b',"finish_reason":null}]}\n\n'
        )

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        return b""  # a completion has no tools

    def finish(self, reason: str) -> bytes:
        return (
            self._head + b'"","logprobs":null,"finish_reason":' + orjson.dumps(reason) + b"}]}\n\n"
        )

    def usage(self, delta: TextDelta) -> bytes:
        return self._usage + orjson.dumps(_usage(delta)) + b"}\n\n"


async def sse_stream(
    first: TextDelta,
    rest: AsyncIterator[TextDelta],
    *,
    model: str,
    include_usage: bool,
    cid: str,
    legacy: bool = False,
) -> AsyncIterator[bytes]:
    """SSE bytes: a role chunk, a chunk per delta, the finish chunk, usage if asked, [DONE].

    Events go out as soon as they are known, but events already in hand together share one
    write: the role chunk rides with the first token, a delta marked ``extra["more"]`` (the
    engine holds the next one already) waits for it, and the last events ride with [DONE]. Only
    the number of writes changes, never the events or their timing: nothing waits for I/O to
    batch. ``legacy``: the ``/v1/completions`` shape of the same events.
    """
    shape = _CompletionEvents if legacy else _Events
    events = shape(cid, now(), model)
    pending = [events.role()]
    delta: TextDelta | None = first
    try:
        while delta is not None:
            if delta.logprobs:
                pending.append(events.content_with_logprobs(delta.text, delta.logprobs))
            elif delta.text:
                pending.append(events.content(delta.text))
            if delta.tool_calls:
                pending.append(events.tool_calls(delta.tool_calls))
            if delta.finish_reason is not None:
                pending.append(events.finish(delta.finish_reason))
                if include_usage:
                    pending.append(events.usage(delta))
                break
            if pending and not delta.extra.get("more"):
                yield b"".join(pending)
                pending = []
            delta = await anext(rest, None)
    except Exception as exc:  # noqa: BLE001 - reported in-band, the status line is long gone
        pending.append(_sse(as_tutor_error(exc).body()))
    finally:
        await rest.aclose()  # before [DONE]: the request's metrics are final when it arrives
    pending.append(DONE)
    yield b"".join(pending)


async def collect(
    first: TextDelta,
    rest: AsyncIterator[TextDelta],
    *,
    model: str,
    cid: str,
    legacy: bool = False,
) -> dict[str, Any]:
    text: list[str] = []
    logprobs: list[dict[str, Any]] | None = None
    calls: dict[int, dict[str, Any]] = {}  # tool calls by index, their arguments joined
    last = first
    delta: TextDelta | None = first
    try:
        while delta is not None:
            text.append(delta.text)
            if delta.logprobs:
                logprobs = logprobs if logprobs is not None else []
                logprobs.extend(delta.logprobs)
            for call in delta.tool_calls or ():
                _merge_call(calls, call)
            last = delta
            if delta.finish_reason is not None:
                break
            delta = await anext(rest, None)
    finally:
        await rest.aclose()
    finish = last.finish_reason or "stop"
    if legacy:
        choice = {
            "index": 0,
            "text": "".join(text),
            "logprobs": None if logprobs is None else legacy_logprobs(logprobs),
            "finish_reason": finish,
        }
    else:
        choice = {
            "index": 0,
            "message": _message("".join(text), calls),
            "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish,
        }
    return {
        "id": cid,
        "object": "text_completion" if legacy else "chat.completion",
        "created": now(),
        "model": model,
        "choices": [choice],
        "usage": _usage(last),
    }


def _merge_call(calls: dict[int, dict[str, Any]], part: dict[str, Any]) -> None:
    """One streamed tool-call delta into the call it belongs to (OpenAI streams the id, type
    and name once, then the arguments in pieces)."""
    call = calls.setdefault(
        part.get("index", 0), {"id": None, "type": "function", "function": {"name": None}}
    )
    call["id"] = part.get("id") or call["id"]
    call["type"] = part.get("type") or call["type"]
    fn = part.get("function") or {}
    call["function"]["name"] = fn.get("name") or call["function"]["name"]
    call["function"]["arguments"] = call["function"].get("arguments", "") + (
        fn.get("arguments") or ""
    )


def _message(text: str, calls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    if not calls:
        return {"role": "assistant", "content": text}
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [calls[i] for i in sorted(calls)],
    }
