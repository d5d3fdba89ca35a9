"""A short, bounded Locust run against a real local gateway, through ``python -m deploy.load``.

Locust runs in its own process (it monkey-patches the standard library with gevent), against a
uvicorn gateway in this one (tiny model, Spanish and Mandarin adapters), on 127.0.0.1 only.

The variants are the catalogue's tutors (adapters/catalogue.yaml), never a list kept here.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.variants import Catalogue
from common.paths import REPO
from common.settings import DEFAULT_CATALOGUE
from deploy.load import is_loopback, locust_command, seconds
from deploy.load_mix import DEFAULT_VARIANTS, VariantPicker, language, parse_variants


def catalogue_tutors() -> tuple[str, ...]:
    """The public tutor variants, in catalogue order (correctors are not offered to learners)."""
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    return tuple(v.id for v in catalogue.variants.values() if v.role == "tutor")


VARIANTS = catalogue_tutors()
RUN_TIME = "3s"  # every learner is spawned in its first second and thinks longer than all of it


def _stop_timeout() -> int:
    """Seconds deploy.load lets turns in flight finish once the run time is up."""
    cmd = locust_command("http://127.0.0.1:1", users=1, spawn_rate=1, run_time="1s", html=Path())
    return int(cmd[cmd.index("--stop-timeout") + 1])


STOP_TIMEOUT = _stop_timeout()


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
def gateway(lora_gateway: str) -> str:
    """The shared gateway with the Spanish and Mandarin adapters (tests/conftest.py)."""
    return lora_gateway


def test_default_mix_names_every_catalogue_tutor() -> None:
    """Catches a tutor added to (or renamed in) the catalogue but left out of the mix that
    ``make load`` sends when no ``--variants`` is given, or a mix naming a variant that is gone."""
    mix = parse_variants(DEFAULT_VARIANTS)
    assert len(VARIANTS) >= 2
    assert set(mix) == set(VARIANTS)
    assert all(weight > 0 for weight in mix.values())


def test_one_learner_per_variant_starts_on_every_variant() -> None:
    """Catches a picker whose start offsets no longer spread learners over the variants, which the
    Locust run below relies on: learner k starts k steps into the cycle, so with equal weights the
    first turns of len(VARIANTS) learners are every variant once. (The old run had 3 learners,
    each reaching only its first turn in 5 s on two cores: the first 3 variants, never the rest.)
    """
    weights = dict.fromkeys(VARIANTS, 1.0)
    firsts = [VariantPicker(weights, start=k).next() for k in range(len(VARIANTS))]
    assert sorted(firsts) == sorted(VARIANTS)


def _requests_by_variant(url: str) -> dict[tuple[str, str], float]:
    """The gateway's ``tutor_requests_total`` per (variant, status), from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.labels["variant"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tutor_requests_total"
    }


def test_locust_run_has_no_failures_and_hits_every_variant(gateway, tmp_path) -> None:
    """Catches a load run that misses a catalogue variant, fails a turn, or is not bounded.

    One learner per catalogue tutor, equal weights: learner k's first turn goes to the k-th
    variant. Thinking (60 s) outlasts the run (3 s), so each learner sends exactly one turn:
    every variant gets exactly one, counted by the locustfile's summary (client side) and by the
    gateway's ``tutor_requests_total`` (server side); Locust's own CSV can miss turns that end
    while the run stops, so it is not used. Before, 3 learners hit only the first 3 variants.
    """
    assert gateway.startswith("http://127.0.0.1:")  # this machine only
    out = tmp_path / "reports"
    users = len(VARIANTS)
    before = _requests_by_variant(gateway)
    cmd = [sys.executable, "-m", "deploy.load", "--host", gateway, "--no-start"]
    cmd += ["--users", str(users), "--spawn-rate", str(users), "--run-time", RUN_TIME]
    cmd += ["--max-tokens", "8", "--seed", "1", "--variants", ",".join(VARIANTS)]
    cmd += ["--out", str(out)]
    env = {**os.environ, "LOAD_THINK": "60,60"}  # one turn a learner; the run stops first
    started = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    wall = time.monotonic() - started
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

    # bounded: exactly one turn per learner, and the run ends within its time and stop timeout
    assert {v: int(row["turns"]) for v, row in rows.items()} == dict.fromkeys(VARIANTS, 1)
    assert int(total["turns"]) == users
    for variant, row in rows.items():
        assert 0 < float(row["ttft_p50_ms"]) <= float(row["turn_p50_ms"]), (variant, row)
        assert 1 <= int(row["completion_tokens"]) <= 8, (variant, row)  # --max-tokens 8
    assert wall < seconds(RUN_TIME) + STOP_TIMEOUT + 60, wall  # + Locust's start and reports

    # the gateway saw the same: one answered request per variant, none failed
    after = _requests_by_variant(gateway)
    sent = {
        (variant, status): after[variant, status] - before.get((variant, status), 0.0)
        for variant, status in after
        if variant in VARIANTS
    }
    assert {k: v for k, v in sent.items() if v} == {(v, "ok"): 1.0 for v in VARIANTS}
