"""``tutor eval run``: every suite item through the serving API, to every model.

Requests go through the official ``openai`` client to ``/v1/chat/completions``, the path
learners use, with the item's requested ``scaffolding`` mode, a fixed seed per item (the same for
every model, so replies are paired) and the suite's temperature. A model id is first resolved to
the version that serves it (``/v1/models`` metadata; each reply's ``x-tutor-adapter`` header is
checked against it), and the cache is keyed by that version: re-running after a new checkpoint
only asks the new one, and a variant promoted since the last run is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from common.paths import tutor_home
from eval.cache import ReplyCache, cache_key
from eval.suites import Suite, SuiteItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """A model id as requested, and what actually answers for it."""

    requested: str
    adapter: str  # the served adapter version ("tutor@3"), "base", or the upstream's id
    persona: str | None  # the variant whose persona the gateway adds (None: the bare base)
    root: str  # the base model
    parent: str | None = None
    grounded: bool | None = None  # ~grounded / ~plain: the request's `grounded`, else unset
    corrector: str | None = None  # the version a catalogue-named corrector resolves to
    spelling: str | None = None  # the word list of the spelling pass before the corrector turn
    spelling_by: str | None = None  # how it picks a spelling: "context" (the model) or frequency
    dtype: str | None = None  # the served weights' dtype, where the gateway says it

    @property
    def key(self) -> str:
        """What the cache is keyed by: the same weights under the same persona (and the same
        grounding, when the run asks for one)."""
        # ":2": since server/grounding.py drops the move hint when the corrector changes nothing,
        # replies cached under the first grounded protocol are not reused
        way = {None: "", True: "|grounded:2", False: "|plain"}[self.grounded]
        if self.corrector and self.grounded is not False:  # another model writes the note
            way += f"|corrector={self.corrector}"
        if self.spelling and self.grounded is not False:
            way += f"|spelling={self.spelling}"
            if self.spelling_by == "context":  # replies cached before it are by frequency
                way += "+context"
        if self.dtype:  # bf16 and float32 greedy replies differ: never one for the other
            way += f"|dtype={self.dtype}"
        return f"{self.persona or '-'}|{self.adapter}|{self.root}{way}"

    @property
    def version(self) -> str | None:
        """The registry version behind this model, if any."""
        return self.adapter if "@" in self.adapter else None


@dataclass
class ReplyRecord:
    model: str
    model_key: str
    adapter: str
    item_id: str
    reply: str
    finish_reason: str | None
    latency_s: float | None
    seed: int
    cached: bool
    ttft_s: float | None = None  # time to the first streamed token, corrector turn included
    grounding: str | None = None  # the gateway's x-tutor-grounding: changed/unchanged/rejected

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def api_base(url: str) -> str:
    """Accept a gateway URL with or without ``/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def item_seed(suite_seed: int, item_id: str) -> int:
    """A fixed per-item sampling seed, shared by all models so their replies are paired."""
    h = hashlib.sha256(f"{suite_seed}:{item_id}".encode()).digest()
    return int.from_bytes(h[:4], "big") % 2**31


def resolve_model(card: dict[str, Any], requested: str) -> ModelInfo:
    """From a /v1/models card: the gateway's metadata, or the plain id for other servers."""
    meta = card.get("metadata") or {}
    root = str(card.get("root") or card.get("parent") or requested)  # the gateway: the base id
    corrector, spelling = meta.get("corrector"), meta.get("spelling")
    spelling_by, dtype = meta.get("spelling_by"), meta.get("dtype")
    if "variant" in meta:  # a registered version, served under its variant's persona
        return ModelInfo(
            requested,
            requested,
            meta["variant"],
            root,
            card.get("parent"),
            corrector=corrector,
            spelling=spelling,
            spelling_by=spelling_by,
            dtype=dtype,
        )
    if "adapter" in meta:  # a variant: an alias for the version it points to now
        # (``<variant>@base`` names its variant in ``persona``: the same key as the alias on base)
        persona = str(meta.get("persona") or requested)
        return ModelInfo(
            requested,
            str(meta["adapter"]),
            persona,
            root,
            card.get("parent"),
            corrector=corrector,
            spelling=spelling,
            spelling_by=spelling_by,
            dtype=dtype,
        )
    if card.get("parent") is None and card.get("root"):
        # The gateway's bare base model (its root is the weights' folder: key it by its id, as
        # the variants' cards do), or a plain server's base model.
        return ModelInfo(requested, "base", None, str(card.get("id") or requested), dtype=dtype)
    return ModelInfo(requested, requested, None, root)  # e.g. a LoRA on a plain vLLM


GROUNDING_SUFFIXES = {"~grounded": True, "~plain": False}


def split_spec(spec: str) -> tuple[str, bool | None]:
    """``tutor@3~grounded`` -> (``tutor@3``, True): the same model asked with and without the
    grounded recast, side by side in one run. ``~`` because model ids may hold ``:`` (Ollama)."""
    for suffix, grounded in GROUNDING_SUFFIXES.items():
        if spec.endswith(suffix):
            return spec.removesuffix(suffix), grounded
    return spec, None


async def resolve_models(client: Any, models: Sequence[str]) -> dict[str, ModelInfo]:
    out = {}
    for m in models:
        model_id, grounded = split_spec(m)
        card = await client.models.retrieve(model_id)
        info = resolve_model(card.model_dump(), model_id)
        out[m] = replace(info, requested=m, grounded=grounded)
    return out


def request_params(suite: Suite, item: SuiteItem) -> dict[str, Any]:
    gen = suite.generation
    params = {
        "temperature": float(gen["temperature"]),
        "top_p": float(gen["top_p"]),
        "max_tokens": int(gen["max_tokens"]),
        "seed": item_seed(int(suite.manifest.get("seed", 0)), item.id),
        "scaffolding": item.mode,
    }
    if item.level:
        params["level"] = item.level
    return params


async def _ask(
    client: Any, model: str, item: SuiteItem, params: dict[str, Any]
) -> tuple[str, str | None, str | None, float, dict[str, Any] | None]:
    """One streamed reply: its text, finish reason, serving adapter, total seconds, and usage
    with the time to the first token and the grounding outcome beside the token counts."""
    model_id, grounded = split_spec(model)
    extra: dict[str, Any] = {"scaffolding": params["scaffolding"]}
    if "level" in params:
        extra["level"] = params["level"]
    if grounded is not None:
        extra["grounded"] = grounded
    t0 = time.perf_counter()
    raw = await client.chat.completions.with_raw_response.create(
        model=model_id,
        messages=item.messages(),
        temperature=params["temperature"],
        top_p=params["top_p"],
        max_tokens=params["max_tokens"],
        seed=params["seed"],
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    parts: list[str] = []
    finish: str | None = None
    ttft: float | None = None
    usage: dict[str, Any] = {}
    async for chunk in raw.parse():
        if chunk.usage is not None:
            usage.update(chunk.usage.model_dump())
        for choice in chunk.choices:
            if choice.delta.content:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    elapsed = time.perf_counter() - t0
    usage["ttft_s"] = ttft
    usage["grounding"] = raw.headers.get("x-tutor-grounding")
    adapter = raw.headers.get("x-tutor-adapter")
    return "".join(parts), finish, adapter, elapsed, usage


def _timing(usage: dict[str, Any] | None) -> tuple[float | None, str | None]:
    usage = usage or {}
    return usage.get("ttft_s"), usage.get("grounding")


async def run_suite(
    suite: Suite,
    models: Sequence[str],
    base_url: str,
    *,
    cache: ReplyCache,
    api_key: str = "unused",
    concurrency: int = 4,
    progress: bool = True,
    timeout: float = 300.0,
) -> tuple[dict[str, ModelInfo], list[ReplyRecord]]:
    """Every (model, item) reply, from the cache when the same version answered it before."""
    from openai import AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(
        base_url=api_base(base_url), api_key=api_key, timeout=timeout, max_retries=3
    )
    infos = await resolve_models(client, models)
    sem = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(models) * len(suite.items), desc=f"eval {suite.ref}", disable=not progress)
    records: list[ReplyRecord] = []

    async def one(model: str, item: SuiteItem) -> ReplyRecord:
        info = infos[model]
        params = request_params(suite, item)
        key = cache_key("reply", info.key, item.id, item.content_hash(), params)
        hit = cache.get(key)
        if hit is not None:
            bar.update(1)
            return ReplyRecord(
                model,
                info.key,
                hit["adapter"] or info.adapter,
                item.id,
                hit["reply"],
                hit["finish_reason"],
                hit["latency_s"],
                params["seed"],
                True,
                *_timing(hit["usage"]),
            )
        async with sem:
            reply, finish, adapter, elapsed, usage = await _ask(client, model, item, params)
        served = replace(info, adapter=adapter or info.adapter)
        if served.key != info.key:  # the alias moved during the run: file it under what served
            log.warning("%s was served by %s, not %s", model, served.adapter, info.adapter)
            key = cache_key("reply", served.key, item.id, item.content_hash(), params)
        cache.put(
            key,
            model_key=served.key,
            item_id=item.id,
            reply=reply,
            finish_reason=finish,
            adapter=served.adapter,
            latency_s=elapsed,
            usage=usage,
        )
        bar.update(1)
        return ReplyRecord(
            model,
            served.key,
            served.adapter,
            item.id,
            reply,
            finish,
            elapsed,
            params["seed"],
            False,
            *_timing(usage),
        )

    try:
        tasks = [one(m, it) for m in models for it in suite.items]
        records = list(await asyncio.gather(*tasks))
    finally:
        bar.close()
        await client.close()
    return infos, records


# -- run folders -----------------------------------------------------------------------------------


def runs_dir(home: Path | str | None = None) -> Path:

    return tutor_home(home) / "eval" / "runs"


def default_run_name(suite: Suite, models: Sequence[str]) -> str:
    slug = re.sub(r"[^A-Za-z0-9@._+-]+", "_", "+".join(models))
    if len(slug) > 80:
        slug = slug[:60] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"{suite.ref}--{slug}"


def write_run(
    out: Path,
    *,
    suite: Suite,
    base_url: str,
    infos: dict[str, ModelInfo],
    records: Sequence[ReplyRecord],
    cache: ReplyCache | None = None,
) -> Path:
    """``run.json`` (what was asked, of whom) and ``replies.jsonl``, each written atomically."""

    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, list[str]] = {}
    for r in records:
        labels = seen.setdefault(r.model, [])
        if r.adapter not in labels:
            labels.append(r.adapter)
    meta = {
        "suite": suite.ref,
        "suite_path": str(suite.path) if suite.path else None,
        "suite_items_sha256": suite.manifest.get("items_sha256"),
        "base_url": base_url,
        "models": [
            {
                "model": m,
                "key": info.key,
                "adapter": info.adapter,
                "persona": info.persona,
                "root": info.root,
                "served_by": seen.get(m, []),
            }
            for m, info in infos.items()
        ],
        "generation": suite.generation,
        "replies": len(records),
        "cached": sum(r.cached for r in records),
        "asked": sum(not r.cached for r in records),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    order = {m: i for i, m in enumerate(infos)}
    rows = sorted(records, key=lambda r: (order.get(r.model, 0), r.item_id))
    atomic_write_text(
        out / "replies.jsonl",
        "".join(json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
    )
    atomic_write_text(out / "run.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out
