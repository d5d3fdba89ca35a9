"""Grounded recast: the corrector turn, the hidden note, and the gateway path over real PEFT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import yaml

from adapters.variants import Catalogue
from common.settings import DEFAULT_CATALOGUE, Settings
from server.app import create_app
from server.engines.base import AdapterRef, Engine, GenerationRequest, SamplingParams, TextDelta
from server.errors import EngineError, EngineUnavailable
from server.grounding import corrector_max_tokens, ground, plausible
from tests.support import peft_reference, running_server, spelt

CATALOGUE = Catalogue.load(DEFAULT_CATALOGUE)
LEARNER = "Yesterday I go to the store."


def test_every_language_has_the_grounding_strings() -> None:
    for variant in CATALOGUE.variants.values():
        assert variant.grounding_note("a b", "a b") == variant.grounding["correct"]
        note = variant.grounding_note("Ayer yo va.", "Ayer yo fui.")
        assert "Ayer yo fui." in note and note != variant.grounding["correct"]
        sys_msg, user = variant.corrector_messages("Ayer yo va.")
        assert sys_msg == {"role": "system", "content": variant.grounding["corrector"]}
        assert user == {"role": "user", "content": "Ayer yo va."}
    tutor = CATALOGUE.variants["tutor"]
    assert tutor.grounding_note(LEARNER, "Yesterday I went to the store.") == (
        'The learner meant: "Yesterday I went to the store."'
    )


def test_plausible_corrections_edit_rather_than_replace() -> None:
    assert plausible(LEARNER, "Yesterday I went to the store.")
    assert plausible("我昨天去商店买了三个苹果", "我昨天去商店买了三个苹果。")
    assert not plausible(LEARNER, "")
    assert not plausible(LEARNER, "What a lovely day it is, isn't it?")
    assert corrector_max_tokens("x" * 500) == 256 > corrector_max_tokens(LEARNER)


class ScriptedCorrectorEngine(Engine):
    """Fake: answers the corrector turn with a set line (a trained corrector cannot be assumed in
    a unit test); the real path is `test_grounded_request_through_the_gateway_equals_peft`."""

    name = "scripted"

    def __init__(self, correction: str) -> None:
        self.correction = correction
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        self.requests.append(request)
        yield TextDelta(self.correction[:5])
        yield TextDelta(self.correction[5:] + "\n", finish_reason="stop")

    async def health(self) -> dict:
        return {}


@pytest.mark.parametrize(
    ("correction", "outcome", "note"),
    [
        ("Yesterday I went to the store.", "changed", 'meant: "Yesterday I went to the store."'),
        (LEARNER, "unchanged", "The learner's sentence is correct."),
        ("Tell me about your favourite film.", "rejected", None),
    ],
)
def test_ground_puts_the_note_after_the_last_learner_turn(correction, outcome, note) -> None:
    tutor = CATALOGUE.variants["tutor"]
    adapter = AdapterRef("tutor@7", DEFAULT_CATALOGUE.parent)
    messages = [
        {"role": "system", "content": tutor.system_prompt()},
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi! What did you do yesterday?"},
        {"role": "user", "content": LEARNER},
    ]
    request = GenerationRequest(messages, SamplingParams(max_tokens=50), adapter=adapter)
    engine = ScriptedCorrectorEngine(correction)
    grounded, what = asyncio.run(ground(engine, request, tutor))
    (asked,) = engine.requests
    assert asked.messages == tutor.corrector_messages(LEARNER)  # only the last learner turn
    assert asked.adapter == adapter and asked.params.temperature == 0.0
    assert asked.params.stop == ("\n",)
    assert what.outcome == outcome and what.correction == correction
    if note is None:
        assert grounded is request and what.note is None
    else:
        assert grounded.messages[:-1] == messages
        assert (
            grounded.messages[-1]["role"] == "system" and note in grounded.messages[-1]["content"]
        )
        assert grounded.params == request.params and grounded.adapter == adapter


def test_the_corrector_sees_the_sentence_after_the_spelling_pass() -> None:
    """English has a word list (the catalogue's `spelling: en`): the corrector is asked about
    the spelt sentence, and a corrector that only repeats it still changed what the learner
    wrote. Spanish has none: its corrector gets the learner's words as they are."""
    tutor, spanish = CATALOGUE.variants["tutor"], CATALOGUE.variants["tutor-es-l2"]
    assert tutor.spelling == "en" and spanish.spelling is None
    learner, fixed = "therefore I brougth a car.", "therefore I brought a car."
    engine = ScriptedCorrectorEngine(fixed)
    request = GenerationRequest([{"role": "user", "content": learner}], SamplingParams(50))
    grounded, what = asyncio.run(ground(engine, request, tutor))
    assert engine.requests[0].messages == tutor.corrector_messages(fixed)
    assert what.outcome == "changed" and fixed in grounded.messages[-1]["content"]
    engine = ScriptedCorrectorEngine("Ayer fui.")
    request = GenerationRequest([{"role": "user", "content": "Ayer yo va."}], SamplingParams(50))
    asyncio.run(ground(engine, request, spanish))
    assert engine.requests[0].messages == spanish.corrector_messages("Ayer yo va.")


class RankingCorrectorEngine(ScriptedCorrectorEngine):
    """Fake: also ranks next tokens, putting " we" first (or failing, as a vLLM that refuses
    the call would); SmolLM2's real ranking is in tests/server/test_spelling.py, vLLM's in
    tests/server/test_vllm.py."""

    ranks_next_tokens = True

    def __init__(self, correction: str, *, fail: bool = False) -> None:
        super().__init__(correction)
        self.fail = fail
        self.ranked: list[list[str]] = []

    async def next_tokens(self, prompts: list[str], top: int) -> list[dict[str, float]]:
        self.ranked.append(prompts)
        if self.fail:
            raise EngineError("vLLM failed to rank tokens (400): logprobs above the maximum")
        return [{" we": -0.1, " the": -5.0, " have": -0.5} for _ in prompts]


@pytest.mark.parametrize(
    ("in_context", "fail", "seen"),
    [
        (True, False, "In today's world we have it."),
        (False, False, "In today's world the have it."),
        (True, True, "In today's world the have it."),  # a failed ranking: frequency, no error
    ],
)
def test_the_spelling_pass_asks_the_engine_where_it_ranks_and_may(in_context, fail, seen) -> None:
    tutor = CATALOGUE.variants["tutor"]
    engine = RankingCorrectorEngine("In today's world we have it.", fail=fail)
    learner = "In today's world whe have it."
    request = GenerationRequest([{"role": "user", "content": learner}], SamplingParams(50))
    _, what = asyncio.run(ground(engine, request, tutor, in_context=in_context))
    assert engine.requests[0].messages == tutor.corrector_messages(seen)
    assert len(engine.ranked) == (1 if in_context else 0)
    assert what.outcome == "changed"


class DroppingEngine(ScriptedCorrectorEngine):
    """Fake: cuts its first ``cuts`` answers after one delta, as a vLLM replica killed mid-turn
    does (the real kill is in tests/deploy/test_cluster.py)."""

    def __init__(self, correction: str, cuts: int) -> None:
        super().__init__(correction)
        self.cuts = cuts

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        cut = len(self.requests) < self.cuts
        async for delta in super().generate(request):
            yield delta
            if cut:
                raise EngineUnavailable("upstream closed the connection mid-response")


def test_a_corrector_turn_cut_mid_way_is_asked_once_more() -> None:
    """The corrector's line is collected, never streamed: a cut turn is asked again (with
    replicas, on another one); a second cut is the engine's error, a 503 for the learner."""
    tutor = CATALOGUE.variants["tutor"]
    request = GenerationRequest([{"role": "user", "content": LEARNER}], SamplingParams(50))
    once = DroppingEngine("Yesterday I went to the store.", cuts=1)
    _, what = asyncio.run(ground(once, request, tutor))
    assert len(once.requests) == 2 and what.correction == "Yesterday I went to the store."
    assert what.outcome == "changed"
    twice = DroppingEngine("Yesterday I went to the store.", cuts=2)
    with pytest.raises(EngineUnavailable):
        asyncio.run(ground(twice, request, tutor))
    assert len(twice.requests) == 2


@pytest.mark.parametrize(
    ("correction", "hint_kept"),
    [("Yesterday I went to the store.", True), (LEARNER, False)],
)
def test_a_sentence_the_corrector_leaves_gets_no_move_hint(correction, hint_kept) -> None:
    """Elicit or hint only where there is an error: when the corrector returns the sentence as
    it is, the requested move leaves the system prompt (persona, level, client text stay)."""
    tutor = CATALOGUE.variants["tutor"]
    system = tutor.system_prompt("elicitation", "beginner", "Be brief.")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": LEARNER}]
    request = GenerationRequest(messages, SamplingParams(max_tokens=50))
    grounded, what = asyncio.run(ground(ScriptedCorrectorEngine(correction), request, tutor))
    assert what.outcome == ("changed" if hint_kept else "unchanged")
    sent = grounded.messages[0]["content"]
    assert (tutor.scaffolding_hints["elicitation"] in sent) is hint_kept
    if not hint_kept:
        assert sent == tutor.system_prompt(None, "beginner", "Be brief.")
    assert grounded.messages[1:-1] == messages[1:]  # the learner's turns as they were
    assert request.messages[0]["content"] == system  # the caller's request is not modified


@pytest.fixture(scope="module")
def grounded_server(tutor_home, tiny_path, tiny_adapters, tmp_path_factory):
    """`tutor` (es adapter) grounded on request only, correcting itself (its catalogue corrector
    has no weights here); a catalogue copy where `tutor-es-heritage` is grounded by default with
    `tutor-zh-l2`'s adapter as its corrector."""
    raw = yaml.safe_load(DEFAULT_CATALOGUE.read_text(encoding="utf-8"))
    raw["variants"]["tutor"]["grounded"] = False  # whatever the shipped default is
    # `tutor` names `tutor-corrector`, which has no weights on this base (the shipped folder is
    # SmolLM2's): the bare base is no corrector, so the tutor's own adapter corrects
    assert raw["variants"]["tutor"]["corrector"] == "tutor-corrector"
    raw["variants"]["tutor-es-heritage"].update(grounded=True, corrector="tutor-zh-l2")
    folder = tmp_path_factory.mktemp("catalogue")
    (folder / "catalogue.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        catalogue=folder / "catalogue.yaml",
        adapters={
            "tutor": str(tiny_adapters["es"]),
            "tutor-es-heritage": str(tiny_adapters["es"]),
            "tutor-zh-l2": str(tiny_adapters["zh"]),
        },
    )
    with running_server(create_app(settings)) as url:
        yield url


def peft_grounded(tiny_path, variant_id: str, tutor_adapter, corrector_adapter, learner: str):
    """PEFT's own corrector line and tutor reply for the same messages the gateway builds."""
    variant = CATALOGUE.variants[variant_id]
    line = peft_reference(
        tiny_path,
        corrector_adapter,
        variant.corrector_messages(spelt(variant, learner, tiny_path)),
        corrector_max_tokens(learner),
    )
    correction = line.split("\n", 1)[0].strip()
    messages = [
        {"role": "system", "content": variant.system_prompt()},
        {"role": "user", "content": learner},
    ]
    if plausible(learner, correction):
        outcome = "unchanged" if correction == learner else "changed"
        messages.append({"role": "system", "content": variant.grounding_note(learner, correction)})
    else:
        outcome = "rejected"
    return peft_reference(tiny_path, tutor_adapter, messages, 12), outcome


def test_grounded_request_through_the_gateway_equals_peft(
    grounded_server, tiny_path, tiny_adapters
) -> None:
    """The gateway's corrector turn and tutor turn are exactly what PEFT generates for the same
    messages: the note (or its absence, for a rejected correction) is where serving says, and the
    corrector runs on the adapter the catalogue names."""
    es, zh = tiny_adapters["es"], tiny_adapters["zh"]
    client = openai.OpenAI(base_url=f"{grounded_server}/v1", api_key="x", max_retries=0)
    cases = [
        ("tutor", LEARNER, {"grounded": True}, es, es),  # its own adapter corrects
        ("tutor-es-heritage", "Ayer yo va a la playa.", {}, es, zh),  # the catalogue's corrector
    ]
    outcomes = {}
    for model, learner, extra, tutor_adapter, corrector_adapter in cases:
        expected, outcome = peft_grounded(
            tiny_path, model, tutor_adapter, corrector_adapter, learner
        )
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": learner}],
            max_tokens=12,
            temperature=0,
            extra_body=extra,
        )
        assert raw.headers["x-tutor-grounding"] == outcome
        assert raw.parse().choices[0].message.content == expected
        outcomes[model] = outcome
        # the corrector turn is its own phase of the wait for the first token
        timing = dict(
            (p.split(";dur=")[0].strip(), float(p.split(";dur=")[1]))
            for p in raw.headers["server-timing"].split(",")
        )
        assert timing["ground"] > 0 and timing["upstream"] > 0, timing
    # `tutor`'s catalogue default is off: no corrector turn, no header; a request can turn a
    # grounded-by-default variant off
    for model, extra in (("tutor", {}), ("tutor-es-heritage", {"grounded": False})):
        plain = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": LEARNER}],
            max_tokens=12,
            temperature=0,
            extra_body=extra,
        )
        assert "x-tutor-grounding" not in plain.headers
    cards = {c.id: c.model_dump() for c in client.models.list().data}
    assert cards["tutor"]["metadata"]["grounded"] is False
    assert cards["tutor-es-heritage"]["metadata"]["grounded"] is True
    metrics = httpx.get(f"{grounded_server}/metrics").text
    for model, outcome in outcomes.items():
        line = f'tutor_grounding_seconds_count{{outcome="{outcome}",variant="{model}"}} 1.0'
        assert line in metrics


def test_grounded_needs_a_trained_adapter(grounded_server) -> None:
    """The base model has no corrector: asking for grounding there is the caller's error."""
    client = openai.OpenAI(base_url=f"{grounded_server}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tutor-es-l2",
            messages=[{"role": "user", "content": "Ayer yo va a la playa."}],
            max_tokens=4,
            extra_body={"grounded": True},
        )
    assert err.value.body["param"] == "grounded"
    # a stream asks the same way and gets the same grounding
    with openai.OpenAI(base_url=f"{grounded_server}/v1", api_key="x") as c:
        stream = c.chat.completions.with_raw_response.create(
            model="tutor",
            messages=[{"role": "user", "content": LEARNER}],
            max_tokens=4,
            temperature=0,
            stream=True,
            extra_body={"grounded": True},
        )
        assert stream.headers["x-tutor-grounding"] in ("changed", "unchanged", "rejected")
        assert "".join(ch.choices[0].delta.content or "" for ch in stream.parse() if ch.choices)


def test_a_named_corrector_is_on_the_card_and_in_the_eval_cache_key(grounded_server) -> None:
    """`tutor-es-heritage` corrects with `tutor-zh-l2`'s adapter: its card says which version
    writes the note, so eval caches its grounded replies apart from the same weights corrected
    by themselves (a catalogue change of `corrector:` is never answered from the old cache)."""
    from eval.runner import resolve_model

    client = openai.OpenAI(base_url=f"{grounded_server}/v1", api_key="x", max_retries=0)
    cards = {c.id: c.model_dump() for c in client.models.list().data}
    heritage, zh, own = cards["tutor-es-heritage"], cards["tutor-zh-l2"], cards["tutor"]
    assert heritage["metadata"]["corrector"] == zh["metadata"]["adapter"]
    # corrects with its own adapter: the named `tutor-corrector` has only the bare base here
    assert own["metadata"].get("corrector") is None
    assert cards["tutor-corrector"]["metadata"]["adapter"] == "base"
    assert own["metadata"]["spelling"] == "en" and heritage["metadata"]["spelling"] is None
    with_pass = resolve_model(own, "tutor")
    assert (
        with_pass.key
        != resolve_model({**own, "metadata": {**own["metadata"], "spelling": None}}, "tutor").key
    )  # the spelling pass changes what the corrector sees: another cache key
    # the transformers engine ranks next tokens: the pass picks spellings in context, which is
    # another sentence for the corrector than frequency alone gives, and another key
    assert own["metadata"]["spelling_by"] == "context"
    assert heritage["metadata"]["spelling_by"] is None
    by_frequency = {**own, "metadata": {**own["metadata"], "spelling_by": "frequency"}}
    assert with_pass.key != resolve_model(by_frequency, "tutor").key
    with_other = resolve_model(heritage, "tutor-es-heritage")
    assert with_other.corrector == zh["metadata"]["adapter"]
    same_weights = resolve_model(
        {**heritage, "metadata": {**heritage["metadata"], "corrector": None}}, "tutor-es-heritage"
    )
    assert with_other.key != same_weights.key
    from dataclasses import replace

    assert replace(with_other, grounded=False).key == replace(same_weights, grounded=False).key
    # the served dtype is on every card and in the key: bf16 replies never stand for float32 ones
    assert {c["metadata"]["dtype"] for c in cards.values()} == {"float32"}
    assert "|dtype=float32" in with_pass.key
    in_bf16 = {**own, "metadata": {**own["metadata"], "dtype": "bfloat16"}}
    assert with_pass.key != resolve_model(in_bf16, "tutor").key
