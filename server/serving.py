"""Tutor logic between the HTTP routes and the engine.

Here a public model id becomes a variant (persona, adapter, defaults), the request becomes chat
messages and sampling parameters, and the engine's deltas are counted for metrics. Streaming and
non-streaming replies both come from ``ChatService.generate``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from adapters.registry import Registry
from adapters.shipped import register_shipped
from adapters.validation import AdapterValidationError, validate_adapter
from adapters.variants import Catalogue, Variant
from common.settings import Settings
from server.adapter_manager import AdapterManager
from server.auth import Principal
from server.engines.base import AdapterRef, Engine, GenerationRequest, SamplingParams, TextDelta
from server.errors import Forbidden, InvalidAdapter, InvalidRequest, ModelNotFound
from server.grounding import Corrector, Grounding, ground
from server.limits import Gate, VariantGate
from server.metrics import Metrics
from server.protocol import ChatCompletionRequest
from server.tasks import task_model
from server.timing import Timing

log = logging.getLogger(__name__)

BASE_DEFAULTS = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256}
BASE_SUFFIX = "@base"  # ``tutor-es-l2@base``: the variant's persona on the untrained base


@dataclass(frozen=True)
class Target:
    """What a public model id resolves to for one request."""

    model_id: str
    variant: Variant | None  # None: the bare base model, no persona
    adapter: AdapterRef | None
    upstream_model: str | None
    grounded: bool = False  # correct first, then tutor with the hidden note (server/grounding.py)

    @property
    def adapter_label(self) -> str:
        if self.adapter is not None:
            return self.adapter.name
        return self.upstream_model or "base"


class ChatService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        catalogue: Catalogue,
        *,
        base_id: str,
        base_source: str,
        metrics: Metrics,
        registry: Registry | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.catalogue = catalogue
        self.base_id = base_id
        self.base_source = base_source
        self.metrics = metrics
        self._tools_logged: set[str] = set()  # clients told that their tools are ignored
        self.registry = registry
        self.created = int(time.time())
        self.adapters: AdapterManager | None = None  # None: the upstream owns its adapters
        # the app's limits (shared through Redis when configured), else a gate of its own
        self.gate = gate or VariantGate(
            settings.variant_concurrency, settings.variant_queue_timeout
        )

    # -- start-up --------------------------------------------------------------------------
    async def start(self) -> None:
        """Validate adapters fixed by configuration, then follow the registry's aliases."""
        if not self.engine.loads_adapters or self.registry is None:
            return
        if self.settings.shipped_adapters:
            register_shipped(
                self.registry,
                self.catalogue,
                base_model=self.base_source,
                base_aliases=(self.base_id, self.settings.model),
                max_rank=self.engine.max_lora_rank,
            )
        pinned = {}
        for variant in self.catalogue.variants.values():
            if variant.adapter is None:
                continue
            try:
                info = validate_adapter(
                    variant.adapter, base_model=self.base_source, max_rank=self.engine.max_lora_rank
                )
            except AdapterValidationError as exc:
                raise InvalidAdapter(f"variant {variant.id}: {exc}") from exc
            # configured folders can change under the same name: the hash keeps names immutable
            pinned[variant.id] = AdapterRef(f"{info.path.name}-{info.sha256[:8]}", info.path)
        self.adapters = AdapterManager(
            self.engine,
            self.registry,
            base_model=self.base_source,
            base_aliases=(self.base_id, self.settings.model),
            max_resident=self.settings.max_resident_adapters,
            metrics=self.metrics,
            pinned=pinned,
            poll_interval=self.settings.registry_poll_interval,
        )
        await self.adapters.start()
        for ref in list(pinned.values())[: self.settings.max_resident_adapters]:
            async with self.adapters.use(ref):
                pass  # preload: the first learner does not pay for the load

    async def aclose(self) -> None:
        if self.adapters is not None:
            await self.adapters.aclose()

    # -- per request -----------------------------------------------------------------------
    async def resolve(self, model_id: str) -> Target:
        if model_id == self.base_id:
            return Target(model_id, None, None, None)
        if model_id.endswith(BASE_SUFFIX) and model_id.removesuffix(BASE_SUFFIX) in (
            self.catalogue.variants
        ):
            # The variant's persona and hints on the bare base weights, wherever its alias
            # points: what eval compares a trained version against.
            variant = self.catalogue.variants[model_id.removesuffix(BASE_SUFFIX)]
            return Target(model_id, variant, None, None)
        variant = self.catalogue.variants.get(model_id)
        if variant is not None:
            upstream = self.settings.upstream_models.get(model_id)
            adapter = self.adapters.current(model_id) if self.adapters else None
            return Target(model_id, variant, adapter, upstream)
        if "@" in model_id and self.adapters is not None:  # a registered version, by name
            version, ref = await self.adapters.version(model_id)
            return Target(model_id, self.catalogue.variants.get(version.variant), ref, None)
        raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")

    def _hidden(self, principal: Principal, model_id: str) -> bool:
        """``TUTOR_PUBLIC_MODELS=variants``: a key without the admin scope sees the tutors only
        (no ``@n`` versions, no bare base model)."""
        return (
            self.settings.public_models == "variants"
            and "admin" not in principal.scopes
            and model_id not in self.catalogue.variants
        )

    def visible(self, principal: Principal, model_id: str) -> bool:
        """May this caller see the model in /v1/models and ask for it? Not when it is hidden,
        nor when the key's own allow-list leaves it out."""
        return principal.may_use(model_id) and not self._hidden(principal, model_id)

    def check_access(self, principal: Principal, model_id: str) -> None:
        """404 for a model hidden from this caller (as if it did not exist), 403 for one its
        key's allow-list leaves out."""
        if not principal.may_use(model_id):
            raise Forbidden(
                f"this key may not use the model {model_id!r}",
                param="model",
                code="model_not_allowed",
            )
        if self._hidden(principal, model_id):
            raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")

    def _tools(self, req: ChatCompletionRequest, target: Target, client: str) -> dict[str, Any]:
        """What becomes of a request's tools (``TUTOR_TOOLS``): the parameters to forward, or
        nothing. Ignoring is counted per variant and logged once per client (key name), so an
        operator sees that Open WebUI's built-in tools are being dropped."""
        if not req.tools:
            return {}
        mode = self.settings.tools
        if mode == "reject":
            raise InvalidRequest(
                "this service does not call tools (TUTOR_TOOLS=reject): send the request "
                "without `tools`",
                param="tools",
            )
        if mode == "ignore":
            self.metrics.tools_ignored.labels(target.model_id).inc()
            if client not in self._tools_logged:
                self._tools_logged.add(client)
                log.info(
                    "ignoring the tools of %s's requests (TUTOR_TOOLS=ignore; counted in "
                    "tutor_tools_ignored_total)",
                    client,
                )
            return {}
        return {
            "tools": req.tools,
            "tool_choice": req.tool_choice,
            "parallel_tool_calls": req.parallel_tool_calls,
        }

    async def prepare(
        self, req: ChatCompletionRequest, client: str = "anonymous"
    ) -> tuple[Target, GenerationRequest]:
        # Open WebUI's title/tags/follow-up requests go to a cheap model (server/tasks.py).
        self._check_size(req)
        target = await self.resolve(task_model(req, self.settings, self.base_id) or req.model)
        target = replace(target, grounded=self._grounded(target, req))
        tools = self._tools(req, target, client)
        messages = self._messages(target.variant, req, keep_tool_turns=bool(tools))
        defaults = {**BASE_DEFAULTS, **(target.variant.defaults if target.variant else {})}
        max_tokens = req.max_completion_tokens or req.max_tokens or int(defaults["max_tokens"])
        if max_tokens > self.settings.max_context:
            raise InvalidRequest(
                f"max_tokens={max_tokens} exceeds the context window of "
                f"{self.settings.max_context} tokens",
                param="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
            )
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature if req.temperature is not None else defaults["temperature"],
            top_p=req.top_p if req.top_p is not None else defaults["top_p"],
            stop=tuple(req.stop or ()),
            seed=req.seed,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=req.logit_bias,
            user=req.user,
            response_format=req.response_format.for_engine() if req.response_format else None,
            logprobs=True if req.logprobs else None,
            top_logprobs=req.top_logprobs if req.logprobs else None,
            **tools,
        )
        for name in params.optional():
            if name not in self.engine.optional_params:
                raise InvalidRequest(
                    f"{name} is not supported by the {self.engine.name} engine",
                    param=name,
                )
        return target, GenerationRequest(
            messages=messages,
            params=params,
            adapter=target.adapter,
            upstream_model=target.upstream_model,
            stream=bool(req.stream),
        )

    @staticmethod
    def _grounded(target: Target, req: ChatCompletionRequest) -> bool:
        """The request's choice, else the catalogue's; never for the bare base model, whose
        untrained corrector would only invent notes."""
        if target.variant is None or (target.adapter is None and target.upstream_model is None):
            if req.grounded:
                raise InvalidRequest(
                    f"{target.model_id} has no trained adapter to correct with: grounded needs one",
                    param="grounded",
                )
            return False
        return target.variant.grounded if req.grounded is None else req.grounded

    def _check_size(self, req: ChatCompletionRequest) -> None:
        """Limits that keep one request from costing the service too much, each named."""
        limit = self.settings.max_messages
        if len(req.messages) > limit:
            raise InvalidRequest(f"at most {limit} messages per request", param="messages")
        for i, m in enumerate(req.messages):
            text = m.text()
            if len(text) > self.settings.max_content_chars:
                raise InvalidRequest(
                    f"message {i} has {len(text)} characters; the limit is "
                    f"{self.settings.max_content_chars}",
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

    @staticmethod
    def _messages(
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
            raise InvalidRequest(
                "messages must contain at least one user message", param="messages"
            )
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

    async def generate(
        self, target: Target, request: GenerationRequest, timing: Timing | None = None
    ) -> AsyncIterator[TextDelta]:
        """The engine's deltas, timed and counted; the single path for every reply.

        ``timing`` (the caller's, for its ``Server-Timing`` header) is filled in as the request
        goes: where the wait for the first token went (server/timing.py).
        """
        m, label = self.metrics, target.model_id
        timing = timing or Timing()
        first = True
        status = "error"
        m.in_flight.labels(label).inc()
        try:
            t0 = time.perf_counter()
            async with self.gate.slot(label):
                t1 = time.perf_counter()
                timing.queue = t1 - t0
                async with self._holding(request.adapter) as load_s:
                    t0 = time.perf_counter()
                    timing.adapter = t0 - t1
                    grounding = None
                    if target.grounded and target.variant is not None:
                        request, grounding = await self._ground(target.variant, request)
                        t1 = time.perf_counter()
                        timing.ground = t1 - t0
                        m.grounding.labels(label, grounding.outcome).observe(timing.ground)
                        t0 = t1
                    async for delta in self.engine.generate(request):
                        if first:
                            first = False
                            timing.first = time.perf_counter()
                            timing.upstream = timing.first - t0
                            self._observe_first_token(label, timing)
                            if load_s is not None:
                                delta.extra["adapter_load_s"] = load_s
                            if grounding is not None:
                                delta.extra["grounding"] = grounding.outcome
                                # the key's tokens per minute pay for this turn too (limits.py)
                                delta.extra["corrector_tokens"] = grounding.tokens
                        if delta.finish_reason is not None:
                            timing.last = time.perf_counter()
                            m.tokens.labels(label, "prompt").inc(delta.prompt_tokens or 0)
                            m.tokens.labels(label, "completion").inc(delta.completion_tokens or 0)
                            timing.prompt_tokens = delta.prompt_tokens
                            timing.completion_tokens = delta.completion_tokens
                            status = "ok"
                        yield delta
        except (GeneratorExit, asyncio.CancelledError):  # the client went away
            if status != "ok":
                status = "cancelled"
            raise
        finally:
            timing.outcome = status
            m.in_flight.labels(label).dec()
            m.requests.labels(label, status).inc()
            m.latency.labels(label).observe(time.perf_counter() - timing.start)

    def _observe_first_token(self, label: str, timing: Timing) -> None:
        """The learner's wait, from the request's arrival, and its phases."""
        self.metrics.ttft.labels(label).observe(timing.ttft)
        for phase, seconds in timing.phases().items():
            self.metrics.ttft_phase.labels(label, phase).observe(seconds)

    @property
    def spells_in_context(self) -> bool:
        """The spelling pass asks the base model (server/spelling.py), not word frequency."""
        return self.settings.spelling_in_context and self.engine.ranks_next_tokens

    async def corrector_of(self, variant: Variant) -> Target | None:
        """The model the catalogue names to correct for ``variant``, resolved now (it follows its
        own alias); None: the variant's own adapter corrects. Also None when the named corrector
        has no trained weights here (a deployment without the shipped corrector, or another base
        model, which skips it): the bare base would only invent corrections, and the tutor's own
        adapter was trained on corrector turns too."""
        if variant.corrector is None:
            return None
        who = await self.resolve(variant.corrector)
        if who.adapter is None and who.upstream_model is None:
            return None
        return who

    async def _ground(
        self, variant: Variant, request: GenerationRequest
    ) -> tuple[GenerationRequest, Grounding]:
        """The corrector turn, then the tutor request with its hidden note. A catalogue-named
        corrector is resolved now (it follows its own alias) and held loaded while it runs."""
        who = await self.corrector_of(variant)
        in_context = self.spells_in_context
        if who is None:
            return await ground(self.engine, request, variant, in_context=in_context)
        async with self._holding(who.adapter):
            where = Corrector(who.adapter, who.upstream_model)
            return await ground(self.engine, request, variant, where, in_context=in_context)

    def _holding(self, adapter: AdapterRef | None) -> AbstractAsyncContextManager[float | None]:
        """Keep the request's adapter version loaded until its last token."""
        if adapter is None or self.adapters is None:
            return nullcontext(None)
        return self.adapters.use(adapter)
