"""The Gradio tutor driven in a real headless Chromium against a real gateway with two adapters.

Nothing is faked: uvicorn serves the gateway (tiny model, Spanish and Mandarin LoRA adapters)
and the UI app; Debian's Chromium runs the page through Playwright. That a reply came from a
given adapter is proven twice: by the gateway's own ``/metrics`` counters per variant, and by
the reply text being exactly what the official ``openai`` client gets from that variant at
temperature 0 with the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from common.settings import Settings
from server.app import create_app
from tests.support import free_port, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (`make browser`)"
)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAX_TOKENS = 24
TIMEOUT_MS = 60_000

# Record every text the last bot message shows, to see the reply grow while it streams.
WATCH_STREAM = """
() => {
  window.__seen = [];
  const chat = document.querySelector('#chat');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    if (bots.length) window.__seen.push(bots[bots.length - 1].innerText);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}
"""


def letters(text: str) -> str:
    """Letters and digits only: the page renders markdown and folds spaces, the API does not."""
    return re.sub(r"[\W_]+", "", text)


def requests_ok(base_url: str) -> dict[str, float]:
    """The gateway's tutor_requests_total{status="ok"} by variant."""
    text = httpx.get(f"{base_url}/metrics").text
    pattern = r'^tutor_requests_total\{status="ok",variant="([^"]+)"\} (\S+)$'
    found = {v: float(n) for v, n in re.findall(pattern, text, re.M)}
    if not found:  # label order is the client library's choice
        pattern = r'^tutor_requests_total\{variant="([^"]+)",status="ok"\} (\S+)$'
        found = {v: float(n) for v, n in re.findall(pattern, text, re.M)}
    return found


@pytest.fixture(scope="module")
def gateway(lora_gateway: str) -> str:
    """The shared gateway with the Spanish and Mandarin adapters (tests/conftest.py)."""
    return lora_gateway


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextmanager
def open_page(browser, url: str) -> Iterator[Page]:
    """``url`` in a fresh browser context, closed on exit."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
    finally:
        context.close()  # before any server stops: an open event stream holds its shutdown


@contextmanager
def ui_server(base_url: str) -> Iterator[str]:
    """The UI app against ``base_url``, served by uvicorn."""
    from ui.tutor_app import create_ui_app

    with running_server(create_ui_app(base_url)) as url:
        yield url


@pytest.fixture(scope="module")
def ui(gateway) -> Iterator[str]:
    with ui_server(gateway) as url:
        yield url


def wait_ready(page) -> None:
    page.wait_for_selector("#variant:has-text('Tutor model')")


def choose(page, language: str, learner: str, variant: str) -> None:
    """Pick a language, wait for the page to offer its learner types, pick one, and wait for
    the page to name ``variant``."""
    page.locator("#language").get_by_label(language).check()
    prefix = "-".join(variant.split("-")[:2])  # tutor-zh-l2 -> tutor-zh
    page.wait_for_selector(f"#variant:has-text('{prefix}')")
    page.locator("#learner").get_by_label(learner).check()
    page.wait_for_selector(f"#variant:has-text('{variant}')")


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def send(page, text: str) -> None:
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def bot_texts(page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def test_chat_streams_switches_adapter_and_starts_over(browser, gateway, ui) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0)

    def api_reply(model: str, messages: list[dict]) -> str:
        out = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_tokens=MAX_TOKENS,
            extra_body={"level": "beginner"},
        )
        return out.choices[0].message.content

    with open_page(browser, ui) as page:
        wait_ready(page)
        assert not page.locator("#corrections").is_visible()  # the panel is off by default
        page.locator("#advanced").get_by_text("Advanced").click()
        set_number(page, "temperature", 0)
        set_number(page, "max-tokens", MAX_TOKENS)

        # 1. Spanish, second-language learner: the es adapter, streamed.
        choose(page, "Spanish", "Second-language learner", "tutor-es-l2")
        before = requests_ok(gateway)
        page.evaluate(WATCH_STREAM)
        first = "Ayer yo voy a la playa con mi amigos."
        send(page, first)
        page.wait_for_selector("#reply-info:has-text('tutor-es-l2@1')")
        seen = [s for s in page.evaluate("window.__seen") if s.strip()]
        reply1 = bot_texts(page)[-1]
        assert len(set(seen)) > 1, f"the reply did not grow on the page: {seen}"
        assert all(letters(reply1).startswith(letters(s)) for s in seen)
        after1 = requests_ok(gateway)
        assert after1.get("tutor-es-l2", 0) == before.get("tutor-es-l2", 0) + 1

        # 2. Switch to Mandarin, second-language learner: the zh adapter, same conversation.
        choose(page, "Mandarin", "Second-language learner", "tutor-zh-l2")
        second = "我有三个书。"
        send(page, second)
        page.wait_for_selector("#reply-info:has-text('tutor-zh-l2@1')")
        after2 = requests_ok(gateway)
        assert after2.get("tutor-zh-l2", 0) == after1.get("tutor-zh-l2", 0) + 1
        assert after2.get("tutor-es-l2", 0) == after1.get("tutor-es-l2", 0)
        replies = bot_texts(page)
        assert len(replies) == 2  # the history holds
        assert page.locator('#chat [data-testid="user"]').all_inner_texts() == [first, second]

        # Same text as the openai client gets from each variant with the same history.
        expected1 = api_reply("tutor-es-l2", [{"role": "user", "content": first}])
        history = [
            {"role": "user", "content": first},
            {"role": "assistant", "content": expected1},
            {"role": "user", "content": second},
        ]
        expected2 = api_reply("tutor-zh-l2", history)
        assert letters(replies[0]) == letters(expected1) != ""
        assert letters(replies[1]) == letters(expected2) != ""
        assert letters(expected1) != letters(api_reply("tutor-zh-l2", history[:1]))

        # 3. New conversation: an empty page, and the next turn is sent without the old history.
        page.locator("#new-conversation").click()
        page.wait_for_function(
            "document.querySelectorAll('#chat [data-testid=\"bot\"]').length === 0"
        )
        assert page.locator("#reply-info").inner_text().strip() == ""
        third = "你好！"
        send(page, third)
        page.wait_for_selector("#reply-info:has-text('tutor-zh-l2@1')")
        expected3 = api_reply("tutor-zh-l2", [{"role": "user", "content": third}])
        assert [letters(t) for t in bot_texts(page)] == [letters(expected3)]


def test_what_did_i_get_wrong_panel(browser, ui) -> None:
    from common.metrics import conversation_recasts

    with open_page(browser, ui) as page:
        wait_ready(page)
        page.locator("#advanced").get_by_text("Advanced").click()
        set_number(page, "max-tokens", MAX_TOKENS)
        choose(page, "Spanish", "Second-language learner", "tutor-es-l2")
        send(page, "Ayer yo voy a la playa.")
        page.wait_for_selector("#reply-info:has-text('tutor-es-l2@1')")
        assert not page.locator("#check").is_visible()
        page.locator("#show-corrections").get_by_role("checkbox").check()
        page.locator("#check").click()
        page.wait_for_selector("#corrections:has-text('The tutor')")
        panel = page.locator("#corrections").inner_text()
        reply = bot_texts(page)[-1]
        pairs = conversation_recasts(
            [
                {"role": "user", "content": "Ayer yo voy a la playa."},
                {"role": "assistant", "content": reply},
            ]
        )
        if pairs:
            assert all(letters(said) in letters(panel) for _, said in pairs)
        else:
            assert "did not say anything you wrote in another way" in panel


def test_gateway_errors_read_as_sentences(browser, tutor_home) -> None:
    # A gateway whose engine is down: the openai engine pointed at a port nobody listens on.
    dead_upstream = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings(
        home=tutor_home, engine="openai", upstream_url=dead_upstream, model="upstream-model"
    )
    with (
        running_server(create_app(settings)) as down,
        ui_server(down) as url,
        open_page(browser, url) as page,
    ):
        wait_ready(page)
        send(page, "Hello, I am fine")
        page.wait_for_selector("#tutor-status:has-text('not available right now')")
        status = page.locator("#tutor-status").inner_text()
        assert "Traceback" not in status and "Error" not in status
        assert page.locator("#message textarea").input_value() == "Hello, I am fine"
        assert bot_texts(page) == []

    # No gateway at all.
    with ui_server(f"http://127.0.0.1:{free_port()}") as url, open_page(browser, url) as page:
        page.wait_for_selector("#tutor-status:has-text('cannot be reached')")
        send(page, "Hello?")
        page.wait_for_selector("#tutor-status:has-text('cannot be reached')")
        assert bot_texts(page) == []
