"""The human side-by-side: a blind A/B page over a run's replies, votes in SQLite, and export of
the votes as preference pairs in TRL's DPO (conversational) format.

A rater sees a learner message (with its earlier turns) and two anonymous replies to it from two
versions, left and right in random order, and picks the better one or a tie, with an optional
reason. Which versions they were is shown only after the vote. A vote stores both replies and the
versions' cache keys (persona, adapter, base), so the report of any later run over the same
versions counts it.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from common.paths import tutor_home
from eval.stats import bootstrap_ci

CHOICES = ("left", "right", "tie")

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    item_id TEXT NOT NULL,
    language TEXT,
    mode TEXT,
    prompt TEXT NOT NULL,
    left_model TEXT NOT NULL,
    left_key TEXT NOT NULL,
    left_reply TEXT NOT NULL,
    right_model TEXT NOT NULL,
    right_key TEXT NOT NULL,
    right_reply TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    reason TEXT,
    rater TEXT,
    created REAL NOT NULL
);
"""


def default_votes_path(home: Path | str | None = None) -> Path:

    return tutor_home(home) / "eval" / "votes.sqlite"


class VoteStore:
    """Votes in SQLite (WAL); each vote is one INSERT, so a vote is stored whole or not at all."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: Gradio runs handlers on worker threads.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def record(
        self,
        pair: dict[str, Any],
        choice: str,
        *,
        reason: str = "",
        rater: str = "",
    ) -> int:
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        left, right = pair["left"], pair["right"]
        db = self._connect()
        try:
            cur = db.execute(
                "INSERT INTO votes (run, item_id, language, mode, prompt, left_model, left_key,"
                " left_reply, right_model, right_key, right_reply, choice, reason, rater, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pair["run"],
                    pair["item_id"],
                    pair.get("language"),
                    pair.get("mode"),
                    json.dumps(pair["prompt"], ensure_ascii=False),
                    left["model"],
                    left["key"],
                    left["reply"],
                    right["model"],
                    right["key"],
                    right["reply"],
                    choice,
                    reason.strip() or None,
                    rater.strip() or None,
                    time.time(),
                ),
            )
            return int(cur.lastrowid or 0)
        finally:
            db.close()

    def votes(self) -> list[dict[str, Any]]:
        db = self._connect()
        try:
            rows = db.execute("SELECT * FROM votes ORDER BY id").fetchall()
        finally:
            db.close()
        out = []
        for r in rows:
            d = dict(r)
            d["prompt"] = json.loads(d["prompt"])
            out.append(d)
        return out


# -- export and tallies ----------------------------------------------------------------------------


def dpo_pairs(votes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's conversational preference format: ``prompt`` (the messages up to the learner's
    turn), ``chosen`` and ``rejected`` (one assistant message each). Ties carry no preference
    and are left out."""
    out = []
    for v in votes:
        if v["choice"] == "tie":
            continue
        win, lose = ("left", "right") if v["choice"] == "left" else ("right", "left")
        out.append(
            {
                "prompt": v["prompt"],
                "chosen": [{"role": "assistant", "content": v[f"{win}_reply"]}],
                "rejected": [{"role": "assistant", "content": v[f"{lose}_reply"]}],
            }
        )
    return out


def export_dpo(votes: Sequence[dict[str, Any]], out: Path) -> int:
    """Write the preference pairs as JSONL (atomically); returns how many."""

    pairs = dpo_pairs(votes)
    atomic_write_text(
        out, "".join(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n" for p in pairs)
    )
    return len(pairs)


def human_win_rates(votes: Sequence[dict[str, Any]], keys: dict[str, str]) -> dict[str, Any]:
    """For every pair of models (by their version keys) with votes: wins, losses, ties of the
    first, and its win rate (ties count half) with a bootstrap interval."""
    pairs = []
    total = 0
    for a, b in combinations(keys, 2):
        ka, kb = keys[a], keys[b]
        outcomes = []
        for v in votes:
            sides = {v["left_key"]: "left", v["right_key"]: "right"}
            if set(sides) != {ka, kb} or ka == kb:
                continue
            if v["choice"] == "tie":
                outcomes.append(0.5)
            else:
                outcomes.append(1.0 if v["choice"] == sides[ka] else 0.0)
        if not outcomes:
            continue
        total += len(outcomes)
        est = bootstrap_ci(outcomes)
        pairs.append(
            {
                "a": a,
                "b": b,
                "n": len(outcomes),
                "wins": sum(o == 1.0 for o in outcomes),
                "losses": sum(o == 0.0 for o in outcomes),
                "ties": sum(o == 0.5 for o in outcomes),
                "rate": est.mean,
                "lo": est.lo,
                "hi": est.hi,
            }
        )
    return {"votes": total, "pairs": pairs}


# -- the page's logic (plain functions, tested without a browser) ----------------------------------


@dataclass
class Arena:
    """Pairs to judge from one eval run, and where votes go."""

    run: Any  # eval.compare.RunData
    store: VoteStore

    def new_pair(self, rng: random.Random) -> dict[str, Any]:
        """A random item and two different models' replies to it, in random order."""
        models = [m for m in self.run.models if self.run.replies.get(m)]
        if len(models) < 2:
            raise ValueError("the arena needs a run with at least two models")
        item = rng.choice(self.run.suite.items)
        a, b = rng.sample(models, 2)

        def side(model: str) -> dict[str, str]:
            rec = self.run.replies[model][item.id]
            return {"model": model, "key": rec["model_key"], "reply": rec["reply"]}

        return {
            "run": str(self.run.path),
            "item_id": item.id,
            "language": item.language,
            "mode": item.mode,
            "prompt": item.messages(),
            "left": side(a),
            "right": side(b),
        }


def conversation_markdown(pair: dict[str, Any]) -> str:
    """The learner's side of the conversation, earlier turns included."""
    lines = []
    for m in pair["prompt"]:
        who = "Learner" if m["role"] == "user" else "Tutor (earlier)"
        lines.append(f"**{who}:** {m['content']}")
    lines.append(f"\n*Requested move: {pair['mode']}*")
    return "\n\n".join(lines)


def start(arena: Arena, seed: int | None = None) -> tuple[dict[str, Any], str, str, str, str]:
    """A new pair: (state, conversation, left reply, right reply, status)."""
    rng = random.Random(seed)
    pair = arena.new_pair(rng)
    state = {"pair": pair, "seed": rng.random()}
    return state, conversation_markdown(pair), pair["left"]["reply"], pair["right"]["reply"], ""


def vote(
    arena: Arena, state: dict[str, Any], choice: str, reason: str = "", rater: str = ""
) -> tuple[dict[str, Any], str, str, str, str]:
    """Store the vote on the pair in ``state``, reveal who was who, and deal the next pair."""
    if not state or "pair" not in state:
        raise ValueError("no pair on screen to vote on")
    pair = state["pair"]
    arena.store.record(pair, choice, reason=reason or "", rater=rater or "")
    said = {"left": "left was better", "right": "right was better", "tie": "a tie"}[choice]
    reveal = (
        f"Vote stored ({said}). Left was `{pair['left']['model']}`, "
        f"right was `{pair['right']['model']}`."
    )
    new_state, convo, left, right, _ = start(arena, int(state["seed"] * 2**31))
    return new_state, convo, left, right, reveal


def build_arena(arena: Arena) -> Any:
    """The Gradio page."""
    import gradio as gr

    with gr.Blocks(title="Tutor A/B") as page:
        gr.Markdown(
            "# Which tutor reply is better?\nRead the learner's message and both replies. "
            "Pick the one a good language tutor would give (natural, keeps the conversation "
            "going, corrects without lecturing), or call it a tie."
        )
        state = gr.State({})
        convo = gr.Markdown()
        with gr.Row():
            left = gr.Textbox(label="Reply A (left)", interactive=False, lines=5)
            right = gr.Textbox(label="Reply B (right)", interactive=False, lines=5)
        reason = gr.Textbox(label="Why? (optional)", lines=1)
        rater = gr.Textbox(label="Your name or initials (optional)", lines=1)
        with gr.Row():
            b_left = gr.Button("A is better")
            b_tie = gr.Button("Tie")
            b_right = gr.Button("B is better")
        status = gr.Markdown()
        outputs = [state, convo, left, right, status]
        page.load(lambda: start(arena), None, outputs)
        for button, choice in ((b_left, "left"), (b_tie, "tie"), (b_right, "right")):
            button.click(
                lambda s, r, who, c=choice: vote(arena, s, c, r, who),
                [state, reason, rater],
                outputs,
            ).then(lambda: "", None, reason)
    return page
