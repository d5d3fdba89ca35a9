"""The preference store (A/B arena votes) stays consistent when its writer is killed -9."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from eval.arena import CHOICES, VoteStore, export_dpo
from tests.support import kill_9_after

WRITER = """
import sys
from eval.arena import VoteStore
store = VoteStore(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    side = lambda m: {"model": m, "key": m[-1], "reply": f"reply {i} from {m} " * 20}
    pair = {"run": "r", "item_id": f"item-{i}", "language": "en", "mode": "recast",
            "prompt": [{"role": "user", "content": f"learner text {i}"}],
            "left": side("tutor@1"), "right": side("tutor@2")}
    store.record(pair, ("left", "right", "tie")[i % 3], reason="r")
    i += 1
"""


def test_votes_survive_kill_9_mid_write(tmp_path: Path):
    path = tmp_path / "votes.sqlite"
    for delay in (0.3, 0.5, 0.8):
        kill_9_after(WRITER, str(path), after=delay)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        votes = VoteStore(path).votes()
        assert votes, "the writer recorded nothing before the kill"
        for v in votes:  # every stored vote is whole
            assert v["choice"] in CHOICES and v["left_reply"].endswith(" ")
            assert v["prompt"][0]["content"].startswith("learner text ")
    votes = VoteStore(path).votes()
    exported = export_dpo(votes, tmp_path / "dpo.jsonl")
    assert exported == sum(v["choice"] != "tie" for v in votes)  # ties make no pair
