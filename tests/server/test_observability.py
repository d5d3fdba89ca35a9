"""What an operator sees: request ids, the log line per request, HTTP metrics, the model list,
and keys that change while the gateway runs. Real uvicorn servers, the official client."""

from __future__ import annotations

import json
import logging
import re
import time

import httpx
import openai
import pytest

from common.settings import ApiKey, Settings
from server.app import create_app
from server.auth import hash_key, load_key_file, save_key_file
from tests.support import free_port, running_server, serve_process

CHAT, ADMIN, ES_ONLY = "tk-obs-chat", "tk-obs-admin", "tk-obs-es"
LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]
VARIANTS = {
    "tutor",
    "tutor-es-heritage",
    "tutor-es-l2",
    "tutor-zh-heritage",
    "tutor-zh-l2",
    "tutor-corrector",
}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _keys() -> list[dict]:
    return [
        {"name": "school", "sha256": hash_key(CHAT), "scopes": ["chat"]},
        {"name": "ops", "sha256": hash_key(ADMIN), "scopes": ["chat", "admin"]},
        {"name": "spanish", "sha256": hash_key(ES_ONLY), "scopes": ["chat"], "models": ["*-es-*"]},
    ]


@pytest.fixture(scope="module")
def gateway(tutor_home, tiny_path, tiny_adapters):
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        api_keys=_keys(),
        adapters={"tutor-es-l2": str(tiny_adapters["es"])},
    )
    with running_server(create_app(settings)) as url:
        yield url


def _access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "tutor.access"]


def _lines_of(caplog, rid: str, n: int = 1) -> list[dict]:
    """The request's lines, once ``n`` are there: a line is written when its response is
    complete, which can be a moment after the client has read the last byte."""
    deadline = time.monotonic() + 5
    while True:
        lines = [f for f in _access_lines(caplog) if f["request_id"] == rid]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_every_response_carries_a_request_id_and_a_log_line(gateway, caplog):
    caplog.set_level(logging.INFO, logger="tutor.access")
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=CHAT, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="tutor-es-l2", messages=LEARNER, max_tokens=4, temperature=0
    )
    reply = raw.parse()
    rid = raw.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    # the client's own id is kept; one that could break a header or a log line is replaced
    mine = httpx.get(f"{gateway}/v1/models", headers={**_auth(CHAT), "x-request-id": "webui-42"})
    assert mine.headers["x-request-id"] == "webui-42"
    odd = httpx.get(f"{gateway}/v1/models", headers={**_auth(CHAT), "x-request-id": "a b\tc"})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])
    # errors too, whoever answers them: auth, routing, validation
    for r in (
        httpx.get(f"{gateway}/v1/models"),
        httpx.get(f"{gateway}/nowhere"),
        httpx.post(f"{gateway}/v1/chat/completions", headers=_auth(CHAT), content=b"{"),
    ):
        assert r.status_code in (401, 404, 400, 422) and r.headers["x-request-id"]
    _lines_of(caplog, rid)
    lines = {line["request_id"]: line for line in _access_lines(caplog)}
    chat = lines[rid]
    assert chat["key"] == "school" and CHAT not in json.dumps(chat)  # the name, never the key
    assert chat["route"] == "/v1/chat/completions" and chat["status"] == 200
    assert chat["variant"] == "tutor-es-l2"
    assert chat["adapter"] == raw.headers["x-tutor-adapter"] != "base"
    assert chat["completion_id"] == reply.id
    assert chat["prompt_tokens"] == reply.usage.prompt_tokens
    assert chat["completion_tokens"] == reply.usage.completion_tokens
    assert chat["outcome"] == "ok" and 0 < chat["ttft_ms"] <= chat["duration_ms"]
    assert lines["webui-42"]["route"] == "/v1/models"
    # a client's path or method never forges a log line or a new metric series
    forged = httpx.request("PROPFIND", f"{gateway}/nowhere%0Aforged", headers=_auth(CHAT))
    line = _lines_of(caplog, forged.headers["x-request-id"])[0]
    assert (line["method"], line["route"]) == ("other", "unmatched")
    forged_record = next(
        r
        for r in caplog.records
        if getattr(r, "fields", {}).get("request_id") == line["request_id"]
    )
    assert "\n" not in forged_record.getMessage()


def test_http_metrics_count_every_status_and_describe_the_process(gateway):
    httpx.get(f"{gateway}/v1/models")  # 401
    httpx.post(f"{gateway}/v1/chat/completions", headers=_auth(CHAT), json={"model": "nope"})
    httpx.post(
        f"{gateway}/v1/chat/completions",
        headers=_auth(CHAT),
        json={"model": "nope", "messages": LEARNER},
    )  # 404
    ok = httpx.post(
        f"{gateway}/v1/chat/completions",
        headers=_auth(CHAT),
        json={"model": "tutor", "messages": LEARNER, "max_tokens": 2},
    )
    assert ok.status_code == 200
    text = httpx.get(f"{gateway}/metrics").text

    def count(route: str, method: str, status: int) -> float:
        pattern = (
            rf'tutor_http_requests_total\{{method="{method}",route="{re.escape(route)}",'
            rf'status="{status}"\}} (\S+)'
        )
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    assert count("/v1/models", "GET", 401) >= 1
    assert count("/v1/chat/completions", "POST", 404) >= 1
    assert (
        count("/v1/chat/completions", "POST", 400) + count("/v1/chat/completions", "POST", 422) >= 1
    )
    assert count("/v1/chat/completions", "POST", 200) >= 1
    assert "tutor_http_request_duration_seconds_bucket" in text
    assert re.search(
        r'tutor_build_info\{engine="transformers",model="tiny-qwen3",version="[^"]+"\} 1', text
    )
    assert "process_resident_memory_bytes" in text and "python_info" in text


def test_the_model_list_shows_names_and_no_server_paths(gateway, tiny_path):
    cards = {
        c["id"]: c for c in httpx.get(f"{gateway}/v1/models", headers=_auth(ADMIN)).json()["data"]
    }
    assert str(tiny_path) not in json.dumps(cards)
    assert cards["tiny-qwen3"]["root"] == "tiny-qwen3"
    assert all(c["root"] == "tiny-qwen3" for c in cards.values())
    assert cards["tutor"]["name"] == "English tutor"
    assert cards["tutor-zh-heritage"]["name"] == "Mandarin tutor (heritage speakers)"


def test_a_key_allow_list_narrows_the_models(gateway):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=ES_ONLY, max_retries=0)
    assert {m.id for m in client.models.list().data} == {"tutor-es-heritage", "tutor-es-l2"}
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=2)
    assert err.value.body["code"] == "model_not_allowed" and err.value.body["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve("tutor-zh-l2")
    reply = client.chat.completions.create(model="tutor-es-l2", messages=LEARNER, max_tokens=2)
    assert reply.choices[0].message.content is not None


def test_public_models_variants_shows_learners_the_catalogue_only(
    tutor_home, tiny_path, tiny_adapters
):
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        api_keys=_keys(),
        public_models="variants",
        adapters={"tutor-es-l2": str(tiny_adapters["es"])},
    )
    with running_server(create_app(settings)) as url:
        learner = openai.OpenAI(base_url=f"{url}/v1", api_key=CHAT, max_retries=0)
        assert {m.id for m in learner.models.list().data} == VARIANTS
        for hidden in ("tiny-qwen3", "tutor@base"):
            with pytest.raises(openai.NotFoundError):
                learner.chat.completions.create(model=hidden, messages=LEARNER, max_tokens=2)
        assert learner.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=2)
        ops = openai.OpenAI(base_url=f"{url}/v1", api_key=ADMIN, max_retries=0)
        assert "tiny-qwen3" in {m.id for m in ops.models.list().data}
        assert ops.chat.completions.create(model="tiny-qwen3", messages=LEARNER, max_tokens=2)


def test_the_key_file_is_read_again_when_it_changes(tutor_home, tiny_path, tmp_path):
    path = tmp_path / "keys.json"
    save_key_file(path, [ApiKey(name="a", sha256=hash_key("tk-a"))])
    settings = Settings(
        home=tutor_home, model="tiny-qwen3", engine="transformers", api_keys_file=path
    )

    def status(url: str, key: str) -> int:
        return httpx.get(f"{url}/v1/models", headers=_auth(key)).status_code

    def eventually(url: str, key: str, want: int) -> None:
        deadline = time.monotonic() + 5
        while status(url, key) != want:
            assert time.monotonic() < deadline, f"{key}: still {status(url, key)}, not {want}"
            time.sleep(0.2)

    with running_server(create_app(settings)) as url:
        assert status(url, "tk-a") == 200 and status(url, "tk-b") == 401
        save_key_file(path, [ApiKey(name="b", sha256=hash_key("tk-b"))])  # a revoked, b added
        eventually(url, "tk-a", 401)
        eventually(url, "tk-b", 200)
        path.write_text("keys: [{name: broken")  # a file that does not parse keeps the old keys
        time.sleep(1.5)
        assert status(url, "tk-b") == 200 and status(url, "tk-a") == 401
        save_key_file(path, [])  # every key revoked: closed, never open to anyone
        eventually(url, "tk-b", 401)
        assert httpx.get(f"{url}/v1/models").status_code == 401
    assert load_key_file(path) == []


@pytest.mark.parametrize("engine", ["openai", "vllm"])
def test_the_request_id_reaches_the_upstream(engine, tiny_settings, caplog):
    """A gateway in front of another gateway of ours: the upstream's log line for the forwarded
    request has the client's id. With ``engine=vllm`` the front treats the upstream as a remote
    vLLM (which names its request after the same X-Request-Id header); it once rebuilt the
    request for vLLM without its headers, so the id stopped at the gateway. The base model, as
    the upstream here cannot load adapters the vLLM way."""
    caplog.set_level(logging.INFO, logger="tutor.access")
    with running_server(create_app(tiny_settings)) as up:
        front = Settings(
            engine=engine,
            model="tiny-qwen3",
            served_model_name="tiny-qwen3",
            **({"upstream_url": f"{up}/v1"} if engine == "openai" else {"vllm_url": f"{up}/v1"}),
        )
        model = "tutor" if engine == "openai" else "tiny-qwen3"
        with running_server(create_app(front)) as url:
            for stream in (False, True):
                rid = f"turn-{int(stream)}"
                r = httpx.post(
                    f"{url}/v1/chat/completions",
                    headers={"x-request-id": rid},
                    json={"model": model, "messages": LEARNER, "max_tokens": 2, "stream": stream},
                )
                assert r.status_code == 200 and r.headers["x-request-id"] == rid
                seen = _lines_of(caplog, rid, 2)
                assert len(seen) == 2, seen  # the front's line and the upstream's
                assert {f["route"] for f in seen} == {"/v1/chat/completions"}
                # a non-stream reply is collected from one upstream body, a stream from a stream
                assert [f["stream"] for f in seen] == [stream, stream], seen


def test_json_logs_one_object_per_line(tutor_home, tiny_path, tmp_path):
    """`tutor serve` with TUTOR_LOG_FORMAT=json: every line parses, the request's line has its
    fields, and the key itself is nowhere in the log."""
    path = tmp_path / "keys.json"
    save_key_file(path, [ApiKey(name="school", sha256=hash_key(CHAT))])
    env = {
        "TUTOR_HOME": str(tutor_home),
        "TUTOR_MODEL": "tiny-qwen3",
        "TUTOR_ENGINE": "transformers",
        "TUTOR_UI": "false",
        "TUTOR_API_KEYS_FILE": str(path),
        "TUTOR_LOG_FORMAT": "json",
    }
    log = tmp_path / "serve.log"
    port = free_port()
    with serve_process(env, port, log) as (_, url):
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers=_auth(CHAT),
            json={"model": "tutor", "messages": LEARNER, "max_tokens": 3, "stream": True},
        )
        rid = r.headers["x-request-id"]
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        httpx.get(f"{url}/v1/models")  # a 401
        time.sleep(0.3)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(obj) for obj in lines)
    chat = next(obj for obj in lines if obj.get("request_id") == rid)
    assert chat["logger"] == "tutor.access" and chat["key"] == "school"
    assert chat["variant"] == "tutor" and chat["status"] == 200 and chat["stream"] is True
    assert chat["completion_tokens"] >= 1 and chat["ttft_ms"] > 0 and chat["outcome"] == "ok"
    assert any(obj.get("status") == 401 and obj.get("route") == "/v1/models" for obj in lines)
    assert CHAT not in log.read_text()
