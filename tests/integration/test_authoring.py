"""Authoring on a real Ray instance: parallel steps, a policy that pauses, resume_workflow, cancel, signals,
fork (also from the CLI) and child workflows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from tests.support import Coordinator, wait_for
from workflows.errors import CommandFailed, InvalidCommand, UnknownWorkflow
from workflows.testing import AwaitsSignal, HasChild, Stalls, Tracked, read_calls

pytestmark = pytest.mark.ray


def test_gather_then_pause_and_resume_through_the_supervisor(coordinator: Callable[..., Coordinator]) -> None:
    sup = coordinator().sup
    wid = ray.get(sup.submit.remote(Stalls(steps=3), "stalls-1"))
    status = wait_for(lambda: (s := ray.get(sup.status.remote(wid)))["state"] == "paused" and s,
                      what="the workflow to pause")
    assert "max_attempts=1" in status["reason"] and "no answer" in status["reason"]
    # The steps finished last-first; each kept the index, and key, of its call.
    assert [o[:2] for o in status["outcomes"]] == [[0, "svc0"], [1, "svc1"], [2, "svc2"]]
    assert [o[2] for o in status["outcomes"]] == [f"{wid}/{i}" for i in range(3)]
    assert ray.get(sup.stats.remote())["counts"]["paused"] == 1
    assert ray.get(sup.resume_workflow.remote(wid)) is True
    assert ray.get(sup.result.remote(wid, 30)) == [f"{wid}/{i}" for i in range(3)]
    assert ray.get(sup.resume_workflow.remote(wid)) is False
    assert ray.get(sup.status.remote(wid))["attempts"] == 2


def test_cancel_a_running_workflow_through_the_supervisor(coordinator: Callable[..., Coordinator],
                                                          tmp_path: Path) -> None:
    sup = coordinator().sup
    wid = ray.get(sup.submit.remote(Tracked(str(tmp_path), steps=50, sleep_s=0.2), "cancel-1"))
    wait_for(lambda: read_calls(str(tmp_path)), what="the first step")
    assert ray.get(sup.cancel.remote(wid, "no longer needed")) is True
    with pytest.raises(CommandFailed, match="Cancelled") as failed:
        ray.get(sup.result.remote(wid, 30))
    assert "no longer needed" in failed.value.message
    status = ray.get(sup.status.remote(wid))
    assert status["state"] == "cancelled" and len(status["outcomes"]) < 50
    assert len(read_calls(str(tmp_path))) == len(status["outcomes"])  # no step called after the boundary
    assert ray.get(sup.cancel.remote(wid)) is False and ray.get(sup.terminate.remote(wid)) is False
    assert ray.get(sup.stats.remote())["in_flight"] == 0


def test_a_signal_through_the_supervisor_wakes_a_waiting_workflow(coordinator: Callable[..., Coordinator]) -> None:
    sup = coordinator().sup
    wid = ray.get(sup.submit.remote(AwaitsSignal(), "signal-1"))
    status = wait_for(lambda: (s := ray.get(sup.status.remote(wid)))["state"] == "waiting" and s,
                      what="the workflow to wait for its signal")
    assert status["waiting_for"] == "go"
    assert ray.get(sup.get_event.remote(wid, "phase")) == "waiting"
    assert ray.get(sup.signal.remote(wid, "go", {"ok": True})) is True
    assert ray.get(sup.signal.remote(wid, "go", {"ok": False})) is False
    assert ray.get(sup.result.remote(wid, 30)) == {"ok": True}
    assert ray.get(sup.get_event.remote(wid, "phase")) == "signalled"
    assert ray.get(sup.stats.remote())["in_flight"] == 0


def test_fork_through_the_supervisor_and_the_cli(ray_session: str, coordinator: Callable[..., Coordinator],
                                                 tmp_path: Path) -> None:
    from tests.integration.test_cli import cli

    c = coordinator()
    sup = c.sup
    wid = ray.get(sup.submit.remote(Tracked(str(tmp_path), steps=3), "orig-1"))
    assert ray.get(sup.result.remote(wid, 30)) == [f"{wid}/{i}:{i}" for i in range(3)]
    assert ray.get(sup.fork.remote(wid, 2, "fork-1")) == "fork-1"
    assert ray.get(sup.result.remote("fork-1", 30)) == [f"{wid}/0:0", f"{wid}/1:1", "fork-1/2:2"]
    assert ray.get(sup.fork.remote(wid, 2, "fork-1")) == "fork-1"  # a repeat: the same id, nothing run
    with pytest.raises(InvalidCommand, match="past them"):
        ray.get(sup.fork.remote(wid, 4, "fork-2"))
    with pytest.raises(UnknownWorkflow):
        ray.get(sup.fork.remote("nobody", 0, "fork-3"))
    proc = cli(ray_session, c.options.namespace, "fork", wid, "--from-step", "1", "--new-id", "fork-cli", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == "fork-cli"
    assert ray.get(sup.result.remote("fork-cli", 30)) == [f"{wid}/0:0", "fork-cli/1:1", "fork-cli/2:2"]
    proc = cli(ray_session, c.options.namespace, "fork", wid, "--from-step", "9", "--new-id", "fork-bad")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    calls = read_calls(str(tmp_path))
    assert sorted(calls) == sorted([f"{wid}/0", f"{wid}/1", f"{wid}/2", "fork-1/2", "fork-cli/1", "fork-cli/2"])


def test_a_child_through_the_supervisor(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    sup = coordinator().sup
    wid = ray.get(sup.submit.remote(HasChild(str(tmp_path)), "parent-1"))
    child = "parent-1/child/1"
    status = wait_for(lambda: (s := ray.get(sup.status.remote(wid)))["state"] == "waiting" and s,
                      what="the parent to wait for its child")
    assert status["waiting_for"] == f"coordinator.child:{child}"
    wait_for(lambda: ray.get(sup.status.remote(child))["state"] == "waiting", what="the child to wait")
    assert ray.get(sup.signal.remote(child, "go", "from-test")) is True
    got = ray.get(sup.result.remote(wid, 30))
    assert got == {"child": {"steps": [f"{child}/0"], "signal": "from-test", "last": f"{child}/3"}}
    assert sorted(w["id"] for w in ray.get(sup.list.remote())) == sorted([wid, child])
    assert sorted(read_calls(str(tmp_path))) == sorted(
        [f"{wid}/0", f"{child}/0", f"done:{child}/0", f"{child}/3", f"done:{child}/3", f"{wid}/3"])
    assert ray.get(sup.stats.remote())["in_flight"] == 0
