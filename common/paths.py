"""Where the service keeps things: its home (models, registry, runs, eval) and the learner data."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_HOME = Path("~/.cache/tutor").expanduser()
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"


def tutor_home(explicit: Path | str | None = None) -> Path:
    """An explicit folder, TUTOR_HOME, or ``~/.cache/tutor``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("TUTOR_HOME")
    return Path(env).expanduser() if env else DEFAULT_HOME


def data_dir(explicit: Path | str | None = None) -> Path:
    """The shared learner data: an explicit path, TUTOR_DATA_DIR, or ``<repo>/../shared/data``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("TUTOR_DATA_DIR")
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: object) -> bool:
    """True for a PostgreSQL URL; anything else names a SQLite file.

    Only the two URL schemes libpq itself accepts count, so a relative path can never be taken
    for a database by accident.
    """
    return isinstance(location, str) and location.strip().startswith(POSTGRES_SCHEMES)
