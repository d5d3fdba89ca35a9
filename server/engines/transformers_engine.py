"""In-process engine on transformers + PEFT: the dev/test engine.

It holds the base model and any number of LoRA adapters in one PeftModel and switches the active
adapter per request. All model work runs on one worker thread, so concurrent requests are served
one after another, each with its own adapter: correct, simple, and slow under load. Production
serving is vLLM, which batches requests across adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server.engines.base import AdapterRef, Engine, GenerationRequest, TextDelta
from server.engines.stops import StopMatcher
from server.errors import EngineUnavailable

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class _Cancelled(Exception):
    pass


class TransformersEngine(Engine):
    name = "transformers"
    # OpenAI's sampling extras, implemented below (``_Processor``); structured output
    # (response_format) is vLLM's, so here it is a 400 naming it
    optional_params = frozenset(
        {"user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs"}
    )
    ranks_next_tokens = True

    def __init__(self, model_source: str, *, dtype: str = "float32", max_lora_rank: int = 64):
        self.model_source = model_source
        self.dtype = dtype
        self.max_lora_rank = max_lora_rank
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tutor-engine")
        self._model: Any = None  # a PreTrainedModel, or a PeftModel once an adapter is loaded
        self._tokenizer: Any = None
        self._adapters: dict[str, AdapterRef] = {}
        self._eos_ids: list[int] = []
        self._generating = False  # the worker is producing tokens right now

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self._run(self._load_base)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None

    async def health(self) -> dict[str, Any]:
        if self._model is None:
            raise EngineUnavailable("the transformers engine has not loaded its model")
        return {
            "engine": self.name,
            "model": self.model_source,
            "adapters": sorted(self._adapters),
            "generating": self._generating,
        }

    def _load_base(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = getattr(torch, _DTYPES[self.dtype]) if self.dtype in _DTYPES else "auto"
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_source)
        model = AutoModelForCausalLM.from_pretrained(self.model_source, dtype=dtype)
        model.eval()
        self._model = model
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self._tokenizer.eos_token_id is not None:
            eos_ids.append(self._tokenizer.eos_token_id)
        self._eos_ids = sorted(set(eos_ids))
        log.info("transformers engine loaded %s (%s)", self.model_source, dtype)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- adapters --------------------------------------------------------------------------
    async def load_adapter(self, adapter: AdapterRef) -> bool:
        if adapter.name in self._adapters:
            return False
        return await self._run(self._load_adapter_sync, adapter)

    async def unload_adapter(self, name: str) -> None:
        await self._run(self._unload_adapter_sync, name)

    def _load_adapter_sync(self, adapter: AdapterRef) -> bool:
        from peft import PeftModel

        if adapter.name in self._adapters:
            return False
        if not self._adapters:
            self._model = PeftModel.from_pretrained(
                self._model, str(adapter.path), adapter_name=adapter.name
            )
        else:
            self._model.load_adapter(str(adapter.path), adapter_name=adapter.name)
        self._model.eval()
        self._adapters[adapter.name] = adapter
        log.info("loaded adapter %s from %s", adapter.name, adapter.path)
        return True

    def _unload_adapter_sync(self, name: str) -> None:
        if name not in self._adapters:
            return
        del self._adapters[name]
        if self._adapters:
            self._model.delete_adapter(name)
        else:
            self._model = self._model.unload()  # back to the plain base model

    # -- next tokens (the spelling pass) ---------------------------------------------------
    async def next_tokens(self, prompts: list[str], top: int) -> list[dict[str, float]]:
        if self._model is None:
            raise EngineUnavailable("the transformers engine is not started")
        return await self._run(self._next_tokens_sync, prompts, top)

    def _next_tokens_sync(self, prompts: list[str], top: int) -> list[dict[str, float]]:
        """One forward pass over the prompts, right-padded; each one's last real position."""
        import torch

        tok = self._tokenizer
        rows = [tok(p)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else self._eos_ids[0]
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode(), self._adapter_context(None):
            logits = self._model(input_ids=ids, attention_mask=mask).logits.float()
        last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
        best = last.log_softmax(-1).topk(top, dim=-1)
        return [
            {tok.decode([int(i)]): float(v) for v, i in zip(vals, idx, strict=True)}
            for vals, idx in zip(best.values, best.indices, strict=True)
        ]

    # -- generation ------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        if self._model is None:
            raise EngineUnavailable("the transformers engine is not started")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TextDelta | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: TextDelta | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._executor, self._generate_sync, request, emit, cancel)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    break
        finally:
            cancel.set()  # a client that went away stops the worker at the next token
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _generate_sync(
        self,
        request: GenerationRequest,
        emit: Callable[[TextDelta | BaseException], None],
        cancel: threading.Event,
    ) -> None:
        try:
            if cancel.is_set():
                return
            self._generating = True
            self._generate_inner(request, emit, cancel)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            emit(exc)
        finally:
            self._generating = False

    def _generate_inner(
        self,
        request: GenerationRequest,
        emit: Callable[[TextDelta | BaseException], None],
        cancel: threading.Event,
    ) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        if request.adapter is not None and request.adapter.name not in self._adapters:
            self._load_adapter_sync(request.adapter)
        tok = self._tokenizer
        inputs = tok.apply_chat_template(
            request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_tokens = int(inputs["input_ids"].shape[1])
        p = request.params
        sample = p.temperature > 0
        gen_config = GenerationConfig(
            max_new_tokens=p.max_tokens,
            do_sample=sample,
            eos_token_id=self._eos_ids,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else self._eos_ids[0],
        )
        # OpenAI's order, as vLLM's: logprobs of the raw distribution, then penalties and bias,
        # then temperature and top-p (transformers would put a caller's processors last)
        sampling = _Processor(prompt_tokens, p)
        chain: list[Any] = [sampling]
        if sample and p.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(p.temperature))
        if sample and p.top_p < 1.0:
            chain.append(TopPLogitsWarper(p.top_p))
        top = p.top_logprobs or 0
        logprobs = _Logprobs(tok, sampling.steps, top) if p.logprobs else None
        stream = _DeltaStreamer(tok, StopMatcher(p.stop), emit, self._eos_ids, logprobs)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                done = cancel.is_set() or stream.matcher.stopped
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        if p.seed is not None:
            torch.manual_seed(p.seed)
        with torch.inference_mode(), self._adapter_context(request.adapter):
            self._model.generate(
                **inputs,
                generation_config=gen_config,
                streamer=stream,
                logits_processor=LogitsProcessorList(chain),
                stopping_criteria=StoppingCriteriaList([_Stop()]),
            )
        if cancel.is_set():
            raise _Cancelled
        if stream.matcher.stopped or stream.saw_eos:
            reason = "stop"
        else:
            reason = "length" if stream.count >= p.max_tokens else "stop"
        emit(
            TextDelta(
                text=stream.matcher.flush(),
                finish_reason=reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=stream.count,
                logprobs=stream.take_logprobs(),
            )
        )

    def _adapter_context(self, adapter: AdapterRef | None) -> contextlib.AbstractContextManager:
        if not self._adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self._model.disable_adapter()
        self._model.set_adapter(adapter.name)
        return contextlib.nullcontext()


class _Processor:
    """OpenAI's presence and frequency penalties and ``logit_bias``, as vLLM applies them (to the
    logits, counting the tokens generated so far), and a record of each step's raw log
    probabilities for ``logprobs``. A transformers ``LogitsProcessor`` by its call signature."""

    def __init__(self, prompt_len: int, params: Any) -> None:
        self.prompt_len = prompt_len
        self.presence = params.presence_penalty or 0.0
        self.frequency = params.frequency_penalty or 0.0
        self.bias = {int(k): float(v) for k, v in (params.logit_bias or {}).items()}
        self.keep = bool(params.logprobs)
        self.steps: list[Any] = []  # per generated token: log-softmax of the raw logits

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.keep:
            self.steps.append(torch.log_softmax(scores[0].float(), dim=-1))
        if self.presence or self.frequency:
            out = input_ids[0, self.prompt_len :]
            if out.numel():
                counts = torch.bincount(out, minlength=scores.shape[-1])[: scores.shape[-1]]
                counts = counts.to(scores.dtype)
                scores = (
                    scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
                )
        if self.bias:
            scores = scores.clone()
            for token, bias in self.bias.items():
                if 0 <= token < scores.shape[-1]:
                    scores[:, token] += bias
        return scores


class _Logprobs:
    """OpenAI's ``logprobs.content`` entries for the tokens the model chose."""

    def __init__(self, tokenizer: Any, steps: list[Any], top: int) -> None:
        self.tokenizer, self.steps, self.top = tokenizer, steps, top
        self.step = 0

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        text = self.tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def entry(self, token: int) -> dict[str, Any]:
        import torch

        dist, self.steps[self.step] = self.steps[self.step], None  # a vocabulary a token: free it
        self.step += 1
        out = self._entry(token, float(dist[token]))
        if self.top:
            values, ids = torch.topk(dist, self.top)
            out["top_logprobs"] = [
                self._entry(int(i), float(v)) for v, i in zip(values, ids, strict=True)
            ]
        else:
            out["top_logprobs"] = []
        return out


class _DeltaStreamer:
    """A transformers streamer that turns token ids into text deltas as they are produced."""

    def __init__(
        self,
        tokenizer: Any,
        matcher: StopMatcher,
        emit: Callable,
        eos_ids: list[int],
        logprobs: _Logprobs | None = None,
    ):
        self.tokenizer = tokenizer
        self.matcher = matcher
        self.emit = emit
        self.eos_ids = set(eos_ids)
        self.logprobs = logprobs
        self.pending: list[dict[str, Any]] = []  # entries of tokens whose text is not out yet
        self.ids: list[int] = []
        self.sent = ""
        self.count = 0
        self.saw_eos = False
        self._prompt_seen = False

    def take_logprobs(self) -> list[dict[str, Any]] | None:
        out, self.pending = self.pending, []
        return out or None

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.count += 1
            entry = self.logprobs.entry(token) if self.logprobs else None
            if token in self.eos_ids:
                self.saw_eos = True
                continue
            if entry is not None and not self.matcher.stopped:
                self.pending.append(entry)
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character is not finished yet
            return
        new, self.sent = text[len(self.sent) :], text
        out = self.matcher.feed(new) if new else ""
        if out:
            self.emit(TextDelta(text=out, logprobs=self.take_logprobs()))

    def end(self) -> None:
        pass
