"""Key limits and variant quotas shared by several gateways through a real Redis, and tokens
charged as they stream (a cancelled reply pays for what it generated) on both keepers.

Each gateway is a real app under uvicorn with the real ``openai`` engine in front of the bench's
FAKE upstream (deploy/bench/fake_upstream.py), paced at 10 ms a token so that a stream stays open
while a test looks at the others: no model, no vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from common.paths import REPO
from common.settings import Settings
from deploy.bench.fake_upstream import PROMPT_TOKENS, build_app
from server.app import create_app
from server.auth import Principal, hash_key
from server.engines.base import TextDelta
from server.errors import RateLimited
from server.limits_redis import RedisLimits
from tests.support import REDIS_SERVER, running_server, start_redis

pytestmark = pytest.mark.skipif(
    not Path(REDIS_SERVER).is_file(), reason=f"no redis-server binary at {REDIS_SERVER}"
)

LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]
MODEL = "fake-model"  # the upstream's base model, as the gateway serves it
TOKENS = 4000  # the longest reply the fake upstream makes
RPM_KEY, STREAM_KEY, CANCEL_KEY, USAGE_KEY, FREE_KEY = (
    "tk-rpm",
    "tk-stream",
    "tk-cancel",
    "tk-usage",
    "tk-free",
)
RPM = 4
TPM = 60  # one token a second back: a refill the tests can bound by the time they took
KEYS = [
    {"name": "rpm", "sha256": hash_key(RPM_KEY), "rpm": RPM},
    {"name": "one-stream", "sha256": hash_key(STREAM_KEY), "max_streams": 1},
    # max_streams=1 too: a probe refused for the running stream says that the stream has not
    # ended (nor been charged) yet, and costs no tokens itself
    {"name": "cancel", "sha256": hash_key(CANCEL_KEY), "tpm": TPM, "max_streams": 1},
    {"name": "usage", "sha256": hash_key(USAGE_KEY), "tpm": TPM},
    {"name": "free", "sha256": hash_key(FREE_KEY)},
]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(r: httpx.Response, status: int) -> dict:
    """OpenAI's error shape, and nothing else."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def _chat(url: str, key: str, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": LEARNER, "max_tokens": 1, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=_auth(key), timeout=60)


def _long(**more) -> dict:
    return {"model": MODEL, "messages": LEARNER, "max_tokens": TOKENS, "stream": True, **more}


def _until(probe, done, *, deadline: float = 20.0):
    """``probe()`` again until ``done(result)``; the last result either way."""
    end = time.monotonic() + deadline
    while True:
        result = probe()
        if done(result) or time.monotonic() > end:
            return result
        time.sleep(0.1)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, stop = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with running_server(build_app(model=MODEL, tokens=TOKENS, interval_ms=10)) as url:
        yield f"{url}/v1"


def _settings(upstream: str, redis_url: str | None, **more) -> Settings:
    return Settings(
        engine="openai",
        model=MODEL,
        upstream_url=upstream,
        api_keys=KEYS,
        redis_url=redis_url,
        max_context=TOKENS,
        **more,
    )


@pytest.fixture(scope="module")
def pair(upstream: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two gateways, one Redis."""
    with ExitStack() as stack:
        yield tuple(
            stack.enter_context(running_server(create_app(_settings(upstream, redis_url))))
            for _ in range(2)
        )


@pytest.fixture(scope="module")
def alone(upstream: str) -> Iterator[str]:
    """One gateway counting in its own memory, as without TUTOR_REDIS_URL."""
    with running_server(create_app(_settings(upstream, None))) as url:
        yield url


def test_a_key_gets_exactly_its_requests_per_minute_across_two_gateways(pair):
    a, b = pair
    assert _chat(a, RPM_KEY).status_code == 200
    assert _chat(b, RPM_KEY).status_code == 200

    async def burst() -> list[httpx.Response]:  # both gateways at once: the count is atomic
        async with httpx.AsyncClient(timeout=60) as c:
            body = {"model": MODEL, "messages": LEARNER, "max_tokens": 1}
            return await asyncio.gather(
                *(
                    c.post(f"{url}/v1/chat/completions", json=body, headers=_auth(RPM_KEY))
                    for url in [a, b] * 5
                )
            )

    replies = asyncio.run(burst())
    assert sorted(r.status_code for r in replies) == [200] * (RPM - 2) + [429] * 8
    for r in [*(r for r in replies if r.status_code == 429), _chat(a, RPM_KEY), _chat(b, RPM_KEY)]:
        err = _error(r, 429)
        assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
        assert f"{RPM} requests per minute" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60 // RPM
    assert _chat(a, FREE_KEY).status_code == 200  # other keys are not affected


def test_concurrent_streams_are_counted_across_gateways(pair):
    a, b = pair
    with httpx.stream(
        "POST", f"{a}/v1/chat/completions", json=_long(), headers=_auth(STREAM_KEY), timeout=60
    ) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")
        for url in (b, a):
            r = _chat(url, STREAM_KEY)
            err = _error(r, 429)
            assert err["code"] == "too_many_streams" and "limit 1" in err["message"]
            assert r.headers["retry-after"] == "1"
    # the client left: once the gateway has seen it, the other gateway may stream again
    r = _until(lambda: _chat(b, STREAM_KEY), lambda r: r.status_code != 429)
    assert r.status_code == 200, r.text

    async def race() -> list[int]:  # one stream each on both gateways at once: one wins
        statuses: list[int] = []
        both = asyncio.Event()
        async with httpx.AsyncClient(timeout=60) as c:

            async def one(url: str) -> None:
                req = c.stream(
                    "POST", f"{url}/v1/chat/completions", json=_long(), headers=_auth(STREAM_KEY)
                )
                async with req as r:
                    statuses.append(r.status_code)
                    if len(statuses) == 2:
                        both.set()
                    await asyncio.wait_for(both.wait(), 30)

            await asyncio.gather(one(a), one(b))
        return statuses

    assert sorted(asyncio.run(race())) == [200, 429]


def test_a_variant_quota_holds_across_gateways(upstream, redis_url):
    settings = _settings(upstream, redis_url, variant_concurrency=1, variant_queue_timeout=0.3)
    with running_server(create_app(settings)) as a, running_server(create_app(settings)) as b:
        with httpx.stream(
            "POST",
            f"{a}/v1/chat/completions",
            json=_long(model="tutor-zh-l2"),
            headers=_auth(FREE_KEY),
            timeout=60,
        ) as s:
            lines = s.iter_lines()
            assert next(lines).startswith("data: ")
            r = _chat(b, FREE_KEY, model="tutor-zh-l2")
            err = _error(r, 429)
            assert err["code"] == "variant_busy" and "tutor-zh-l2 is busy" in err["message"]
            assert r.headers["retry-after"] == "1"
            assert _chat(b, FREE_KEY, model="tutor-es-heritage").status_code == 200
        r = _until(lambda: _chat(b, FREE_KEY, model="tutor-zh-l2"), lambda r: r.status_code != 429)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("keeper", ["redis", "memory"])
def test_a_cancelled_stream_is_charged_for_what_it_streamed(keeper, pair, alone):
    """The client reads ``read`` tokens and leaves: the key's budget goes down by about that
    many. Through Redis, the stream runs on one gateway and the bill is seen on the other."""
    there, then = pair if keeper == "redis" else (alone, alone)
    read, slack = 100, 50  # slack: what the gateway sent before it saw the client go
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{there}/v1/chat/completions", json=_long(), headers=_auth(CANCEL_KEY), timeout=60
    ) as s:
        seen = 0
        for line in s.iter_lines():
            if line.startswith("data: {"):
                seen += sum(
                    bool(c["delta"].get("content")) for c in json.loads(line[6:])["choices"]
                )
            if seen >= read:
                break
    # refused for its streams while the stream still runs; then for its tokens
    r = _until(
        lambda: _chat(then, CANCEL_KEY),
        lambda r: r.status_code != 429 or r.json()["error"]["code"] != "too_many_streams",
    )
    elapsed = time.monotonic() - start
    err = _error(r, 429)
    assert err["code"] == "rate_limit_exceeded" and f"{TPM} tokens per minute" in err["message"]
    # Retry-After = ceil(1 - left) at one token a second, left = TPM - spent + refill, and the
    # refill is at most the seconds since the stream began
    wait = int(r.headers["retry-after"])
    assert wait + TPM - 2 < read + slack, f"charged far more than was streamed (wait {wait}s)"
    assert read <= wait + TPM - 1 + elapsed, f"charged less than was streamed (wait {wait}s)"


@pytest.mark.parametrize("keeper", ["redis", "memory"])
def test_the_engines_usage_replaces_the_count_of_deltas(keeper, pair, alone):
    """A finished reply is charged its real usage once: its deltas are counted as they pass,
    and the last one's usage settles the difference (prompt tokens included)."""
    there, then = pair if keeper == "redis" else (alone, alone)
    n = 50
    start = time.monotonic()
    body = _long(max_tokens=n, stream_options={"include_usage": True})
    with httpx.stream(
        "POST", f"{there}/v1/chat/completions", json=body, headers=_auth(USAGE_KEY), timeout=60
    ) as s:
        events = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
    usage = events[-1]["usage"]
    assert usage["total_tokens"] == PROMPT_TOKENS + n > TPM
    r = _chat(then, USAGE_KEY)
    elapsed = time.monotonic() - start
    assert f"{TPM} tokens per minute" in _error(r, 429)["message"]
    wait = int(r.headers["retry-after"])
    spent = usage["total_tokens"]  # not n (the deltas alone) nor n + total (both)
    assert wait + TPM - 2 < spent <= wait + TPM - 1 + elapsed, wait


def test_redis_down_is_a_503_in_openai_shape_and_the_gateway_recovers(upstream, tmp_path):
    url, stop = start_redis(tmp_path / "redis")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    settings = _settings(upstream, url, variant_concurrency=1)
    try:
        with running_server(create_app(settings)) as gw:
            assert _chat(gw, RPM_KEY).status_code == 200
            stop()
            for key, stream in [(RPM_KEY, False), (RPM_KEY, True), (FREE_KEY, False)]:
                # RPM_KEY fails at admission; FREE_KEY has no key limit but the variant quota
                # still needs Redis; a stream gets a real 503, not an error inside a 200
                r = _chat(gw, key, stream=stream)
                err = _error(r, 503)
                assert err["type"] == "service_unavailable" and err["code"] == "limits_unavailable"
                assert "rate-limit store" in err["message"] and "redis" not in err["message"]
                assert int(r.headers["retry-after"]) >= 1
            assert httpx.get(f"{gw}/health").status_code == 200  # the gateway itself is fine
            url, stop = start_redis(tmp_path / "redis-again", port=port)
            r = _until(lambda: _chat(gw, FREE_KEY), lambda r: r.status_code != 503)
            assert r.status_code == 200, r.text
    finally:
        stop()


DEAD_GATEWAY = """
import asyncio, sys
from server.auth import Principal
from server.engines.base import TextDelta
from server.limits_redis import RedisLimits

async def endless():
    while True:
        await asyncio.sleep(0.05)
        yield TextDelta(text="x")

async def main():
    limits = RedisLimits(sys.argv[1], variant_concurrency=2, lease_ttl=float(sys.argv[2]))
    async with limits.slot("tutor"):
        reply = limits.hold(Principal("mortal", frozenset(), max_streams=2), endless())
        await anext(reply)
        print("holding", flush=True)
        async for _ in reply:
            pass

asyncio.run(main())
"""


async def endless() -> AsyncIterator[TextDelta]:
    """A reply that never ends."""
    while True:
        await asyncio.sleep(0.05)
        yield TextDelta(text="x")


def test_a_dead_gateways_leases_expire_while_a_live_ones_stay(redis_url):
    """A gateway killed with -9 frees nothing itself: its stream and variant slot expire once it
    stops refreshing them, even while a live gateway keeps the same key and variant busy (and so
    the sets themselves alive); as long as a gateway lives, its leases do not expire."""
    ttl = 2.0
    p = Principal("mortal", frozenset(), max_streams=2)  # one stream each for the two holders
    child = subprocess.Popen(
        [sys.executable, "-c", DEAD_GATEWAY, redis_url, str(ttl)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )

    async def scenario() -> None:
        live = RedisLimits(redis_url, variant_concurrency=2, lease_ttl=ttl)
        probe = RedisLimits(redis_url, variant_concurrency=2, variant_queue_timeout=0.1)

        async def refusals() -> tuple[str | None, str | None]:
            """What refuses one more request now: its stream, its variant slot (None: free)."""
            stream = slot = None
            try:
                await probe.admit(p)
            except RateLimited as exc:
                stream = exc.code
            try:
                async with probe.slot("tutor"):
                    pass
            except RateLimited as exc:
                slot = exc.code
            return stream, slot

        async def keep_busy(started: asyncio.Event) -> None:
            async with live.slot("tutor"):
                reply = live.hold(p, endless())
                try:
                    await anext(reply)
                    started.set()
                    async for _ in reply:
                        pass
                finally:
                    await reply.aclose()

        started = asyncio.Event()
        busy = asyncio.create_task(keep_busy(started))
        try:
            await started.wait()
            assert await refusals() == ("too_many_streams", "variant_busy")
            await asyncio.sleep(ttl * 1.5)  # past the first expiry: refreshed, all still count
            assert child.poll() is None
            assert await refusals() == ("too_many_streams", "variant_busy")
            child.send_signal(signal.SIGKILL)
            child.wait()
            end = time.monotonic() + 20
            while (now := await refusals()) != (None, None) and time.monotonic() < end:
                await asyncio.sleep(0.1)
            assert now == (None, None)  # the dead gateway's leases are gone
            async with probe.slot("tutor"):  # the live one's still count: one more fills both
                reply = probe.hold(p, endless())
                try:
                    await anext(reply)
                    assert await refusals() == ("too_many_streams", "variant_busy")
                finally:
                    await reply.aclose()
        finally:
            busy.cancel()
            await asyncio.gather(busy, return_exceptions=True)
            await live.aclose()
            await probe.aclose()

    try:
        assert child.stdout.readline().strip() == "holding"
        asyncio.run(scenario())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("keeper", ["redis", "memory"])
def test_a_grounded_reply_pays_for_its_corrector_turn(keeper, upstream, redis_url):
    """Four of the five tutors are served grounded: a corrector turn, then the reply. Both
    turns are the key's tokens: the corrector's usage is charged with the reply's."""
    from server.grounding import corrector_max_tokens

    key = f"tk-grounded-{keeper}"
    keys = [*KEYS, {"name": f"grounded-{keeper}", "sha256": hash_key(key), "tpm": TPM}]
    settings = Settings(
        engine="openai",
        model=MODEL,
        upstream_url=upstream,
        upstream_models={"tutor": MODEL},
        api_keys=keys,
        redis_url=redis_url if keeper == "redis" else None,
    )
    n = 5
    with running_server(create_app(settings)) as gw:
        start = time.monotonic()
        r = httpx.post(
            f"{gw}/v1/chat/completions",
            json={"model": "tutor", "messages": LEARNER, "max_tokens": n},
            headers=_auth(key),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-tutor-grounding"] in ("changed", "unchanged", "rejected")
        assert r.json()["usage"]["total_tokens"] == PROMPT_TOKENS + n  # the reply's own
        probe = _chat(gw, key)
        elapsed = time.monotonic() - start
    # the fake upstream answers the corrector with as many tokens as it may take
    corrector = PROMPT_TOKENS + corrector_max_tokens(LEARNER[0]["content"])
    spent = corrector + PROMPT_TOKENS + n
    assert f"{TPM} tokens per minute" in _error(probe, 429)["message"]
    wait = int(probe.headers["retry-after"])
    assert wait + TPM - 2 < spent <= wait + TPM - 1 + elapsed, (wait, spent)
