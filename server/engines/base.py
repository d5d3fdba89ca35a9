"""The small interface every engine implements.

Engines know how to generate text. They know nothing of HTTP, personas or variants: the serving
layer hands them finished chat messages, sampling parameters and an already validated adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AdapterRef:
    """A validated adapter version. ``name`` is immutable: one name, one set of weights."""

    name: str
    path: Path


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # OpenAI's optional parameters: set only when a request asks (see Engine.optional_params)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (a decimal string, as OpenAI's) -> bias
    user: str | None = None
    response_format: dict[str, Any] | None = None  # json_object / json_schema, as OpenAI's
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None  # forwarded only with TUTOR_TOOLS=forward
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def optional(self) -> dict[str, Any]:
        """The optional parameters this request set, by their OpenAI names."""
        return {k: getattr(self, k) for k in OPTIONAL_PARAMS if getattr(self, k) is not None}


# OpenAI chat parameters an engine may or may not honour; it says which in optional_params.
OPTIONAL_PARAMS = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "response_format",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, Any]]  # role and content; tool turns also carry their call ids
    params: SamplingParams
    adapter: AdapterRef | None = None
    upstream_model: str | None = None  # only engines that forward to another server use it
    # what an engine that calls another server sends along: X-Request-Id, traceparent
    headers: Mapping[str, str] = field(default_factory=dict)
    # False: the caller collects the whole reply before it uses any of it (a non-stream client, a
    # corrector turn), so an engine that calls another server may ask it for one JSON body
    # instead of a stream of events; the deltas it yields are the same either way
    stream: bool = True


@dataclass
class TextDelta:
    """One step of a generation: new text, and on the last step the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # with logprobs asked: OpenAI's entries (token, logprob, bytes, top_logprobs) for its tokens
    logprobs: list[dict[str, Any]] | None = None
    # with tools forwarded: OpenAI's tool-call deltas (index, id, type, function name/arguments)
    tool_calls: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaStats:
    """One upstream replica as /metrics and /health report it (engines with several)."""

    url: str
    up: bool
    in_flight: int
    adapters: tuple[str, ...]
    routed: Mapping[str, int]  # placement (hit, spread, miss, base) -> requests
    loads: int  # cold adapter loads on this replica
    retries: int  # requests that failed here before their first token and went elsewhere


class Engine(ABC):
    """Generates chat completions, optionally through a LoRA adapter."""

    name: str = "engine"
    max_lora_rank: int = 64
    # Which of OPTIONAL_PARAMS it honours: a request setting another one is refused with a 400
    # naming it, never answered as if it had not been sent.
    optional_params: frozenset[str] = frozenset()
    # True when the engine decides where versions live and evicts them itself (several
    # replicas, each with its own LRU); the adapter manager then only loads and retires.
    places_adapters: bool = False
    # False for an engine in front of a server that owns its models (a plain OpenAI-compatible
    # upstream): the gateway then keeps no adapters, no registry aliases, no shipped versions.
    loads_adapters: bool = True
    # True when ``next_tokens`` works: the English spelling pass lets the base model choose
    # among a misspelt word's spellings in context with it (server/spelling.py)
    ranks_next_tokens: bool = False
    # The weights' dtype as served, where the engine knows it (None: a remote server's own).
    # Greedy replies differ between bf16 and float32, so the model cards show it and eval keys
    # its cache by it.
    dtype: str | None = None

    async def start(self) -> None:
        """Load models or connect; called once by the app's lifespan."""

    async def aclose(self) -> None:
        """Release everything ``start`` acquired."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        """Stream deltas; the last one carries ``finish_reason`` (stop, length, tool_calls)."""

    async def next_tokens(self, prompts: list[str], top: int) -> list[dict[str, float]]:
        """For each raw-text prompt, the base model's ``top`` likeliest next tokens (their text)
        and their log-probabilities. Only where ``ranks_next_tokens``."""
        raise NotImplementedError(f"the {self.name} engine cannot rank next tokens")

    async def load_adapter(self, adapter: AdapterRef) -> bool:
        """Make ``adapter`` available; True if it had to be loaded, False if it already was.

        Engines without local adapters (a plain upstream) ignore it.
        """
        return False

    async def unload_adapter(self, name: str) -> None:
        """Forget an adapter; engines without local adapters ignore it."""

    def replica_stats(self) -> list[ReplicaStats]:
        """Per-replica routing figures; empty for an engine with a single upstream or none."""
        return []

    @abstractmethod
    async def health(self) -> dict[str, Any]:
        """A small status dict; raises EngineUnavailable when the engine cannot serve."""
