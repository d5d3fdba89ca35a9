"""The `tutor` command: `serve` as a real process configured by TUTOR_* variables."""

from __future__ import annotations

import os
import signal
import subprocess

import openai

from tests.support import TUTOR, free_port, serve_process


def test_models_list_reports_prepared_presets(tutor_home, tiny_path):
    out = subprocess.run(
        [TUTOR, "models", "list"],
        env={**os.environ, "TUTOR_HOME": str(tutor_home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.startswith("tiny-qwen3") and "ready" in line for line in out.splitlines())


def test_serve_takes_settings_from_env_and_flags(tutor_home, tiny_path, tmp_path):
    port = free_port()
    env = {"TUTOR_HOME": str(tutor_home), "TUTOR_MODEL": "tiny-qwen3", "TUTOR_UI": "false"}
    args = ("--engine", "transformers", "--host", "127.0.0.1")
    with serve_process(env, port, tmp_path / "serve.log", *args) as (proc, _):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="tutor-zh-l2",
            messages=[{"role": "user", "content": "我昨天去商店了买东西"}],
            max_tokens=4,
        )
        assert reply.usage.completion_tokens >= 1
        assert "tiny-qwen3" in {m.id for m in client.models.list().data}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_serve_refuses_several_workers():
    """Refused with a reason, never silently run as one (or as several that disagree)."""
    import subprocess

    from tests.support import TUTOR

    done = subprocess.run(
        [TUTOR, "serve", "--workers", "4"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--workers 4: tutor serve runs one process" in done.stderr
    assert "rate limits" in done.stderr and "load balancer" in done.stderr


def test_version_is_the_installed_distribution_s() -> None:
    import importlib.metadata
    import tomllib

    from common.settings import REPO

    result = subprocess.run([TUTOR, "--version"], capture_output=True, text=True, timeout=60)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tutor {importlib.metadata.version(project['name'])}"
    assert result.stdout.strip() == f"tutor {project['version']}"
