"""The `openai` engine, with a second real server of ours as the upstream."""

from __future__ import annotations

import httpx
import openai
import pytest

from common.settings import Settings
from server.app import create_app
from tests.support import free_port, running_server

LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]


@pytest.fixture(scope="module")
def upstream(es_gateway):
    """The upstream: another gateway, standing in for Ollama and the like."""
    return es_gateway


@pytest.fixture(scope="module")
def gateway(upstream):
    settings = Settings(
        engine="openai",
        model="tiny-qwen3",  # the upstream's base model name
        served_model_name="tiny-qwen3",
        upstream_url=f"{upstream}/v1/",  # a trailing slash is fine
        upstream_models={"tutor-es-l2": "tutor-es-l2"},
    )
    with running_server(create_app(settings)) as url:
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def test_gateway_reply_equals_upstream_given_the_same_messages(gateway, upstream):
    gw, up = _client(gateway), _client(upstream)
    raw = gw.chat.completions.with_raw_response.create(
        model="tutor", messages=LEARNER, max_tokens=10, temperature=1.0, seed=3
    )
    assert raw.headers["x-tutor-adapter"] == "base"
    reply = raw.parse()
    # the gateway added the persona; the upstream's bare base model adds nothing
    from adapters.variants import Catalogue
    from common.settings import DEFAULT_CATALOGUE

    persona = Catalogue.load(DEFAULT_CATALOGUE).variants["tutor"].system_prompt()
    direct = up.chat.completions.create(
        model="tiny-qwen3",
        messages=[{"role": "system", "content": persona}, *LEARNER],
        max_tokens=10,
        temperature=1.0,
        top_p=0.9,  # the variant's default, which the gateway forwards
        seed=3,
    )
    assert reply.choices[0].message.content == direct.choices[0].message.content
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens
    assert reply.usage.completion_tokens == direct.usage.completion_tokens


def test_mapped_variant_goes_to_its_upstream_model_and_streams_chunk_by_chunk(gateway, upstream):
    gw = _client(gateway)
    raw = gw.chat.completions.with_raw_response.create(
        model="tutor-es-l2", messages=LEARNER, max_tokens=10, temperature=0
    )
    assert raw.headers["x-tutor-adapter"] == "tutor-es-l2"
    whole = raw.parse().choices[0].message.content
    stream = gw.chat.completions.create(
        model="tutor-es-l2",
        messages=LEARNER,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == whole
    assert len(pieces) > 1  # not buffered into one piece
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10


def test_upstream_down_gives_503_with_retry_after(tiny_path):
    settings = Settings(
        engine="openai", model="tiny-qwen3", upstream_url=f"http://127.0.0.1:{free_port()}/v1"
    )
    with running_server(create_app(settings)) as url:
        r = httpx.post(
            f"{url}/v1/chat/completions", timeout=60, json={"model": "tutor", "messages": LEARNER}
        )
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"]["code"] == "engine_unavailable"
        assert httpx.get(f"{url}/health").status_code == 503


def test_upstream_missing_model_is_404(upstream):
    settings = Settings(
        engine="openai", model="no-such-upstream-model", upstream_url=f"{upstream}/v1"
    )
    with running_server(create_app(settings)) as url:
        r = httpx.post(
            f"{url}/v1/chat/completions", timeout=60, json={"model": "tutor", "messages": LEARNER}
        )
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"


def test_an_upstream_400_stays_a_400(tutor_home, tiny_path):
    strict = Settings(home=tutor_home, model="tiny-qwen3", engine="transformers", max_context=8)
    with running_server(create_app(strict)) as up:
        settings = Settings(engine="openai", model="tiny-qwen3", upstream_url=f"{up}/v1")
        with running_server(create_app(settings)) as url:
            r = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "tutor", "messages": LEARNER, "max_tokens": 16},
                timeout=60,  # a loaded CI machine is slower than httpx's 5 s default
            )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and "context window" in err["message"]
