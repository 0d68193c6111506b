"""Journal replicas on one Ray node (co-located for the test): majority acks, catch-up, loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import ray

import cluster
from cluster import Options
from tests.support import FAST, Coordinator, wait_for
from workflows.errors import JournalUnavailable
from workflows.testing import Echo, Tracked, read_calls

pytestmark = pytest.mark.ray


def ends(c: Coordinator) -> list[int]:
    infos = ray.get([h.info.remote() for h in c.actors()["log"]])
    return [i["next_seq"] for i in infos]


def test_replicas_need_nodes_unless_colocated(ray_session: str, tmp_path: Path) -> None:
    options = Options(storage=str(tmp_path / "j"), namespace="t-replicas-refused", replicas=3, **FAST)
    with pytest.raises(ValueError, match="colocated_replicas"):
        cluster.start(options)


def test_three_replicas_survive_one_loss_and_catch_up(coordinator: Callable[..., Coordinator],
                                                      tmp_path: Path) -> None:
    c = coordinator(replicas=3, colocated_replicas=True, replica_timeout_s=3.0, slots_per_actor=4)
    calls = tmp_path / "calls"
    calls.mkdir()
    ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(10)]))
    assert ray.get([c.sup.result.remote(w, 60) for w in ids]) == list(range(10))
    wait_for(lambda: len(set(ends(c))) == 1, what="followers to hold the leader's log")
    logs = c.actors()["log"]
    # A follower dies mid-run (and is restarted by Ray): appends go on with 2 of 3.
    ids = ray.get(c.sup.submit_many.remote([Tracked(str(calls), steps=3, sleep_s=0.1) for _ in range(10)]))
    ray.kill(logs[1], no_restart=False)
    results = ray.get([c.sup.result.remote(w, 60) for w in ids])
    assert [r for w, r in zip(ids, results, strict=True) if r != [f"{w}/{i}:{i}" for i in range(3)]] == []
    assert sorted(set(read_calls(str(calls)))) == sorted(f"{w}/{i}" for w in ids for i in range(3))
    # The restarted follower catches up from the leader.
    more = ray.get(c.sup.submit.remote(Echo("after")))
    ray.get(c.sup.result.remote(more, 60))
    wait_for(lambda: len(set(ends(c))) == 1, what="the restarted follower to catch up")
    # The leader dies: it recovers the longest tail among a majority and goes on.
    ray.kill(logs[0], no_restart=False)
    again = ray.get(c.sup.submit.remote(Echo("leader back")))
    assert ray.get(c.sup.result.remote(again, 60)) == "leader back"


def test_no_majority_refuses_appends(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(replicas=3, colocated_replicas=True, replica_timeout_s=1.0)
    ray.get(c.sup.result.remote(ray.get(c.sup.submit.remote(Echo(1))), 60))
    logs = c.actors()["log"]
    for follower in logs[1:]:
        ray.kill(follower, no_restart=True)
    with pytest.raises(JournalUnavailable, match="majority"):
        ray.get(c.sup.submit.remote(Echo(2)))
