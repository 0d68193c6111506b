"""Mixed chaos (`tests.chaos.mixed`, run in a process of its own with a hard timeout): a
few hundred sagas across two deployments on a 3-node cluster with 3 journal replicas,
while seeded random kills hit a worker node, the SupervisorActor, CommandActors and a
journal replica. Nothing may be lost or done twice. The counts, the seed and the time
to resume after each kind of kill are printed (`pytest -s`).

``COORDINATOR_CHAOS_S=600`` kills for ten minutes instead of one;
``COORDINATOR_CHAOS_SEED=N`` replays the kills of a run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.chaos import run_driver
from tests.chaos.mixed import KINDS, WINDOW_S

WINDOW = max(WINDOW_S, float(os.environ.get("COORDINATOR_CHAOS_S", "0")))
HARD_TIMEOUT_S = WINDOW + 420
"""The driver's whole run: a wedged cluster fails the test instead of hanging it."""

pytestmark = [pytest.mark.ray, pytest.mark.timeout(HARD_TIMEOUT_S + 60)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc, lines = run_driver("mixed", tmp_path_factory.mktemp("mixed"), HARD_TIMEOUT_S)
    kills = [line for line in proc.stderr.splitlines() if line.startswith(("kill ", "mixed chaos"))]
    print("\n" + "\n".join(kills))
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{proc.stderr[-6000:]}"
    found: dict[str, Any] = lines[-1]
    summary = {k: v for k, v in found.items() if k != "kills"}
    print(f"mixed chaos: {json.dumps(summary)}")
    return found


def test_every_acknowledged_submit_ends_once_and_every_result_is_answered(report: dict[str, Any]) -> None:
    assert report["workflows"] >= 300 and report["deployments"] == 2
    assert report["lost"] == 0, report["lost_examples"]
    assert report["unanswered"] == 0
    assert report["completed"] == report["workflows"]
    assert report["duplicate_ends"] == 0


def test_no_step_has_two_outcomes_and_no_service_applied_a_key_twice(report: dict[str, Any]) -> None:
    assert report["duplicates"] == 0
    assert report["duplicate_outcomes"] == 0
    assert report["missing_outcomes"] == 0
    assert report["applied_twice"] == 0
    assert report["applied_without_outcome"] == 0  # the ledgers and the journal agree


def test_every_kind_of_kill_happened_mid_load(report: dict[str, Any]) -> None:
    assert set(report["kills_by_kind"]) == set(KINDS), report["kills_by_kind"]
    resumed = [k for k in report["kills"] if k["resume_s"] is not None]
    assert len(resumed) >= len(report["kills"]) // 2  # most kills found workflows mid-flight, and they went on
