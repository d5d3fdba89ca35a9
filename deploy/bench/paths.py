"""Where the benchmarks' files live: the repository, the reports folder, vLLM's interpreter.

It owns the fixed locations every benchmark shares (``REPORTS`` for the JSON reports and the
children's logs, ``VLLM_PYTHON`` for the separate vLLM venv, ``TUTOR_HOME`` for models) and the
scratch and log folders made under them. It is separate so that the process, server and report
modules all take their paths from one place without importing each other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common.paths import REPO, default_vllm_python, tutor_home

REPORTS = REPO / "reports" / "bench"
VLLM_PYTHON = default_vllm_python()
TUTOR_HOME = tutor_home()


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tutor-bench-{prefix}-"))


def logs_dir() -> Path:
    d = REPORTS / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d
