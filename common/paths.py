"""Where the service keeps things: its home (models, registry, runs, eval) and the learner data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the folder holding the packages
# A source checkout (pyproject.toml beside the packages) keeps vLLM's venv and the learner data
# beside it. An installed wheel has neither: its defaults come from its home and its interpreter.
CHECKOUT: Path | None = REPO if (REPO / "pyproject.toml").is_file() else None
DEFAULT_HOME = Path("~/.cache/tutor").expanduser()


def tutor_home(explicit: Path | str | None = None) -> Path:
    """An explicit folder, TUTOR_HOME, or ``~/.cache/tutor``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("TUTOR_HOME")
    return Path(env).expanduser() if env else DEFAULT_HOME


def data_dir(explicit: Path | str | None = None) -> Path:
    """The shared learner data: an explicit path, TUTOR_DATA_DIR, ``<checkout>/../shared/data``
    in a source checkout, else ``<home>/data`` for an installed wheel."""
    if explicit:
        return Path(explicit).expanduser()
    if env := os.environ.get("TUTOR_DATA_DIR"):
        return Path(env).expanduser()
    if CHECKOUT is not None:
        return CHECKOUT.parent / "shared" / "data"
    return tutor_home() / "data"


def default_vllm_python() -> Path:
    """The interpreter a managed vLLM runs under, unless TUTOR_VLLM_PYTHON names one: the
    checkout's own venv (``make vllm``), or for an installed wheel this interpreter, where vLLM
    is installed beside the gateway (as on a GPU host: ``pip install vllm recast-tutor``)."""
    if CHECKOUT is not None:
        return CHECKOUT / ".venv-vllm" / "bin" / "python"
    return Path(sys.executable)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: object) -> bool:
    """True for a PostgreSQL URL; anything else names a SQLite file.

    Only the two URL schemes libpq itself accepts count, so a relative path can never be taken
    for a database by accident.
    """
    return isinstance(location, str) and location.strip().startswith(POSTGRES_SCHEMES)
