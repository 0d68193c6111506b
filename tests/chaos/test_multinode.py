"""Replica loss on a real 3-node Ray cluster (`ray.cluster_utils.Cluster`), in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def test_a_replica_node_dies_mid_run_and_nothing_is_lost(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "tests.chaos.multinode", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nreplica node killed: resume {counts['resume_s']} s; {counts}")
    assert counts["workflows"] == 40
    assert counts["lost"] == 0 and counts["missing_calls"] == 0 and counts["over_repeated"] == 0
    assert counts["caught_up"]
    assert counts["resume_s"] is not None
