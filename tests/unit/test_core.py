"""SPEC §4 items 1-8 on the coordinator's core, in one process (no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import MemoryBackend
from actors.options import Options
from actors.records import Step, Submitted
from tests.unit.local import FAST, opts
from workflows.errors import AtCapacity, CommandFailed, InvalidCommand, Suspended, UnknownWorkflow
from workflows.testing import Echo, Fails, Flaky, Impatient, RaisesFrom, Returns, Tracked, read_calls


async def restart(c: LocalCoordinator, **kw: Any) -> LocalCoordinator:
    """Stop a coordinator and start a fresh one on the same storage."""
    await c.close()
    fresh = LocalCoordinator(c.options.replace(**kw) if kw else c.options)
    await fresh.start()
    return fresh


async def test_submit_returns_after_journaling_and_result_arrives(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Echo("hello"))
    kinds = [r["k"] for r in coord.journal.read() if r.get("w") == wid]
    assert kinds[0] == "submitted"
    assert await coord.core.result(wid, 5) == "hello"
    kinds = [r["k"] for r in coord.journal.read() if r.get("w") == wid]
    assert kinds.count("outcome") == 2 and kinds[-1] == "completed"
    status = await coord.core.status(wid)
    assert status["state"] == "completed" and status["attempts"] == 1 and len(status["outcomes"]) == 2


async def test_same_id_same_command_runs_once_other_command_is_invalid(coord: LocalCoordinator) -> None:
    a = await coord.core.submit(Echo("x"), "trip-1")
    b = await coord.core.submit(Echo("x"), "trip-1")
    assert a == b == "trip-1"
    await coord.core.result("trip-1", 5)
    assert sum(1 for r in coord.journal.read() if r["k"] == "submitted") == 1
    with pytest.raises(InvalidCommand, match="another command"):
        await coord.core.submit(Echo("y"), "trip-1")


async def test_invalid_commands_journal_nothing(coord: LocalCoordinator) -> None:
    before = coord.journal.next_seq
    with pytest.raises(InvalidCommand, match="msgpack"):
        await coord.core.submit(Echo(object()))
    with pytest.raises(InvalidCommand, match="not an instance"):
        await coord.core.submit({"type": "x"})
    with pytest.raises(InvalidCommand, match="limit"):
        await coord.core.submit(Echo("x" * (2 << 20)))
    assert coord.journal.next_seq == before


async def test_unknown_workflow(coord: LocalCoordinator) -> None:
    with pytest.raises(UnknownWorkflow):
        await coord.core.result("nope")
    with pytest.raises(TimeoutError):
        await coord.core.result(await coord.core.submit(Flaky(failures=100)), 0.05)


async def test_delayed_parks_and_retries_keeping_outcomes(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Flaky(failures=2))
    result = await coord.core.result(wid, 5)
    # The first step ran on attempt 1 and was replayed, not re-run, on attempts 2 and 3.
    assert result == {"first_attempt": 1, "attempts": 3}
    kinds = [r["k"] for r in coord.journal.read() if r.get("w") == wid]
    assert kinds.count("delayed") == 2 and kinds.count("outcome") == 1
    assert coord.core.mode.value == "normal"


async def test_error_raised_from_delayed_counts_as_delayed(coord: LocalCoordinator) -> None:
    assert await coord.core.result(await coord.core.submit(RaisesFrom()), 5) == 2


async def test_blocked_suspends_intake_then_slow_fast_normal(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Flaky(failures=1, kind="blocked"))
    modes = []
    while coord.core.mode.value == "normal":
        await asyncio.sleep(0.001)
    modes.append(coord.core.mode.value)
    with pytest.raises(Suspended):
        await coord.core.submit(Echo("refused"))
    await coord.core.result(wid, 5)
    for _ in range(100):
        if coord.core.mode.value == "normal":
            break
        await asyncio.sleep(0.01)
    changes = [r["mode"] for r in coord.journal.read() if r["k"] == "mode"]
    assert modes == ["suspended_slow"]
    assert changes == ["suspended_slow", "suspended_fast", "normal"]
    assert await coord.core.result(await coord.core.submit(Echo("accepted")), 5) == "accepted"


async def test_operator_suspend_and_resume(coord: LocalCoordinator) -> None:
    await coord.core.suspend()
    with pytest.raises(Suspended, match="operator"):
        await coord.core.submit(Echo("x"))
    await coord.core.resume()
    assert await coord.core.result(await coord.core.submit(Echo("x")), 5) == "x"


async def test_max_cmds_back_pressure_then_at_capacity() -> None:
    c = LocalCoordinator(opts(max_cmds=2, admission_timeout_s=0.2))
    await c.start()
    try:
        a = await c.core.submit(Flaky(failures=1000))
        await c.core.submit(Flaky(failures=1000))
        with pytest.raises(AtCapacity):
            await c.core.submit(Echo("third"))
        assert c.core.stats()["in_flight"] == 2
        # Back-pressure: a waiting submit is admitted as soon as a command finishes.
        c2 = LocalCoordinator(opts(max_cmds=1, admission_timeout_s=5))
        await c2.start()
        first = await c2.core.submit(Flaky(failures=2))
        second = asyncio.ensure_future(c2.core.submit(Echo("waited")))
        await asyncio.sleep(0.01)
        assert not second.done()
        await c2.core.result(first, 5)
        assert await c2.core.result(await second, 5) == "waited"
        await c2.close()
        assert a in {s["id"] for st in ("delayed", "running", "pending") for s in await c.core.list(st)}
    finally:
        await c.close()


async def test_failure_compensates_and_coordinator_keeps_serving(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Fails(steps=2))
    with pytest.raises(CommandFailed) as info:
        await coord.core.result(wid, 5)
    assert info.value.error_type == "builtins.ValueError" and "rejected" in info.value.message
    assert "Traceback" in info.value.traceback
    status = await coord.core.status(wid)
    assert status["state"] == "compensated"
    comps = [r for r in coord.journal.read() if r.get("w") == wid and r["k"] == "compensation"]
    assert [r["service"] for r in comps] == ["undo-svc1", "undo-svc0"]
    assert await coord.core.result(await coord.core.submit(Echo("still serving")), 5) == "still serving"


async def test_failure_without_outcomes_or_with_failing_compensation_is_failed(coord: LocalCoordinator) -> None:
    for cmd in (Fails(steps=0), Fails(steps=1, compensation_fails=True)):
        wid = await coord.core.submit(cmd)
        with pytest.raises(CommandFailed):
            await coord.core.result(wid, 5)
        assert (await coord.core.status(wid))["state"] == "failed"


async def test_unjournalable_result_fails_the_command(coord: LocalCoordinator) -> None:
    for kind in ("set", "big"):
        with pytest.raises(CommandFailed, match=r"msgpack|limit"):
            await coord.core.result(await coord.core.submit(Returns(kind)), 5)


async def test_one_outcome_per_step_index(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Echo("x", steps=1))
    await coord.core.result(wid, 5)
    live = LocalCoordinator(opts())
    await live.start()
    try:
        await live.journal.append([Submitted("w", "t:T", {}, 0)])
        answers = await asyncio.gather(*[live.journal.append([Step("w", 0, "s", v)]) for v in "abc"])
        assert answers == [["a"], ["a"], ["a"]]
        assert sum(1 for r in live.journal.read() if r["k"] == "outcome") == 1
    finally:
        await live.close()


async def test_restart_resumes_unfinished_from_last_outcome(tmp_path: Any) -> None:
    options = Options(storage=str(tmp_path), **{**FAST, "slow_retry_interval_s": 60.0})
    c = LocalCoordinator(options)
    await c.start()
    calls = tmp_path / "calls"
    calls.mkdir()
    wid = await c.core.submit(Tracked(str(calls), steps=3, sleep_s=0.2))
    while sum(1 for r in c.journal.read() if r["k"] == "outcome") < 1:
        await asyncio.sleep(0.01)
    c = await restart(c)  # the first attempt is cut off mid-run
    assert await c.core.result(wid, 5) == [f"{wid}/0:0", f"{wid}/1:1", f"{wid}/2:2"]
    keys = read_calls(str(calls))
    assert keys.count(f"{wid}/0") == 1  # the journaled step was not called again
    assert (await c.core.status(wid))["attempts"] == 2
    c = await restart(c)
    assert await c.core.result(wid) == [f"{wid}/0:0", f"{wid}/1:1", f"{wid}/2:2"]
    await c.close()


async def test_recovered_commands_count_against_max_cmds(tmp_path: Any) -> None:
    options = Options(storage=str(tmp_path), max_cmds=3, admission_timeout_s=0.05, **FAST)
    c = LocalCoordinator(options.replace(slow_retry_interval_s=0.3))
    await c.start()
    ids = [await c.core.submit(Flaky(failures=3)) for _ in range(3)]
    c = await restart(c)
    assert c.core.stats()["in_flight"] == 3
    with pytest.raises(AtCapacity):
        await c.core.submit(Echo("x"))
    assert [(await c.core.result(w, 5))["attempts"] for w in ids] == [4, 4, 4]
    await c.close()


async def test_lost_worker_redispatches_from_journal() -> None:
    c = LocalCoordinator(opts(command_actors=2))
    await c.start()
    c.pool.lost.add(0)
    c.pool.lost.add(1)
    assert await c.core.result(await c.core.submit(Echo("again")), 5) == "again"
    await c.close()


def teardown_module() -> None:
    for name in list(MemoryBackend._stores):
        MemoryBackend.drop(name)


async def test_deadline_turns_retries_into_a_failure(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Impatient())
    with pytest.raises(CommandFailed, match=r"deadline_s=0\.3") as info:
        await coord.core.result(wid, 5)
    assert info.value.error_type.endswith("DeadlineExceeded")
    status = await coord.core.status(wid)
    assert status["state"] == "failed" and status["attempts"] >= 3


async def test_wait_returns_whichever_finished(coord: LocalCoordinator) -> None:
    slow = await coord.core.submit(Flaky(failures=3))
    fast = await coord.core.submit(Echo("quick"))
    done = await coord.core.wait([slow, fast], 5)
    assert done[fast] == {"state": "completed", "result": "quick", "error": None}
    assert slow not in done
    assert await coord.core.wait([slow], 0.01) == {}
    failed = await coord.core.submit(Fails(steps=0))
    done = await coord.core.wait([slow, failed], 5)
    assert done[failed]["state"] == "failed" and "rejected" in done[failed]["error"]["message"]
    with pytest.raises(UnknownWorkflow):
        await coord.core.wait(["nope"])
    assert not any(coord.core.queries.waiters.get(w) for w in (slow, failed))  # nothing left behind
