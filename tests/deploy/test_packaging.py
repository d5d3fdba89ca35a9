"""The distribution a user installs: its name, its extras, its locks, and a real gateway-only
install in a fresh venv (torch-free, defaults that do not lean on a source checkout, serving).

What it catches: a lock that no longer satisfies pyproject.toml (or that this environment was
not installed from), the torch stack creeping into the gateway's own dependencies or the slim
lock, a module the `tutor` command imports at start-up that a gateway-only install lacks, and
defaults (vLLM's interpreter, the learner data, the catalogue, the shipped adapters) that only
exist in a checkout.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import openai
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from common.net import free_port
from common.paths import REPO
from tests.support import stop_process

LOCKS = REPO / "requirements"
DIST = "recast-tutor"
TORCH_STACK = {"torch", "transformers", "peft", "safetensors", "gguf"}
ENV = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _lock(name: str) -> dict[str, str]:
    """name -> pinned version, from requirements/<name>.lock."""
    pins = {}
    for line in (LOCKS / f"{name}.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _lock_extras() -> dict[str, list[str]]:
    """Each lock's extras, as the Makefile's `make lock` passes them."""
    text = (REPO / "Makefile").read_text()
    found = dict(re.findall(r"^LOCK_EXTRAS_(\w+) := (.*)$", text, flags=re.M))
    return {lock: extras.split() for lock, extras in found.items()}


def _requirements(extras: list[str]) -> list[Requirement]:
    """The distribution's requirements with these extras, its own extras expanded."""
    project = _project()
    optional = project["optional-dependencies"]
    out = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == DIST:
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def test_the_distribution_is_not_named_after_an_existing_pypi_project() -> None:
    """`tutor` on PyPI is Open edX's (with its own `tutor` command); ours is recast-tutor, and
    the command keeps its name."""
    project = _project()
    assert project["name"] == DIST
    assert project["scripts"] == {"tutor": "cli.main:app"}
    assert importlib.metadata.version(DIST) == project["version"]


def test_the_gateway_needs_no_torch() -> None:
    """`pip install .` is the gateway alone: the torch stack lives in the `local` extra."""
    core = {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}
    assert not core & TORCH_STACK
    local = {
        canonicalize_name(Requirement(r).name) for r in _project()["optional-dependencies"]["local"]
    }
    assert local >= TORCH_STACK


@pytest.mark.parametrize("lock", ["dev", "gateway", "full"])
def test_each_lock_pins_what_pyproject_asks_for(lock: str) -> None:
    """Every requirement of the lock's extras is pinned there, at a version it allows."""
    pins = _lock(lock)
    extras = _lock_extras()[lock]
    for req in _requirements(extras):
        if req.marker is not None and not req.marker.evaluate({**ENV, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock}.lock lacks {req}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock}.lock pins {name}=={pins[name]}, pyproject.toml asks {req}"
        )


def test_the_slim_lock_is_torch_free_and_the_full_lock_has_the_cpu_torch() -> None:
    assert not set(_lock("gateway")) & TORCH_STACK
    assert _lock("full")["torch"].endswith("+cpu") and _lock("dev")["torch"].endswith("+cpu")


def test_this_environment_is_the_dev_lock() -> None:
    """`make install` installs requirements/dev.lock as it is: the tests run on those pins."""
    wrong = {}
    for name, version in _lock("dev").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}


def test_the_makefile_and_the_dockerfile_install_from_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"--no-deps .*-r requirements/dev\.lock", makefile)
    assert re.search(r"^test: .*\block-check\b", makefile, flags=re.M)  # CI: the locks are current
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(r"pip install --no-deps .*-r requirements/full\.lock", dockerfile)
    assert re.search(r"pip install --no-deps -r requirements/gateway\.lock", dockerfile)


# -- a real install ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel installed as `pip install <wheel>` would, its
    dependencies held to gateway.lock's pins: the gateway alone, no extras."""
    tmp = tmp_path_factory.mktemp("slim")
    src = tmp / "src"
    src.mkdir()
    keep = ("pyproject.toml", "README.md", "common", "adapters", "server", "train", "eval", "ui")
    for name in (*keep, "deploy", "cli"):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    run = {"check": True, "capture_output": True, "text": True, "timeout": 600}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp / "dist"), str(src)],
        **run,
    )
    (wheel,) = (tmp / "dist").glob("recast_tutor-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-c", str(LOCKS / "gateway.lock"), str(wheel)], **run)
    return venv


def _in(venv: Path, code: str, home: Path) -> dict:
    """Run ``code`` in the venv from outside any checkout; it prints one JSON object."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUTOR_")}
    env |= {"TUTOR_HOME": str(home), "PYTHONPATH": ""}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_a_gateway_only_install_has_no_torch_stack(slim_venv: Path, tmp_path: Path) -> None:
    found = _in(
        slim_venv,
        "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not "
        "None for m in ('torch', 'transformers', 'peft', 'gguf', 'safetensors', 'fastapi')}))",
        tmp_path,
    )
    assert found == {m: False for m in TORCH_STACK} | {"fastapi": True}
    version = subprocess.run(
        [str(slim_venv / "bin" / "tutor"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"tutor {_project()['version']}"


def test_an_installed_wheel_finds_its_defaults_without_a_checkout(
    slim_venv: Path, tmp_path: Path
) -> None:
    """vLLM's interpreter is this one (vLLM beside the gateway), the learner data is under the
    home, and the catalogue and the six shipped adapters come inside the wheel."""
    code = """
import json, sys
from pathlib import Path
from common.paths import CHECKOUT, data_dir
from common.settings import Settings
s = Settings()
weights = (s.catalogue.parent / "shipped").glob("*/adapter_model.safetensors")
shipped = sorted(p.parent.name for p in weights)
print(json.dumps({"checkout": CHECKOUT is None, "python": str(s.vllm_python),
    "exe": sys.executable, "data": str(data_dir()), "catalogue": s.catalogue.is_file(),
    "site": "site-packages" in str(s.catalogue), "shipped": shipped}))
"""
    got = _in(slim_venv, code, tmp_path)
    assert got["checkout"] and got["catalogue"] and got["site"]
    assert got["python"] == got["exe"]
    assert got["data"] == str(tmp_path / "data")
    assert got["shipped"] == sorted(p.name for p in (REPO / "adapters" / "shipped").iterdir())


def test_a_gateway_only_install_serves_a_chat_over_an_openai_upstream(
    slim_venv: Path, tmp_path: Path
) -> None:
    """`tutor serve` from the slim install, in front of an OpenAI-compatible upstream (the
    benchmarks' fake model: a stand-in for Ollama or a remote vLLM), answers the openai client."""
    up, port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "deploy.bench.fake_upstream", "--port", str(up), "--tokens", "5"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUTOR_")}
    env |= {
        "TUTOR_HOME": str(tmp_path),
        "PYTHONPATH": "",
        "TUTOR_UPSTREAM_URL": f"http://127.0.0.1:{up}/v1",
    }
    gateway = subprocess.Popen(
        [str(slim_venv / "bin" / "tutor"), "serve", "--engine", "openai", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "gateway.log").open("w"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
            subprocess.run(["sleep", "0.1"], check=True)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none")
        reply = client.chat.completions.create(
            model="tutor", messages=[{"role": "user", "content": "Yesterday I go to the store."}]
        )
        direct = httpx.post(
            f"http://127.0.0.1:{up}/v1/chat/completions",
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        ).json()["choices"][0]
        assert reply.model == "tutor"
        assert reply.choices[0].message.content == direct["message"]["content"] != ""
        assert reply.choices[0].finish_reason == direct["finish_reason"]
    finally:
        for proc in (gateway, upstream):
            stop_process(proc, timeout=30)
