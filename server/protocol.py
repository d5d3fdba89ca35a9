"""Wire models of the OpenAI-compatible API.

Requests accept unknown fields (Open WebUI sends ``params`` and more) and ignore them; ``tools``
follow the TUTOR_TOOLS setting (server/serving.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.modes import LEVELS, SCAFFOLDING

Scaffolding = Literal[SCAFFOLDING]  # common/modes.py: the four moves, one vocabulary
Level = Literal[LEVELS]
Role = Literal["system", "developer", "user", "assistant", "tool"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self) -> str:
        """The message as plain text; only text parts carry meaning for a language tutor."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(_Open):
    include_usage: bool = False


class JsonSchemaFormat(_Open):
    """OpenAI's ``response_format.json_schema``: the reply must match ``schema``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        return self

    def for_engine(self) -> dict[str, Any] | None:
        """What an engine must honour: None for plain text, which every engine writes."""
        if self.type == "text":
            return None
        return self.model_dump(by_alias=True, exclude_none=True)


class _Generation(_Open):
    """What a chat and a legacy completion request share: the model, the sampling parameters,
    and the tutor's own fields, validated the same way for both."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) -> bias in [-100, 100]."
    )
    user: str | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=1, description="Only one reply per request.")
    scaffolding: Scaffolding | None = None
    level: Level | None = None
    grounded: bool | None = Field(
        default=None,
        description="Grounded recast (server/grounding.py): correct first, then tutor with the "
        "correction as a hidden note. Default: the variant's catalogue setting.",
    )

    @field_validator("n", mode="before")
    @classmethod
    def _one_reply(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 1:
            raise ValueError("n > 1 is not supported: ask for one reply at a time")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        """OpenAI's shape: token ids as decimal strings, biases in [-100, 100]."""
        for key, value in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"key {key!r} is not a token id")
            if not -100 <= value <= 100:
                raise ValueError(f"the bias for token {key} is {value}; it must be in [-100, 100]")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="Ignored, refused or forwarded: the TUTOR_TOOLS setting."
    )
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Generation):
    """Legacy ``/v1/completions``. Every model here is a chat model, so the prompt is the
    learner's turn under the same persona rules as a chat request (a variant's persona and
    hints, the bare base model none): one prompt, one reply."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=1, description="Only one candidate.")
    echo: Literal[False] | None = Field(default=None, description="The prompt is not echoed.")
    suffix: None = Field(default=None, description="No insertion: suffix is not supported.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("one prompt per request (a list of one string at most)")
        return v

    def as_chat(self) -> ChatCompletionRequest:
        """The same request as a chat request: the prompt as the learner's one turn. Only the
        shared fields go along, already validated, so this cannot fail on what a client sent."""
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        fields = self.model_dump(include=set(_Generation.model_fields), exclude_unset=True)
        fields.update(max_tokens=self.max_tokens, messages=[{"role": "user", "content": prompt}])
        if self.logprobs is not None:
            fields.update(logprobs=True, top_logprobs=self.logprobs)
        return ChatCompletionRequest(**fields)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChoiceLogprobs(BaseModel):
    content: list[dict[str, Any]] | None = None  # per token: token, logprob, bytes, top_logprobs


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: dict[str, Any] | None = None  # tokens, token_logprobs, top_logprobs, text_offset
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tutor"
    name: str | None = None  # for people: what a chat client shows in its model list
    parent: str | None = None
    root: str | None = None  # the public id of the base model, never a path on the server
    metadata: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used for every error this API returns."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the errors a route can answer with."""
    return {code: {"model": ErrorResponse} for code in codes}


COMMON_ERRORS = (400, 401, 403, 429, 500, 503)
