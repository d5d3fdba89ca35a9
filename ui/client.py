"""The UI's only way to the tutor: the gateway's public API through the ``openai`` SDK.

Nothing here imports the server: the UI runs the same against a gateway on this machine or a
remote one, which is what keeps the seam between ``ui/`` and ``server/`` clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai

LANGUAGE_NAMES = {"en": "English", "es": "Spanish · español", "zh": "Mandarin · 中文"}
LEARNER_NAMES = {
    "general": "Any learner",
    "heritage": "Heritage speaker (grew up with it at home)",
    "l2": "Second-language learner",
}
SCAFFOLDING = {
    "": "Let the tutor choose",
    "recast": "Recast: say it back correctly",
    "elicitation": "Elicitation: let me find it",
    "expansion": "Expansion: say it back, and more",
    "metalinguistic": "Hint about the rule",
}

# What the gateway serves by default (adapters/catalogue.yaml); replaced by /v1/models on load.
DEFAULT_VARIANTS: dict[str, dict[str, str]] = {
    "en": {"general": "tutor"},
    "es": {"heritage": "tutor-es-heritage", "l2": "tutor-es-l2"},
    "zh": {"heritage": "tutor-zh-heritage", "l2": "tutor-zh-l2"},
}


def api_base(url: str) -> str:
    """The ``/v1`` base for the SDK, from a gateway URL given with or without it."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def variant_table(models: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """language -> learner -> model id, from ``/v1/models`` cards (variants carry metadata).
    Tutors only: a corrector (``role: corrector``, e.g. ``tutor-corrector``) shares its
    language and learner with a tutor but only returns the corrected sentence."""
    table: dict[str, dict[str, str]] = {}
    for card in models:
        meta = card.get("metadata") or {}
        language, learner = meta.get("language"), meta.get("learner")
        if language and learner and meta.get("role", "tutor") == "tutor":
            table.setdefault(language, {})[learner] = card["id"]
    return table


@dataclass
class ReplyInfo:
    """What the gateway says about the reply it is streaming (its x-tutor-* headers)."""

    variant: str = ""
    adapter: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class TutorClient:
    """A thin wrapper over ``openai.OpenAI`` that speaks the tutor's extra request fields."""

    def __init__(self, base_url: str, api_key: str = "unused", *, timeout: float = 120.0) -> None:
        self.base_url = api_base(base_url)
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout
        )

    def variants(self) -> dict[str, dict[str, str]]:
        """The gateway's variants by language and learner type."""
        cards = [m.model_dump() for m in self.client.models.list().data]
        return variant_table(cards)

    def stream_reply(
        self,
        variant: str,
        messages: list[dict[str, str]],
        *,
        level: str | None = None,
        scaffolding: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        info: ReplyInfo | None = None,
    ) -> Iterator[str]:
        """Yield the reply so far after every streamed piece; ``info`` gets the headers."""
        extra: dict[str, str] = {}
        if level:
            extra["level"] = level
        if scaffolding:
            extra["scaffolding"] = scaffolding
        kwargs: dict[str, Any] = {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = int(max_tokens)
        with self.client.chat.completions.with_streaming_response.create(
            model=variant,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            extra_body=extra or None,
            **kwargs,
        ) as response:
            if info is not None:
                info.variant = response.headers.get("x-tutor-variant", variant)
                info.adapter = response.headers.get("x-tutor-adapter", "")
            text = ""
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    yield text


def _server_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def friendly_error(exc: openai.APIError, variant: str) -> str:
    """A sentence a learner can act on, for any error the gateway or the network gives."""
    if isinstance(exc, openai.APITimeoutError):
        return "The tutor took too long to answer. Please send your message again."
    if isinstance(exc, openai.APIConnectionError):
        return (
            "The tutor service cannot be reached right now. Check that the gateway is running, "
            "then send your message again."
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            wait = exc.response.headers.get("retry-after")
            after = f"about {wait} seconds" if wait else "a few seconds"
            return f"Too many messages at once. Please wait {after}, then send again."
        if status == 503:
            return (
                "The tutor is not available right now (it may be starting or busy). "
                "Please try again in a few seconds."
            )
        if status == 404:
            return (
                f"The tutor '{variant}' is not available on this server. "
                "Pick another language or learner type."
            )
        if status in (401, 403):
            return "The tutor service refused the request: check the UI's API key."
        if status in (400, 413, 422):
            return f"The tutor could not take this message: {_server_message(exc)}"
        return f"The tutor ran into a problem (error {status}). Please try again."
    # An error event inside the stream: the reply stopped half-way.
    return f"The reply was interrupted ({_server_message(exc)}). Please send your message again."
