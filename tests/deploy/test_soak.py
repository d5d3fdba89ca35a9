"""The soak benchmark's short CI variant: real gateway process, mixed variants, promotions."""

from __future__ import annotations

import json
import subprocess
import sys

from common.paths import REPO


def test_quick_soak_serves_everything_through_promotions(tmp_path, tiny_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "soak.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] >= 4
    assert result["promotions"] >= 1
    assert "| requests served" in proc.stdout and "| p99 latency (ms)" in proc.stdout
