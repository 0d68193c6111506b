"""Authoring on a real Ray instance: parallel steps, a policy that pauses, resume_workflow."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import ray

from tests.support import Coordinator, wait_for
from workflows.testing import Stalls

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
