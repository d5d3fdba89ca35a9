"""The conductor of a chat request, between the HTTP routes and the engine.

``ChatService.open_turn`` takes one request from admission to its first delta: access, the key's
limits, the public model id resolved to a variant (persona, adapter, defaults), the request made
chat messages and sampling parameters, the engine started and its first delta in hand. The routes
only frame what it returns (server/routes/chat.py). Streaming and non-streaming replies both
come from ``ChatService.generate``, so a non-stream reply is the collected stream.
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
from server.limits import Limiter, Limits
from server.messages import chat_messages, check_size
from server.metrics import Metrics
from server.protocol import ChatCompletionRequest, completion_id
from server.tasks import task_model
from server.timing import Timing
from server.tracing import trace_headers

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


@dataclass
class Turn:
    """A chat request admitted, prepared and started, its first delta in hand: an engine that is
    down or a bad adapter has already raised, so the client gets a real HTTP status instead of
    an error hidden inside a 200 stream."""

    target: Target
    cid: str
    first: TextDelta
    deltas: AsyncIterator[TextDelta]  # the rest, metered against the key's limits
    headers: dict[str, str]  # x-tutor-*: the variant, the adapter version, a cold load, grounding


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
        limits: Limits | None = None,
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
        # the app's limits (shared through Redis when configured), else this service's own
        self.limits = limits or Limiter(
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
    async def open_turn(
        self,
        req: ChatCompletionRequest,
        principal: Principal,
        *,
        timing: Timing,
        request_id: str | None = None,
        legacy: bool = False,
        record: dict[str, Any] | None = None,
    ) -> Turn:
        """One chat request from admission to its first delta, in this order: the caller's
        access to the model, the key's limits, the request prepared, the engine started.

        ``record`` is the request's access-log line (server/observe.py), filled in as the turn
        gets there, so a request that fails half-way is logged with what it had reached.
        """
        record = {} if record is None else record
        self.check_access(principal, req.model)
        await self.limits.admit(principal)
        target, gen_request = await self.prepare(req, principal.name)
        forward = trace_headers()  # W3C traceparent, when tracing is on
        if request_id:
            forward["X-Request-Id"] = request_id
        gen_request = replace(gen_request, headers=forward)
        cid = completion_id("cmpl" if legacy else "chatcmpl")
        record.update(
            variant=target.model_id, adapter=target.adapter_label, completion_id=cid, timing=timing
        )
        deltas = self.limits.hold(principal, self.generate(target, gen_request, timing))
        try:
            first = await anext(deltas)
        except BaseException:
            await deltas.aclose()
            raise
        headers = {"x-tutor-variant": target.model_id, "x-tutor-adapter": target.adapter_label}
        if "adapter_load_s" in first.extra:  # this request paid for a cold adapter load
            headers["x-tutor-adapter-load-ms"] = f"{first.extra['adapter_load_s'] * 1000:.1f}"
        if "grounding" in first.extra:  # changed | unchanged | rejected: what the corrector did
            headers["x-tutor-grounding"] = record["grounding"] = first.extra["grounding"]
        return Turn(target, cid, first, deltas, headers)

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
        check_size(req, self.settings)
        target = await self.resolve(task_model(req, self.settings, self.base_id) or req.model)
        target = replace(target, grounded=self._grounded(target, req))
        tools = self._tools(req, target, client)
        messages = chat_messages(target.variant, req, keep_tool_turns=bool(tools))
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
            async with self.limits.slot(label):
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
