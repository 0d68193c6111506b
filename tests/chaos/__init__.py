"""Chaos tests: each driver runs a real multi-node Ray cluster in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]


def run_driver(module: str, workdir: Path, timeout_s: float) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """Run ``python -m tests.chaos.<module> <workdir>`` (Ray's auth and usage stats off) with
    a hard timeout; the finished process and the JSON lines it printed."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", f"tests.chaos.{module}", str(workdir)], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=ROOT)
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
