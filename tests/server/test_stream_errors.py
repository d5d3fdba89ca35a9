"""Errors after generation started: an error event, then [DONE]; nothing hangs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from common.settings import Settings
from server.app import create_app
from server.engines.base import Engine, GenerationRequest, TextDelta
from server.engines.transformers_engine import TransformersEngine
from server.errors import EngineError
from tests.support import running_server

BODY = {
    "model": "tutor",
    "messages": [{"role": "user", "content": "I has a cat."}],
    "max_tokens": 12,
    "temperature": 1.0,
    "seed": 1,
}


class FaultInjectingEngine(Engine):
    """A real engine whose stream is cut after ``fail_after`` deltas: an injected crash."""

    name = "fault-injecting"

    def __init__(self, inner: Engine, fail_after: int) -> None:
        self.inner, self.fail_after = inner, fail_after

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def health(self) -> dict:
        return await self.inner.health()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        n = 0
        async for delta in self.inner.generate(request):
            if n == self.fail_after:
                raise EngineError("injected engine crash")
            n += 1
            yield delta


def _events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


@pytest.fixture(scope="module")
def faulty(tiny_path, tiny_settings):
    engine = FaultInjectingEngine(TransformersEngine(str(tiny_path)), fail_after=2)
    with running_server(create_app(tiny_settings, engine=engine)) as url:
        yield url


def test_a_stream_cut_by_the_engine_ends_with_an_error_event_and_done(faulty):
    r = httpx.post(f"{faulty}/v1/chat/completions", json={**BODY, "stream": True}, timeout=60)
    assert r.status_code == 200  # the status line was sent with the first token
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == "injected engine crash"
    assert set(error) == {"message", "type", "param", "code"}
    assert all("choices" in json.loads(e) for e in events[:-2])


def test_a_non_stream_reply_cut_by_the_engine_is_an_error(faulty):
    r = httpx.post(f"{faulty}/v1/chat/completions", json=BODY, timeout=60)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "engine_error"
    assert httpx.get(f"{faulty}/health").status_code == 200


def test_an_upstream_error_event_is_relayed_through_the_openai_engine(faulty):
    settings = Settings(engine="openai", model="tutor", upstream_url=f"{faulty}/v1")
    with running_server(create_app(settings)) as gateway:
        r = httpx.post(f"{gateway}/v1/chat/completions", json={**BODY, "stream": True}, timeout=60)
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    assert "injected engine crash" in json.loads(events[-2])["error"]["message"]
