"""Replica loss on a real 3-node Ray cluster (`ray.cluster_utils.Cluster`), in its own process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import run_driver

pytestmark = pytest.mark.ray


def test_a_replica_node_dies_mid_run_and_nothing_is_lost(tmp_path: Path) -> None:
    proc, lines = run_driver("multinode", tmp_path, 600)
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    counts = lines[-1]
    print(f"\nreplica node killed: resume {counts['resume_s']} s; {counts}")
    assert counts["workflows"] == 40
    assert counts["lost"] == 0 and counts["missing_calls"] == 0 and counts["over_repeated"] == 0
    assert counts["caught_up"]
    assert counts["resume_s"] is not None
