"""Smoke test: the default model, SmolLM2-135M-Instruct, answers a learner in English."""

from __future__ import annotations

import re

import openai
import pytest

from common.settings import Settings
from server.app import create_app
from tests.support import running_server

COMMON_ENGLISH = {
    "the",
    "a",
    "an",
    "you",
    "i",
    "to",
    "and",
    "is",
    "it",
    "of",
    "in",
    "that",
    "what",
    "did",
    "your",
    "for",
    "was",
    "are",
    "do",
    "with",
    "my",
    "me",
    "we",
    "have",
    "can",
    "how",
    "went",
}


@pytest.mark.slow
def test_default_model_answers_a_learner_in_english(tutor_home, smollm2_path, tmp_path):
    # the default preset, with a registry of its own: the shipped tutor it registers is for
    # SmolLM2, and the rest of the session's gateways run the tiny model
    settings = Settings(
        home=tutor_home,
        engine="transformers",
        registry=tmp_path / "registry.sqlite",
        adapter_dir=tmp_path / "adapters",
    )
    assert settings.model == "smollm2-135m-instruct"
    with running_server(create_app(settings)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="tutor",
            messages=[{"role": "user", "content": "Yesterday I go to the store and buy apple."}],
            max_tokens=48,
            temperature=0,
        )
    text = reply.choices[0].message.content
    words = re.findall(r"[a-z']+", text.lower())
    assert len(words) >= 5, text
    assert sum(c.isascii() for c in text) / len(text) > 0.95, text
    assert len(COMMON_ENGLISH.intersection(words)) >= 2, text
