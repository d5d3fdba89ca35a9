"""The human A/B arena: the page's handlers, vote storage, the DPO export (checked with TRL's own
format functions), human win rates, and their place in the report. No browser: the handlers are
the functions the Gradio buttons call."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from common.paths import data_dir
from eval.arena import (
    Arena,
    VoteStore,
    build_arena,
    dpo_pairs,
    export_dpo,
    human_win_rates,
    start,
    vote,
)
from eval.compare import compare_run, load_run
from eval.report import write_report
from eval.runner import ModelInfo, ReplyRecord, write_run
from eval.suites import build_suite

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")

MODELS = {
    "tutor@1": ModelInfo("tutor@1", "tutor@1", "tutor", "tiny-qwen3", "tutor"),
    "tutor@2": ModelInfo("tutor@2", "tutor@2", "tutor", "tiny-qwen3", "tutor"),
}


@pytest.fixture
def run(tmp_path: Path, tutor_home: Path):
    """A run folder over the smoke suite with two models' replies (written, not generated)."""
    suite = build_suite("smoke", home=tmp_path, split_home=tutor_home)
    records = [
        ReplyRecord(
            model=m,
            model_key=info.key,
            adapter=info.adapter,
            item_id=it.id,
            reply=f"{m} says: that is interesting! What happened next?",
            finish_reason="stop",
            latency_s=0.1,
            seed=1,
            cached=False,
        )
        for m, info in MODELS.items()
        for it in suite.items
    ]
    folder = write_run(
        tmp_path / "run", suite=suite, base_url="http://127.0.0.1:1", infos=MODELS, records=records
    )
    return load_run(folder)


def test_pairs_are_blind_and_random_and_votes_are_stored(run, tmp_path: Path) -> None:
    arena = Arena(run, VoteStore(tmp_path / "votes.sqlite"))
    rng = random.Random(3)
    orders = set()
    for _ in range(20):
        pair = arena.new_pair(rng)
        left, right = pair["left"], pair["right"]
        assert left["model"] != right["model"]
        item = next(it for it in run.suite.items if it.id == pair["item_id"])
        assert pair["prompt"] == item.messages()
        assert left["reply"] == run.replies[left["model"]][item.id]["reply"]
        orders.add(left["model"])
    assert orders == set(MODELS)  # each version appears on the left

    state, convo, left_text, right_text, status = start(arena, seed=5)
    assert status == ""
    pair = state["pair"]
    assert left_text == pair["left"]["reply"] and right_text == pair["right"]["reply"]
    assert pair["prompt"][-1]["content"] in convo
    assert "tutor@" not in convo  # blind: the page does not name the versions before the vote

    new_state, _, _, _, reveal = vote(arena, state, "left", "more natural", "ab")
    assert f"Left was `{pair['left']['model']}`" in reveal
    assert new_state["pair"] is not pair
    vote(arena, new_state, "tie")
    stored = arena.store.votes()
    assert [v["choice"] for v in stored] == ["left", "tie"]
    assert stored[0]["reason"] == "more natural" and stored[0]["rater"] == "ab"
    assert stored[1]["reason"] is None
    assert stored[0]["left_key"] == MODELS[pair["left"]["model"]].key
    assert stored[0]["prompt"] == pair["prompt"]
    with pytest.raises(ValueError):
        arena.store.record(pair, "both")
    with pytest.raises(ValueError):
        vote(arena, {}, "left")

    page = build_arena(arena)  # the Gradio page builds around the same handlers
    assert type(page).__name__ == "Blocks"


def _pair(left: str, right: str, prompt: str = "Yesterday I go home.") -> dict:
    return {
        "run": "r",
        "item_id": "i",
        "prompt": [{"role": "user", "content": prompt}],
        "left": {"model": left, "key": MODELS[left].key, "reply": f"reply of {left}"},
        "right": {"model": right, "key": MODELS[right].key, "reply": f"reply of {right}"},
    }


def test_human_win_rates_count_each_side(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "votes.sqlite")
    store.record(_pair("tutor@1", "tutor@2"), "left")  # tutor@1 wins
    store.record(_pair("tutor@2", "tutor@1"), "right")  # tutor@1 wins
    store.record(_pair("tutor@2", "tutor@1"), "left")  # tutor@2 wins
    store.record(_pair("tutor@1", "tutor@2"), "tie")
    keys = {m: info.key for m, info in MODELS.items()}
    rates = human_win_rates(store.votes(), keys)
    assert rates["votes"] == 4
    (p,) = rates["pairs"]
    assert (p["a"], p["b"], p["n"]) == ("tutor@1", "tutor@2", 4)
    assert (p["wins"], p["losses"], p["ties"]) == (2, 1, 1)
    assert p["rate"] == pytest.approx((2 + 0.5) / 4)
    assert p["lo"] <= p["rate"] <= p["hi"]
    assert human_win_rates(store.votes(), {"tutor@1": keys["tutor@1"], "x": "none"}) == {
        "votes": 0,
        "pairs": [],
    }


def test_dpo_export_is_trl_preference_data(tmp_path: Path, tiny_path: Path) -> None:
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    store = VoteStore(tmp_path / "votes.sqlite")
    store.record(_pair("tutor@1", "tutor@2"), "right", reason="recasts")
    store.record(_pair("tutor@1", "tutor@2", "Ayer yo voy."), "tie")
    store.record(_pair("tutor@2", "tutor@1", "我有三个书。"), "left")
    out = tmp_path / "prefs.jsonl"
    assert export_dpo(store.votes(), out) == 2  # the tie has no preference
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == dpo_pairs(store.votes())
    assert [r["chosen"][0]["content"] for r in rows] == ["reply of tutor@2"] * 2
    assert [r["rejected"][0]["content"] for r in rows] == ["reply of tutor@1"] * 2
    tok = AutoTokenizer.from_pretrained(tiny_path)
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert is_conversational(row)
        text = apply_chat_template(row, tok)  # what TRL's DPOTrainer does with each example
        assert row["prompt"][0]["content"] in text["prompt"]
        assert text["chosen"].startswith(row["chosen"][0]["content"])
        assert text["rejected"].startswith(row["rejected"][0]["content"])


def test_the_report_shows_the_human_win_rate(run, tmp_path: Path) -> None:
    votes = tmp_path / "votes.sqlite"
    store = VoteStore(votes)
    for choice in ("left", "left", "right"):
        store.record(_pair("tutor@1", "tutor@2"), choice)
    result = compare_run(run, votes=votes)
    (p,) = result["human"]["pairs"]
    assert (p["wins"], p["losses"]) == (2, 1)
    files = write_report(result, tmp_path / "report")
    assert files["human"].read_bytes()[:4] == b"\x89PNG"
    md = files["markdown"].read_text()
    assert "3 votes." in md and "![human](human.png)" in md
    assert compare_run(run, votes=tmp_path / "none.sqlite")["human"] is None
    # a comparison restricted to one language's items (the decision then rests on them only)
    en = compare_run(run, languages=["en"])
    assert en["languages"] == ["en"]
    assert en["metrics"]["tutor@1"]["pedagogy"]["n"] == 4
    with pytest.raises(ValueError, match="no items"):
        compare_run(run, languages=["fr"])
