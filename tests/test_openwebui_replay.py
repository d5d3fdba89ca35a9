"""Replay what a real Open WebUI sent, byte for byte but for the model id."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.settings import Settings
from tests.support import running_server

RECORDED = Path(__file__).parent / "fixtures" / "openwebui-requests.jsonl"
MODEL_MAP = {"tutor-es": "tutor-es-l2", "tutor-en": "tutor"}


@pytest.fixture(scope="module")
def server(tutor_home, tiny_path):
    with running_server(
        create_app(Settings(home=tutor_home, model="tiny-qwen3", engine="transformers"))
    ) as url:
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
