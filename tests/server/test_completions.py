"""Legacy /v1/completions with the official client: the chat route's persona, limits and errors
in the older shape (the same generation underneath, so the same text at temperature 0)."""

from __future__ import annotations

import httpx
import openai
import pytest

SENTENCE = "Yesterday I go to the store."


@pytest.fixture(scope="module")
def client(es_gateway):
    return openai.OpenAI(base_url=f"{es_gateway}/v1", api_key="x", max_retries=0)


def test_the_prompt_is_the_learner_turn_under_the_same_persona(client):
    for model in ("tutor-es-l2", "tiny-qwen3"):
        done = client.completions.create(model=model, prompt=SENTENCE, max_tokens=8, temperature=0)
        chat = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": SENTENCE}],
            max_tokens=8,
            temperature=0,
        )
        assert done.object == "text_completion" and done.id.startswith("cmpl-")
        assert done.choices[0].text == chat.choices[0].message.content
        assert done.usage.prompt_tokens == chat.usage.prompt_tokens
        assert done.choices[0].finish_reason == chat.choices[0].finish_reason
    listed = client.completions.create(model="tutor", prompt=[SENTENCE], temperature=0)
    assert listed.usage.completion_tokens <= 16  # OpenAI's default max_tokens for completions


def test_streamed_completion_is_the_collected_one(client):
    ask = {"model": "tutor-es-l2", "prompt": SENTENCE, "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**ask)
    chunks = list(
        client.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_legacy_logprobs(client):
    done = client.completions.create(
        model="tutor-es-l2", prompt=SENTENCE, max_tokens=6, temperature=0, logprobs=2
    )
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(
        len(top) <= 2 and max(top.values()) >= lp_
        for top, lp_ in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": [SENTENCE, SENTENCE]}, "prompt"),
        ({"prompt": [[1, 2, 3]]}, "prompt"),  # token ids
        ({"echo": True}, "echo"),
        ({"suffix": "!"}, "suffix"),
        ({"n": 2}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"logprobs": 6}, "logprobs"),
        ({"messages": "not a list", "max_tokens": 0}, "max_tokens"),  # a stray field is no 500
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),  # the chat route's rules, at parse time
    ],
)
def test_what_completions_cannot_do_is_a_400_naming_it(client, extra, param):
    body = {"model": "tutor", "prompt": SENTENCE, "max_tokens": 2, **extra}
    r = httpx.post(f"{client.base_url}completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == param, r.json()


def test_errors_are_the_chat_routes(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=SENTENCE, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tutor", prompt="a\x00b", max_tokens=2)
    assert err.value.body["param"] == "prompt"
    # a chat-only field sent to completions is an unknown extra here: ignored, never a 500
    odd = client.completions.create(
        model="tutor", prompt=SENTENCE, max_tokens=2, extra_body={"tools": "not a list"}
    )
    assert odd.choices[0].text is not None
