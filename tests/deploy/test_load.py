"""A short, bounded Locust run against a real local gateway, through ``python -m deploy.load``.

Locust runs in its own process (it monkey-patches the standard library with gevent), against a
uvicorn gateway in this one (tiny model, Spanish and Mandarin adapters), on 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from common.paths import REPO
from common.settings import Settings
from deploy.load import is_loopback, seconds
from deploy.load_mix import VariantPicker, language, parse_variants
from server.app import create_app
from tests.support import running_server

VARIANTS = ("tutor", "tutor-es-heritage", "tutor-es-l2", "tutor-zh-heritage", "tutor-zh-l2")


def test_picker_honours_weights_and_switches_every_turn() -> None:
    picker = VariantPicker({"a": 3, "b": 2, "c": 1})
    turns = [picker.next() for _ in range(12)]
    assert {v: turns.count(v) for v in "abc"} == {"a": 6, "b": 4, "c": 2}
    assert all(x != y or x == "a" for x, y in zip(turns, turns[1:], strict=False))
    assert VariantPicker({"a": 1, "b": 1}, start=1).next() != VariantPicker({"a": 1, "b": 1}).next()


def test_helpers() -> None:
    assert parse_variants("tutor=3, tutor-es-l2") == {"tutor": 3.0, "tutor-es-l2": 1.0}
    assert [language(v) for v in ("tutor", "tutor-zh-heritage", "smollm2-135m")] == [
        "en",
        "zh",
        "en",
    ]
    assert seconds("90") == 90 and seconds("1m30s") == 90
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost")
    assert not is_loopback("http://10.0.0.5:8000") and not is_loopback("http://example.org")


def test_refuses_other_hosts_and_unbounded_runs(tmp_path) -> None:
    for args in (
        ["--host", "http://192.168.1.10:8000"],
        ["--users", "500"],
        ["--run-time", "2h"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "deploy.load", "--no-start", "--out", str(tmp_path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        assert "error:" in r.stderr


@pytest.fixture(scope="module")
def gateway(tutor_home, tiny_path, tiny_adapters):
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        adapters={"tutor-es-l2": str(tiny_adapters["es"]), "tutor-zh-l2": str(tiny_adapters["zh"])},
    )
    with running_server(create_app(settings)) as url:
        yield url


def test_locust_run_has_no_failures_and_hits_every_variant(gateway, tmp_path) -> None:
    out = tmp_path / "reports"
    cmd = [sys.executable, "-m", "deploy.load", "--host", gateway, "--no-start"]
    cmd += ["--users", "3", "--spawn-rate", "3", "--run-time", "5s", "--max-tokens", "8"]
    cmd += ["--seed", "1", "--variants", ",".join(VARIANTS), "--out", str(out)]
    env = {**os.environ, "LOAD_THINK": "0.1,0.3"}  # a short run still reaches every variant
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    with (out / "load_variants.csv").open(newline="") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    total = rows.pop("all")  # the row over every variant
    assert set(rows) == set(VARIANTS)
    assert int(total["turns"]) == sum(int(r["turns"]) for r in rows.values())
    assert int(total["completion_tokens"]) >= int(total["turns"])
    for variant, row in rows.items():
        assert int(row["turns"]) >= 1 and int(row["failures"]) == 0, (variant, row)
        assert float(row["ttft_p50_ms"]) > 0, (variant, row)
    with (out / "load_failures.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == []
    assert (out / "load.html").stat().st_size > 0
    table = r.stdout[r.stdout.index("variant ") :]
    assert all(v in table for v in VARIANTS)
