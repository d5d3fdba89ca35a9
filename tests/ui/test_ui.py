"""The UI's client side against real gateways, and the two ways to run the page.

The gateways are real (uvicorn, tiny model); each error a learner can meet is produced by a real
gateway in that state: an unknown variant (404), a per-key rate limit (429), an engine whose
upstream is down (503), a request over the context window (400), and no gateway at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from common.paths import REPO
from common.settings import Settings
from server.app import create_app
from tests.support import free_port, running_server, stop_process
from ui.client import DEFAULT_VARIANTS, ReplyInfo, TutorClient, api_base, friendly_error
from ui.tutor_app import corrections_markdown, pick_variant

HELLO = [{"role": "user", "content": "Hello! I am learn English."}]


@pytest.fixture(scope="module")
def gateway(tiny_settings) -> Iterator[str]:
    with running_server(create_app(tiny_settings)) as url:
        yield url


def _error(call) -> openai.APIError:
    with pytest.raises(openai.APIError) as info:
        call()
    return info.value


def _drain(client: TutorClient, variant: str, **kw) -> list[str]:
    return list(client.stream_reply(variant, HELLO, max_tokens=8, **kw))


def test_ui_imports_no_server_code() -> None:
    """The page is an API client: it can run against a remote gateway, so it never imports it."""
    import ast

    for path in (REPO / "ui").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("server", "adapters") for n in names), path


def test_api_base_accepts_gateway_urls_with_or_without_v1() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert api_base(url) == "http://h:1/v1"


def test_default_variants_are_what_the_gateway_serves(gateway) -> None:
    assert TutorClient(gateway).variants() == DEFAULT_VARIANTS


def test_pick_variant_falls_back_to_the_languages_first_learner() -> None:
    assert pick_variant(DEFAULT_VARIANTS, "es", "l2") == "tutor-es-l2"
    assert pick_variant(DEFAULT_VARIANTS, "es", "general") == "tutor-es-heritage"
    assert pick_variant(DEFAULT_VARIANTS, "xx", None) == "tutor"


def test_stream_reply_grows_and_equals_the_whole_reply(gateway) -> None:
    client = TutorClient(f"{gateway}/v1/")
    info = ReplyInfo()
    pieces = list(
        client.stream_reply(
            "tutor",
            HELLO,
            level="beginner",
            scaffolding="recast",
            temperature=0,
            max_tokens=12,
            info=info,
        )
    )
    assert len(pieces) > 1 and all(
        b.startswith(a) for a, b in zip(pieces, pieces[1:], strict=False)
    )
    whole = client.client.chat.completions.create(
        model="tutor",
        messages=HELLO,
        temperature=0,
        max_tokens=12,
        extra_body={"level": "beginner", "scaffolding": "recast"},
    )
    assert pieces[-1] == whole.choices[0].message.content
    assert (info.variant, info.adapter) == ("tutor", "base")


def test_unknown_variant_and_oversized_request(gateway) -> None:
    client = TutorClient(gateway)
    exc = _error(lambda: _drain(client, "tutor-xx-l2"))
    assert isinstance(exc, openai.NotFoundError)
    assert "'tutor-xx-l2' is not available on this server" in friendly_error(exc, "tutor-xx-l2")

    exc = _error(lambda: list(client.stream_reply("tutor", HELLO, max_tokens=10**6)))
    assert friendly_error(exc, "tutor").startswith("The tutor could not take this message: ")
    assert "max_tokens" in friendly_error(exc, "tutor")


def test_rate_limited(tutor_home, tiny_path) -> None:
    settings = Settings(home=tutor_home, model="tiny-qwen3", engine="transformers", default_rpm=1)
    with running_server(create_app(settings)) as url:
        client = TutorClient(url)
        _drain(client, "tutor")
        exc = _error(lambda: _drain(client, "tutor"))
    assert isinstance(exc, openai.RateLimitError)
    message = friendly_error(exc, "tutor")
    assert message.startswith("Too many messages at once. Please wait about ")


def test_engine_down_and_no_gateway(tutor_home) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings(home=tutor_home, engine="openai", upstream_url=dead, model="m")
    with running_server(create_app(settings)) as url:
        exc = _error(lambda: _drain(TutorClient(url), "tutor"))
    assert isinstance(exc, openai.APIStatusError) and exc.status_code == 503
    assert "not available right now" in friendly_error(exc, "tutor")

    exc = _error(lambda: _drain(TutorClient(f"http://127.0.0.1:{free_port()}"), "tutor"))
    assert isinstance(exc, openai.APIConnectionError)
    assert "cannot be reached" in friendly_error(exc, "tutor")


def test_corrections_markdown() -> None:
    assert "chat a little first" in corrections_markdown([])
    ok = [{"role": "user", "content": "I like it"}, {"role": "assistant", "content": "I like it!"}]
    assert "Well done" in corrections_markdown(ok)
    convo = [
        {"role": "user", "content": "She have two cat"},
        {"role": "assistant", "content": "She has two cats! What are their names?"},
    ]
    text = corrections_markdown(convo)
    assert "~~have~~ → the tutor said **has**" in text and "**cats**" in text


# -- The two ways to run the page: `tutor ui` alone, and mounted at /ui by `tutor serve` ---------

# Imports of the in-process engine's stack fail in the child, as they would in the slim image.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'peft', 'gguf', 'safetensors'}:
            raise ImportError(f'{name} is not in the slim image')
sys.meta_path.insert(0, NoTorch())
from cli.main import app
app(sys.argv[1:])
"""


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def _run(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_ui_app_serves_the_page(gateway) -> None:
    """What `tutor ui` runs: the page alone at /, configured for the gateway."""
    from ui.tutor_app import create_ui_app

    with running_server(create_ui_app(gateway)) as url:
        assert "gradio" in httpx.get(f"{url}/", timeout=10).text.lower()
        config = httpx.get(f"{url}/config", timeout=10).json()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"language", "learner", "level", "chat", "message", "new-conversation"} <= ids


def test_tutor_ui_command_is_wired() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["ui", "--help"])
    assert result.exit_code == 0
    assert all(opt in result.output for opt in ("--base-url", "--port", "--api-key"))


def test_serve_mounts_the_ui_and_starts_without_torch(gateway) -> None:
    """`tutor serve` on a remote engine: no torch at start-up, and a chat through /ui works."""
    from gradio_client import Client

    port = free_port()
    base_id = next(
        m["id"] for m in httpx.get(f"{gateway}/v1/models").json()["data"] if "parent" not in m
    )
    proc = _run(
        [sys.executable, "-c", NO_TORCH, "serve", "--engine", "openai", "--port", str(port)],
        TUTOR_UPSTREAM_URL=f"{gateway}/v1",
        TUTOR_MODEL=base_id,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/health", proc)
        assert _wait_for(f"{url}/ui/", proc).status_code == 200
        client = Client(f"{url}/ui/", verbose=False, analytics_enabled=False, download_files=False)
        try:
            shown, box, status, info = client.predict(  # the session's gr.State is not returned
                "Hello!", "en", "general", "beginner", "", 0, 8, api_name="/respond"
            )
        finally:
            client.close()  # its heartbeat stream would hold the server's graceful shutdown
        assert status == "" and box == ""
        assert [m["role"] for m in shown] == ["user", "assistant"]
        assert "Answered by `tutor`" in info
    finally:
        stop_process(proc)
