"""A request's `tools` under each TUTOR_TOOLS mode (the vLLM forward path:
tests/server/test_vllm.py)."""

from __future__ import annotations

import logging
import re

import httpx
import openai
import pytest

from common.settings import Settings
from server.app import create_app
from tests.support import running_server

LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]
# one of Open WebUI's built-in tools, as it sends them with every chat
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_timestamp",
            "description": "Get the current Unix timestamp in seconds",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    }
]


def _server(tutor_home, mode: str):
    settings = Settings(home=tutor_home, model="tiny-qwen3", engine="transformers", tools=mode)
    return running_server(create_app(settings))


def test_ignore_answers_counts_and_logs_once_per_client(tutor_home, tiny_path, caplog):
    caplog.set_level(logging.INFO, logger="server.serving")
    with _server(tutor_home, "ignore") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for _ in range(3):
            reply = client.chat.completions.create(
                model="tutor", messages=LEARNER, max_tokens=3, tools=TOOLS
            )
            assert reply.choices[0].message.content is not None
            assert not reply.choices[0].message.tool_calls
        plain = client.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=3)
        assert plain.choices[0].message.content is not None
        metrics = httpx.get(f"{url}/metrics").text
        found = re.search(r'tutor_tools_ignored_total\{variant="tutor"\} (\S+)', metrics)
        assert found and float(found.group(1)) == 3.0  # the request without tools is not counted
    told = [r for r in caplog.records if "ignoring the tools" in r.getMessage()]
    assert len(told) == 1 and "anonymous" in told[0].getMessage()


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("reject", "TUTOR_TOOLS=reject"),  # refused by configuration
        ("forward", "transformers engine"),  # an engine that cannot take them
    ],
)
def test_tools_the_gateway_cannot_honour_are_a_400_naming_them(tutor_home, tiny_path, mode, says):
    with _server(tutor_home, mode) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="tutor", messages=LEARNER, max_tokens=3, tools=TOOLS
            )
        assert err.value.body["param"] == "tools"
        assert says in err.value.body["message"]
        assert client.chat.completions.create(model="tutor", messages=LEARNER, max_tokens=3)
