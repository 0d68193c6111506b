"""Deployments on a real 3-node Ray cluster (`tests.chaos.deploys`, run once in a process
of its own with a hard timeout): a deployment's actors killed mid-step, a retry moved
off a node its service is unreachable from, and a deployment's parked workflows
finishing on their own code after the whole cluster restarted. Each counts what was
lost and asserts zero; the resume times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
TIMEOUT_S = 420

pytestmark = [pytest.mark.ray, pytest.mark.timeout(TIMEOUT_S + 60)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "tests.chaos.deploys", str(tmp_path_factory.mktemp("deploys"))],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=ROOT)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    found = {line["scenario"]: line for line in lines}
    for line in lines:
        print(f"\n{line['scenario']}: resume {line['resume_s']} s; {line}")
    found["_exit"] = {"code": proc.returncode, "stderr": proc.stderr[-4000:]}
    return found


def _scenario(report: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in report, f"scenario {name} did not report (exit {report['_exit']['code']}):\n" \
                           f"{report['_exit']['stderr']}"
    counts: dict[str, Any] = report[name]
    assert counts["lost"] == 0, counts["lost_examples"]
    return counts


def test_a_deployments_actors_killed_mid_step_finish_its_workflows_on_recreated_actors(report: dict[str, Any]) -> None:
    counts = _scenario(report, "actor_killed")
    assert counts["killed_actors"] >= 3
    assert counts["on_deployment"] == counts["workflows"] == 12  # the same deployment, on its own code
    assert counts["steps_on_new_actors"] >= 1 and counts["new_actor_pids"] >= 1  # the recreated actors ran them
    assert counts["missing_calls"] == 0
    assert counts["over_repeated"] == 0, counts["over_detail"]  # no step again but the one in flight
    assert counts["types_listed"] == ["shipped:Steps"]


def test_a_parked_commands_retry_runs_on_another_node(report: dict[str, Any]) -> None:
    counts = _scenario(report, "retry_node")
    assert counts["completed"] == counts["workflows"]  # each succeeded on a node the service answers
    assert counts["first_on_blocked"] >= 1
    assert counts["retried_elsewhere"] == counts["first_on_blocked"], counts["attempt_nodes"]
    assert counts["attempts_on_blocked_after_first"] == 0
    assert counts["off_deployment"] == 0


def test_a_deployments_parked_workflows_finish_on_its_code_after_a_whole_cluster_restart(
        report: dict[str, Any]) -> None:
    counts = _scenario(report, "restart")
    assert counts["workflows"] == 6
    assert not counts["package_in_new_gcs_before_start"]  # the new cluster did not have the code...
    assert counts["package_in_new_gcs_after"]  # ...the coordinator uploaded it from the journal's storage
    assert counts["deployment_listed"] and counts["types_listed"] == ["shipped:Gated"]
    assert counts["first_steps_repeated"] == 0
    assert counts["resume_s"] is not None


def test_the_run_ended_cleanly(report: dict[str, Any]) -> None:
    assert report["_exit"]["code"] == 0, report["_exit"]["stderr"]
