"""Crashes in the middle of authoring features, on a real Ray node: the coordinator is
stopped and started again on the same storage (or its supervisor killed) while a
workflow compensates a cancel, sleeps, has a signal journaled, runs a gather whose
steps finish out of order, was just forked, or waits for a child. Each test checks
the end state and how often each service call ran: a step journaled before the crash
is never called again; only one in flight at the crash may be called a second time."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from tests.support import Coordinator, wait_for
from workflows.errors import CommandFailed
from workflows.testing import HasChild, Phases, Undoes, read_calls

pytestmark = pytest.mark.ray


def state(c: Coordinator, wid: str) -> str:
    return str(ray.get(c.sup.status.remote(wid))["state"])


def test_a_cancel_whose_compensation_is_cut_by_a_restart_ends_cancelled(
        coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Undoes(str(tmp_path), steps=40, sleep_s=0.1, undo_sleep_s=0.4), "undo-1"))
    wait_for(lambda: len(read_calls(str(tmp_path))) >= 3, what="a few steps")
    assert ray.get(c.sup.cancel.remote(wid, "customer")) is True
    wait_for(lambda: any("/compensate/" in k for k in read_calls(str(tmp_path))), what="the compensation to start")
    c.restart()  # the coordinator goes down while an undo step runs
    with pytest.raises(CommandFailed, match="Cancelled"):
        ray.get(c.sup.result.remote(wid, 60))
    status = ray.get(c.sup.status.remote(wid))
    done = len(status["outcomes"])
    assert status["state"] == "cancelled" and 3 <= done < 40
    calls = Counter(read_calls(str(tmp_path)))
    assert {k: n for k, n in calls.items() if "/compensate/" not in k} == {f"{wid}/{i}": 1 for i in range(done)}
    undos = {k: n for k, n in calls.items() if "/compensate/" in k}
    assert set(undos) == {f"{wid}/compensate/{i}" for i in range(done)}  # every outcome undone
    assert sum(n - 1 for n in undos.values()) <= 1  # only the undo in flight at the crash ran twice
    journaled = [e for i in range(done) for e in ray.get(c.sup.outcomes.remote(f"undo-svc{i}"))]
    assert sorted(e["step"] for e in journaled) == list(range(done))  # one compensation per index
    assert ray.get(c.sup.stats.remote())["in_flight"] == 0


def test_a_sleep_keeps_its_due_time_across_a_restart(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Phases(str(tmp_path), steps=1, sleep_s=4.0), "nap-1"))
    status = wait_for(lambda: (s := ray.get(c.sup.status.remote(wid)))["state"] == "sleeping" and s,
                      what="the workflow to sleep")
    wake_at = status["wake_at"]
    c.restart()
    status = ray.get(c.sup.status.remote(wid))
    assert status["state"] == "sleeping" and status["wake_at"] == wake_at
    assert ray.get(c.sup.result.remote(wid, 60)) == {"steps": [f"{wid}/0"], "signal": None, "last": f"{wid}/2"}
    assert time.time() >= wake_at
    assert Counter(read_calls(str(tmp_path))) == Counter([f"{wid}/0", f"done:{wid}/0", f"{wid}/2", f"done:{wid}/2"])


def test_a_signal_sent_just_before_the_supervisor_dies_is_delivered(coordinator: Callable[..., Coordinator],
                                                                     tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Phases(str(tmp_path), steps=1, wait=True), "sig-1"))
    wait_for(lambda: state(c, wid) == "waiting", what="the workflow to wait")
    assert ray.get(c.sup.signal.remote(wid, "go", {"n": 1})) is True
    ray.kill(c.sup, no_restart=False)  # Ray restarts it; it rebuilds from the journal
    assert ray.get(c.sup.result.remote(wid, 60)) == {"steps": [f"{wid}/0"], "signal": {"n": 1}, "last": f"{wid}/3"}
    assert ray.get(c.sup.signal.remote(wid, "go", {"n": 2})) is False
    assert Counter(read_calls(str(tmp_path))) == Counter([f"{wid}/0", f"done:{wid}/0", f"{wid}/3", f"done:{wid}/3"])


def test_a_signal_journaled_before_the_coordinator_went_down(coordinator: Callable[..., Coordinator],
                                                             tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Phases(str(tmp_path), steps=1, sleep_s=3.0, wait=True), "sig-2"))
    wait_for(lambda: state(c, wid) == "sleeping", what="the workflow to sleep")
    assert ray.get(c.sup.signal.remote(wid, "go", "early")) is True  # before it waits for it
    c.restart()
    assert ray.get(c.sup.result.remote(wid, 60))["signal"] == "early"
    assert Counter(read_calls(str(tmp_path)))[f"{wid}/0"] == 1


def test_a_gather_cut_while_its_steps_finish_out_of_order(coordinator: Callable[..., Coordinator],
                                                          tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Phases(str(tmp_path), steps=3, together=True, step_s=2.0), "gather-1"))
    # Step 2 finishes first (2 s); its outcome waits for steps 0 and 1 (6 s and 4 s).
    wait_for(lambda: f"done:{wid}/2" in read_calls(str(tmp_path)), what="the last step to finish first")
    c.restart()
    result = ray.get(c.sup.result.remote(wid, 60))
    assert result == {"steps": [f"{wid}/{i}" for i in range(3)], "signal": None, "last": f"{wid}/3"}
    outcomes = ray.get(c.sup.status.remote(wid))["outcomes"]
    assert [o[:3] for o in outcomes] == [[i, f"svc{i}", f"{wid}/{i}"] for i in range(3)] + [[3, "last", f"{wid}/3"]]
    starts = Counter(k for k in read_calls(str(tmp_path)) if not k.startswith("done:"))
    assert starts == {f"{wid}/0": 2, f"{wid}/1": 2, f"{wid}/2": 2, f"{wid}/3": 1}  # none was journaled: all ran again


def test_a_gather_that_finished_out_of_order_replays_after_a_restart(coordinator: Callable[..., Coordinator],
                                                                     tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Phases(str(tmp_path), steps=3, together=True, step_s=0.2, wait=True), "g-2"))
    wait_for(lambda: state(c, wid) == "waiting", what="the gather to finish")
    ends = [k for k in read_calls(str(tmp_path)) if k.startswith("done:")]
    assert ends == [f"done:{wid}/2", f"done:{wid}/1", f"done:{wid}/0"]  # last-first
    c.restart()
    assert ray.get(c.sup.signal.remote(wid, "go", 1)) is True
    result = ray.get(c.sup.result.remote(wid, 60))
    assert result["steps"] == [f"{wid}/{i}" for i in range(3)]  # replayed by index, not by finish order
    starts = Counter(k for k in read_calls(str(tmp_path)) if not k.startswith("done:"))
    assert starts == {f"{wid}/0": 1, f"{wid}/1": 1, f"{wid}/2": 1, f"{wid}/5": 1}


def test_a_fork_across_a_restart(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(Phases(str(tmp_path), steps=2, wait=True), "orig"))
    wait_for(lambda: state(c, wid) == "waiting", what="the original to wait")
    ray.get(c.sup.signal.remote(wid, "go", "orig"))
    ray.get(c.sup.result.remote(wid, 60))
    assert ray.get(c.sup.fork.remote(wid, 2, "forked")) == "forked"  # copies steps 0 and 1, waits again
    c.restart()
    assert ray.get(c.sup.fork.remote(wid, 2, "forked")) == "forked"  # the repeat, after the restart
    wait_for(lambda: state(c, "forked") == "waiting", what="the fork to wait")
    ray.get(c.sup.signal.remote("forked", "go", "fork"))
    result = ray.get(c.sup.result.remote("forked", 60))
    assert result == {"steps": [f"{wid}/0", f"{wid}/1"], "signal": "fork", "last": "forked/4"}
    starts = Counter(k for k in read_calls(str(tmp_path)) if not k.startswith("done:"))
    assert starts == {f"{wid}/0": 1, f"{wid}/1": 1, f"{wid}/4": 1, "forked/4": 1}
    assert sorted(w["id"] for w in ray.get(c.sup.list.remote())) == ["forked", "orig"]


def test_a_child_across_a_restart(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(HasChild(str(tmp_path)), "parent"))
    child = "parent/child/1"
    wait_for(lambda: state(c, wid) == "waiting", what="the parent to wait")
    wait_for(lambda: state(c, child) == "waiting", what="the child to wait")
    c.restart()  # the parent runs again, asks for its child, finds it running and waits again
    wait_for(lambda: state(c, wid) == "waiting" and ray.get(c.sup.status.remote(wid))["attempts"] == 2,
             what="the parent to wait again")
    assert state(c, child) == "waiting"
    ray.get(c.sup.signal.remote(child, "go", "after-restart"))
    got = ray.get(c.sup.result.remote(wid, 60))
    assert got["child"]["signal"] == "after-restart"
    assert sorted(w["id"] for w in ray.get(c.sup.list.remote())) == sorted([wid, child])  # no second child
    starts = Counter(k for k in read_calls(str(tmp_path)) if not k.startswith("done:"))
    assert starts == {f"{wid}/0": 1, f"{child}/0": 1, f"{child}/3": 1, f"{wid}/3": 1}
    assert ray.get(c.sup.stats.remote())["in_flight"] == 0


def test_a_child_that_ends_while_the_supervisor_is_down(coordinator: Callable[..., Coordinator],
                                                        tmp_path: Path) -> None:
    c = coordinator()
    wid = ray.get(c.sup.submit.remote(HasChild(str(tmp_path)), "parent-k"))
    child = "parent-k/child/1"
    wait_for(lambda: state(c, wid) == "waiting" and state(c, child) == "waiting", what="both to wait")
    assert ray.get(c.sup.signal.remote(child, "go", "k")) is True
    ray.kill(c.sup, no_restart=False)  # the child's end may reach the journal, not yet its parent
    got = ray.get(c.sup.result.remote(wid, 60))
    assert got["child"] == {"steps": [f"{child}/0"], "signal": "k", "last": f"{child}/3"}
    assert sorted(w["id"] for w in ray.get(c.sup.list.remote())) == sorted([wid, child])
    starts = Counter(k for k in read_calls(str(tmp_path)) if not k.startswith("done:"))
    assert starts[f"{wid}/0"] == 1 and starts[f"{child}/0"] == 1 and starts[f"{wid}/3"] == 1
    assert starts[f"{child}/3"] <= 2  # the child's last step may have been in flight at the kill
