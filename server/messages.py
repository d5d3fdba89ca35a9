"""A request's messages as the engine gets them, and the size limits checked first.

Pure functions of the request and the settings: the persona's system prompt goes first, the
client's own system message after it, and only text parts pass. Kept apart from the conductor
(server/serving.py) so the prompt's shape can be read and tested on its own.
"""

from __future__ import annotations

from typing import Any

from adapters.variants import Variant
from common.settings import Settings
from server.errors import InvalidRequest
from server.protocol import ChatCompletionRequest


def check_size(req: ChatCompletionRequest, settings: Settings) -> None:
    """Limits that keep one request from costing the service too much, each named."""
    limit = settings.max_messages
    if len(req.messages) > limit:
        raise InvalidRequest(f"at most {limit} messages per request", param="messages")
    for i, m in enumerate(req.messages):
        text = m.text()
        if len(text) > settings.max_content_chars:
            raise InvalidRequest(
                f"message {i} has {len(text)} characters; the limit is "
                f"{settings.max_content_chars}",
                param=f"messages.{i}.content",
            )
        if "\x00" in text:
            raise InvalidRequest(
                f"message {i} contains a NUL character", param=f"messages.{i}.content"
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800"): valid JSON, no text
                raise InvalidRequest(
                    f"message {i} is not valid Unicode (a lone surrogate escape)",
                    param=f"messages.{i}.content",
                ) from None


def chat_messages(
    variant: Variant | None, req: ChatCompletionRequest, *, keep_tool_turns: bool = False
) -> list[dict[str, Any]]:
    """The persona comes first; a client's own system message is kept right after it.
    With tools forwarded, the tool calls and tool results of the history go along."""
    client_system = [m.text() for m in req.messages if m.role in ("system", "developer")]
    roles = ("user", "assistant", "tool") if keep_tool_turns else ("user", "assistant")
    turns: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role not in roles:
            continue
        turn: dict[str, Any] = {"role": m.role, "content": m.text()}
        if keep_tool_turns and m.tool_calls:
            turn["tool_calls"] = m.tool_calls
        if keep_tool_turns and m.tool_call_id:
            turn["tool_call_id"] = m.tool_call_id
        turns.append(turn)
    if not any(t["role"] == "user" for t in turns):
        raise InvalidRequest("messages must contain at least one user message", param="messages")
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list) and any(p.type != "text" for p in m.content):
            raise InvalidRequest(
                "only text content parts are supported", param=f"messages.{i}.content"
            )
    if variant is None:
        system = "\n\n".join(s for s in client_system if s.strip())
    else:
        system = variant.system_prompt(req.scaffolding, req.level, "\n\n".join(client_system))
    return ([{"role": "system", "content": system}] if system else []) + turns
