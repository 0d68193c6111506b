"""The public API on a real Ray instance: SPEC §3 and §4 through actor calls."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

import cluster
from cluster import Options
from tests.support import FAST, Coordinator, wait_for
from workflows.errors import CommandFailed, InvalidCommand, Suspended, UnknownWorkflow
from workflows.testing import Echo, Fails, Flaky

pytestmark = pytest.mark.ray


def test_submit_result_status_list_stats(coordinator: Callable[..., Coordinator]) -> None:
    sup = coordinator().sup
    wid = ray.get(sup.submit.remote(Echo({"a": 1})))
    assert ray.get(sup.result.remote(wid, 30)) == {"a": 1}
    status = ray.get(sup.status.remote(wid))
    assert status["state"] == "completed" and status["attempts"] == 1
    assert [o[1] for o in status["outcomes"]] == ["echo", "echo"]
    ids = ray.get(sup.submit_many.remote([Echo(i) for i in range(20)]))
    assert ray.get([sup.result.remote(i, 30) for i in ids]) == list(range(20))
    assert len(ray.get(sup.list.remote("completed", 1000))) == 21
    stats = ray.get(sup.stats.remote())
    assert stats["mode"] == "normal" and stats["counts"]["completed"] == 21 and stats["in_flight"] == 0
    outcomes = ray.get(sup.outcomes.remote("echo", 0, 1000))
    assert len(outcomes) == 42 and [o["seq"] for o in outcomes] == sorted(o["seq"] for o in outcomes)
    later = ray.get(sup.outcomes.remote("echo", outcomes[10]["seq"] + 1, 5))
    assert later == outcomes[11:16]


def test_errors_arrive_with_their_types(coordinator: Callable[..., Coordinator]) -> None:
    sup = coordinator().sup
    with pytest.raises(InvalidCommand, match="msgpack"):
        ray.get(sup.submit.remote(Echo(object())))
    with pytest.raises(UnknownWorkflow):
        ray.get(sup.result.remote("no-such-id"))
    ray.get(sup.submit.remote(Echo(1), "fixed"))
    assert ray.get(sup.submit.remote(Echo(1), "fixed")) == "fixed"
    with pytest.raises(InvalidCommand, match="another command"):
        ray.get(sup.submit.remote(Echo(2), "fixed"))
    wid = ray.get(sup.submit.remote(Fails(steps=2)))
    with pytest.raises(CommandFailed) as info:
        ray.get(sup.result.remote(wid, 30))
    err = info.value
    assert isinstance(err, CommandFailed) and "rejected" in str(err)
    assert pickle.loads(pickle.dumps(err.cause if hasattr(err, "cause") else err))
    assert ray.get(sup.status.remote(wid))["state"] == "compensated"
    assert ray.get(sup.result.remote(ray.get(sup.submit.remote(Echo("next"))), 30)) == "next"


def test_delayed_and_blocked(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(slow_retry_interval_s=0.5)
    sup = c.sup
    assert ray.get(sup.result.remote(ray.get(sup.submit.remote(Flaky(failures=2))), 30))["attempts"] == 3
    wid = ray.get(sup.submit.remote(Flaky(failures=1, kind="blocked")))
    wait_for(lambda: ray.get(sup.stats.remote())["mode"] != "normal", what="suspension")
    with pytest.raises(Suspended):
        ray.get(sup.submit.remote(Echo("refused")))
    ray.get(sup.result.remote(wid, 30))
    wait_for(lambda: ray.get(sup.stats.remote())["mode"] == "normal", what="intake to reopen")
    assert ray.get(sup.result.remote(ray.get(sup.submit.remote(Echo("in"))), 30)) == "in"


def test_results_after_whole_restart(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(slow_retry_interval_s=0.3)
    ids = ray.get(c.sup.submit_many.remote([Flaky(failures=2) for _ in range(10)]))
    done = ray.get(c.sup.submit.remote(Echo("done")))
    ray.get(c.sup.result.remote(done, 30))
    c.restart()
    results: list[Any] = ray.get([c.sup.result.remote(w, 60) for w in ids])
    assert all(r["attempts"] >= 3 and r["first_attempt"] == 1 for r in results)
    assert ray.get(c.sup.result.remote(done)) == "done"


def test_fields_and_ids_are_checked_as_the_journal_holds_them(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    with pytest.raises(InvalidCommand, match="compensate"):
        ray.get(c.sup.submit.remote(Echo(1), "trip/compensate"))
    with pytest.raises(InvalidCommand, match="1024-byte limit"):
        ray.get(c.sup.submit.remote(Echo(1), "i" * 2000))
    wid = ray.get(c.sup.submit.remote(Echo((1, (2, 3))), "tuple"))
    assert ray.get(c.sup.result.remote(wid, 30)) == [1, [2, 3]]
    c.restart()
    assert ray.get(c.sup.submit.remote(Echo((1, (2, 3))), "tuple")) == "tuple"
    with pytest.raises(InvalidCommand, match="another command"):
        ray.get(c.sup.submit.remote(Echo((1, 2)), "tuple"))


@pytest.mark.parametrize("gateway", ["no_such_module_for_tests:make", "json:loads"])
def test_a_gateway_that_cannot_be_built_fails_start_and_leaves_nothing(ray_session: str, tmp_path: Path,
                                                                        gateway: str) -> None:
    options = Options(storage=str(tmp_path), namespace=f"t-{uuid.uuid4().hex[:8]}", **{**FAST, "gateway": gateway})
    with pytest.raises(ValueError, match=r"Options\.gateway="):
        cluster.start(options)
    wait_for(lambda: not [a for a in ray.util.list_named_actors(all_namespaces=True)
                          if a["namespace"] == options.namespace], what="no actor left")


def _read_here(sup: Any) -> int:
    """How many workflows the supervisor read from the leader's files itself."""
    answered: int = ray.get(sup.__ray_call__.remote(lambda self: self.core.queries.journal.sealed.answered))
    return answered


def test_long_finished_results_are_read_from_the_leaders_files_as_the_journal_gives_them(
        coordinator: Callable[..., Coordinator]) -> None:
    """Out of the supervisor's cache, a workflow is read from the sealed segments on this
    host without a call to the LogActor; results, waits and statuses equal the journal's,
    also across a restart of the LogActor (its new pid is learnt; meanwhile the LogActor
    answers)."""
    c = coordinator(result_cache_size=2, segment_bytes=1500)
    ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(40)] + [Fails(steps=1) for _ in range(4)]))

    def answers() -> list[Any]:
        out: list[Any] = []
        for w in ids:
            try:
                out.append(ray.get(c.sup.result.remote(w, 30)))
            except CommandFailed as exc:
                out.append((exc.error_type, exc.message))
        return out

    first = answers()
    assert first[:40] == list(range(40)) and all(a[1] == "step 1 rejected the request" for a in first[40:])
    counts = ray.get(c.sup.stats.remote())["counts"]  # the journal's, not the cache's two
    assert (counts["completed"], counts["compensated"]) == (40, 4)
    wait_for(lambda: answers() == first and _read_here(c.sup) >= 20, what="workflows read from sealed segments")
    status = ray.get(c.sup.status.remote(ids[0]))  # the journal's fold, outcomes and all
    assert status["state"] == "completed" and [o[1] for o in status["outcomes"]] == ["echo", "echo"]
    waited = ray.get(c.sup.wait.remote(ids, 5))
    assert [waited[w]["state"] for w in ids] == ["completed"] * 40 + ["compensated"] * 4
    assert [waited[w]["result"] for w in ids[:40]] == list(range(40))
    before = _read_here(c.sup)
    ray.kill(ray.get_actor("log-0", namespace=c.options.namespace), no_restart=False)
    assert answers() == first  # the lock names another pid: the LogActor answered
    wait_for(lambda: answers() == first and _read_here(c.sup) > before + 20, what="the new leader's files read")
