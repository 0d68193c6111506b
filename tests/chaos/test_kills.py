"""Kills and damage on a real Ray instance. Each test counts what was lost and asserts zero."""

from __future__ import annotations

import glob
import os
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import ray

import cluster
from actors.journal import codec
from cluster import Options
from tests.support import FAST, Coordinator, wait_for
from workflows.errors import Fenced, JournalCorrupt, JournalUnavailable
from workflows.testing import Echo, Tracked, read_calls

pytestmark = pytest.mark.ray


def _journaled_outcomes(sup: object, wid: str) -> int:
    return len(ray.get(sup.status.remote(wid))["outcomes"])  # type: ignore[attr-defined]


def _check_results(sup: object, ids: list[str], steps: int, calls_dir: Path, kills: int = 1) -> None:
    """Every result right (lost == 0), every step called, and no step called again
    except the one each workflow had in flight at a kill (its outcome was not
    journaled yet, so its service is asked again under the same idempotency key)."""
    results = ray.get([sup.result.remote(w, 120) for w in ids])  # type: ignore[attr-defined]
    lost = [w for w, r in zip(ids, results, strict=True) if r != [f"{w}/{i}:{i}" for i in range(steps)]]
    assert lost == []
    calls = Counter(read_calls(str(calls_dir)))
    assert set(calls) == {f"{w}/{i}" for w in ids for i in range(steps)}
    repeated = {w: sum(calls[f"{w}/{i}"] - 1 for i in range(steps)) for w in ids}
    assert {w: n for w, n in repeated.items() if n > kills} == {}


def test_command_actor_killed_mid_step(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator()
    calls = tmp_path / "calls"
    calls.mkdir()
    wid = ray.get(c.sup.submit.remote(Tracked(str(calls), steps=3, sleep_s=1.0)))
    wait_for(lambda: _journaled_outcomes(c.sup, wid) >= 1, what="the first outcome")
    for handle in c.actors()["command"]:
        ray.kill(handle, no_restart=False)
    _check_results(c.sup, [wid], 3, calls)
    counts = Counter(read_calls(str(calls)))
    assert counts[f"{wid}/0"] == 1  # journaled before the kill: replayed, not called again
    # The step in flight ran again, once: on the restarted actor (Ray cannot say whether a
    # call to an actor being restarted ran, so its batch goes to it again, and runs once).
    assert counts[f"{wid}/1"] == 2


def test_supervisor_killed_mid_run(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator(slots_per_actor=8)
    calls = tmp_path / "calls"
    calls.mkdir()
    ids = ray.get(c.sup.submit_many.remote([Tracked(str(calls), steps=3, sleep_s=0.2) for _ in range(20)]))
    pending = [c.sup.result.remote(w, 120) for w in ids]  # in flight while it dies: Ray re-sends them
    wait_for(lambda: len(read_calls(str(calls))) >= 10, what="some steps to run")
    ray.kill(c.sup, no_restart=False)
    assert all(isinstance(r, list) for r in ray.get(pending))
    _check_results(c.sup, ids, 3, calls)


def test_log_actor_killed_mid_run(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    c = coordinator(slots_per_actor=8)
    calls = tmp_path / "calls"
    calls.mkdir()
    ids = ray.get(c.sup.submit_many.remote([Tracked(str(calls), steps=3, sleep_s=0.2) for _ in range(20)]))
    wait_for(lambda: len(read_calls(str(calls))) >= 10, what="some steps to run")
    ray.kill(c.actors()["log"][0], no_restart=False)
    _check_results(c.sup, ids, 3, calls)
    more = ray.get(c.sup.submit.remote(Echo("after")))
    assert ray.get(c.sup.result.remote(more, 60)) == "after"


def test_second_coordinator_on_same_storage_is_fenced(ray_session: str, tmp_path: Path) -> None:
    first = Coordinator(tmp_path / "shared")
    try:
        ray.get(first.sup.result.remote(ray.get(first.sup.submit.remote(Echo(1))), 60))
        wal = glob.glob(str(tmp_path / "shared" / "wal" / "*.log"))
        sizes = {p: os.path.getsize(p) for p in wal}
        other = Options(storage=str(tmp_path / "shared"), namespace=f"t-{uuid.uuid4().hex[:8]}", **FAST)
        with pytest.raises(Fenced, match="held by another coordinator"):
            cluster.start(other)
        assert {p: os.path.getsize(p) for p in wal} == sizes  # the fenced one wrote nothing
        assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == other.namespace]
        assert ray.get(first.sup.result.remote(ray.get(first.sup.submit.remote(Echo(2))), 60)) == 2
    finally:
        first.stop()


def test_corrupt_journal_stops_start_up_and_torn_tail_is_cut(ray_session: str, tmp_path: Path) -> None:
    c = Coordinator(tmp_path / "j")
    ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(5)]))
    ray.get([c.sup.result.remote(w, 60) for w in ids])
    c.stop()
    [wal] = glob.glob(str(tmp_path / "j" / "wal" / "*.log"))
    # A torn tail (the first bytes of a frame whose write was cut short) is cut off
    # and nothing acknowledged is lost.
    with open(wal, "ab") as f:
        f.write(codec.encode({"v": codec.VERSION, "q": 10**6, "k": "epoch", "epoch": 99})[:7])
    c = Coordinator(tmp_path / "j")
    assert ray.get([c.sup.result.remote(w, 60) for w in ids]) == list(range(5))
    c.stop()
    # A damaged record inside the log stops start-up, names the place, and changes nothing.
    path = Path(wal)
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=r"offset \d+"):
        Coordinator(tmp_path / "j")
    assert path.read_bytes() == bytes(data)


def test_an_unanswering_journal_is_journal_unavailable_not_a_hang(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(append_timeout_s=2.0)
    ray.get(c.sup.result.remote(ray.get(c.sup.submit.remote(Echo(1))), 60))
    leader = c.actors()["log"][0]
    pid = ray.get(leader.info.remote())["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive but silent, like a leader whose node is cut off
    try:
        with pytest.raises(JournalUnavailable, match="did not answer"):
            ray.get(c.sup.submit.remote(Echo(2), "during-outage"))
    finally:
        os.kill(pid, signal.SIGCONT)
    # Back: the refused submit was not acknowledged, so it may be sent again; it runs once.
    wid = ray.get(c.sup.submit.remote(Echo(2), "during-outage"))
    assert ray.get(c.sup.result.remote(wid, 60)) == 2
    ray.kill(leader, no_restart=True)
    # Until its process ends, the leader still answers appends on its connections.
    wait_for(lambda: not psutil.pid_exists(pid), what="the leader's process to end")
    with pytest.raises(JournalUnavailable, match="gone"):
        ray.get(c.sup.submit.remote(Echo(3)))
