"""OpenAI's chat-completions wire format, read: upstream bytes to the gateway's deltas and errors.

It owns the decoding of a streamed reply (SSE lines, possibly split across reads, to
``TextDelta``s, the finish reason held until the usage chunk), of a non-stream reply (one JSON
body to the deltas a stream of it would have given), and the mapping of an upstream's error
status and body to the gateway's errors. Events are decoded with orjson.

It is separate from the transport (server/engines/http_pool.py), which only moves bytes, and
from the engine (server/engines/openai_engine.py), which builds the request and drives the call:
this is pure translation, with no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.engines.base import TextDelta
from server.errors import EngineError, EngineUnavailable, InvalidRequest, ModelNotFound


class SSEDecoder:
    """Upstream SSE bytes to deltas; the finish reason waits for the usage chunk."""

    __slots__ = ("_tail", "done", "finish", "usage")

    def __init__(self) -> None:
        self._tail = b""
        self.done = False
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> list[TextDelta]:
        buf = self._tail + data if self._tail else data
        if b"\r" in buf:  # SSE lines may end in \r\n or \r as well as \n
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._tail = lines.pop()  # an incomplete line waits for the next read
        out: list[TextDelta] = []
        for line in lines:
            if self.done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            chunk = orjson.loads(data)
            if "error" in chunk:
                err = chunk["error"]
                message = err.get("message", err) if isinstance(err, dict) else err
                raise EngineError(f"upstream error: {message}")
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                logprobs = (choice.get("logprobs") or {}).get("content")
                calls = delta.get("tool_calls")
                if text or logprobs or calls:
                    out.append(TextDelta(text=text, logprobs=logprobs, tool_calls=calls))
                if choice.get("finish_reason"):
                    self.finish = choice["finish_reason"]
        return out

    def final(self) -> TextDelta:
        return _final_delta(self.finish, self.usage)


def _final_delta(finish: str | None, usage: dict[str, Any] | None) -> TextDelta:
    """The last delta of a reply, streamed or in one body: OpenAI's finish reason (anything but
    ``length`` and ``tool_calls`` reads as ``stop``) and the usage."""
    usage = usage or {}
    return TextDelta(
        finish_reason=finish if finish in ("length", "tool_calls") else "stop",
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


def body_deltas(body: bytes) -> list[TextDelta]:
    """A non-stream chat completion as the deltas a stream of it would have given: the text (with
    its logprobs and tool calls, indexed as streamed calls are), then the finish and usage."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EngineError(f"upstream sent a body that is not JSON: {body[:200]!r}") from exc
    if "error" in reply:
        err = reply["error"]
        raise EngineError(
            f"upstream error: {err.get('message', err) if isinstance(err, dict) else err}"
        )
    choice = (reply.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    logprobs = (choice.get("logprobs") or {}).get("content")
    calls = [{**c, "index": i} for i, c in enumerate(message.get("tool_calls") or ())]
    out = (
        [TextDelta(text=text, logprobs=logprobs, tool_calls=calls or None)]
        if (text or logprobs or calls)
        else []
    )
    out.append(_final_delta(choice.get("finish_reason"), reply.get("usage")))
    return out


def upstream_error(status: int, content: bytes, model: str) -> Exception:
    """The gateway's error for an upstream that answered ``status`` (not 200) with ``content``."""
    try:
        message = orjson.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = content[:500].decode(errors="replace")
    if status == 404:
        return ModelNotFound(f"upstream has no model {model!r}: {message}", param="model")
    if status == 400:  # e.g. prompt + max_tokens beyond vLLM's --max-model-len: the client's fault
        return InvalidRequest(
            f"the engine refused the request: {message}",
            param="max_tokens" if "max_tokens" in message or "context" in message else None,
        )
    if status in (429, 502, 503, 504):
        return EngineUnavailable(f"upstream busy or down ({status}): {message}")
    return EngineError(f"upstream answered {status}: {message}")
