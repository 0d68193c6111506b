"""Durable timers, signals and events: ctx.sleep, ctx.wait_for and signal, ctx.set_event and get_event."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import kinds, wait_state
from workflows import Command, Context, Delayed
from workflows.errors import UnknownWorkflow

CALLS: dict[str, int] = {}


def called(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


@dataclass
class Naps(Command):
    key: str
    seconds: float = 0.3

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("before", called, f"{self.key}/before")
        await ctx.sleep(self.seconds)
        await ctx.step("after", called, f"{self.key}/after")
        return "rested"


@dataclass
class Blocks(Command):
    async def exec(self, ctx: Context) -> Any:
        await ctx.step("svc", lambda: "done")
        if ctx.attempt == 1:
            from workflows.errors import Blocked
            raise Blocked("service down")
        await ctx.sleep(0.5)
        return "late"




async def test_a_sleep_parks_and_returns_after_its_due_time(coord: LocalCoordinator) -> None:
    start = time.time()
    wid = await coord.core.submit(Naps("nap"))
    status = await wait_state(coord, wid, "sleeping")
    assert status["wake_at"] == pytest.approx(start + 0.3, abs=0.2)
    assert coord.core.dispatcher.running == {} and coord.core.stats()["in_flight"] == 1
    assert await coord.core.result(wid, 5) == "rested"
    assert time.time() - start >= 0.3
    assert CALLS["nap/before"] == 1 and CALLS["nap/after"] == 1
    assert "sleeping" in kinds(coord, wid)


async def test_a_sleep_keeps_its_due_time_across_a_restart(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Naps("restart", seconds=0.6))
    due = (await wait_state(coord, wid, "sleeping"))["wake_at"]
    await coord.close()
    await asyncio.sleep(0.1)
    fresh = LocalCoordinator(coord.options)
    await fresh.start()
    try:
        status = await fresh.core.status(wid)
        assert status["state"] == "sleeping" and status["wake_at"] == due
        assert await fresh.core.result(wid, 5) == "rested"
        assert time.time() >= due
        assert CALLS["restart/before"] == 1 and CALLS["restart/after"] == 1
    finally:
        await fresh.close()
        coord.journal.open()


async def test_a_sleeping_workflow_does_not_hold_intake_suspended(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Blocks())
    await wait_state(coord, wid, "sleeping")
    for _ in range(200):
        if coord.core.mode.value == "normal":
            break
        await asyncio.sleep(0.01)
    assert coord.core.mode.value == "normal"
    assert coord.core.parking.retrying == set()
    assert await coord.core.result(wid, 5) == "late"


async def test_a_zero_sleep_returns_at_once(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Naps("zero", seconds=0))
    assert await coord.core.result(wid, 5) == "rested"
    assert "sleeping" not in kinds(coord, wid)




@dataclass
class Awaits(Command):
    """Waits for the signal ``go`` (with a timeout), sets events around it."""

    key: str
    timeout_s: float | None = None

    async def exec(self, ctx: Context) -> Any:
        ctx.set_event("phase", "waiting")
        await ctx.step("before", called, f"{self.key}/before")
        try:
            payload = await ctx.wait_for("go", self.timeout_s)
        except TimeoutError:
            ctx.set_event("phase", "timed out")
            return await ctx.step("late", called, f"{self.key}/late") and "timeout"
        ctx.set_event("phase", "signalled")
        await ctx.step("after", called, f"{self.key}/after")
        return payload


async def test_a_signal_after_the_wait_wakes_the_workflow(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Awaits("after"))
    status = await wait_state(coord, wid, "waiting")
    assert status["waiting_for"] == "go" and status["wake_at"] is None
    assert coord.core.parking.retrying == set() and coord.core.dispatcher.running == {}
    assert await coord.core.get_event(wid, "phase") == "waiting"
    assert await coord.core.signal(wid, "go", {"n": 1}) is True
    assert await coord.core.result(wid, 5) == {"n": 1}
    assert CALLS["after/before"] == 1 and CALLS["after/after"] == 1
    assert await coord.core.get_event(wid, "phase") == "signalled"
    assert await coord.core.get_event(wid, "missing") is None


async def test_a_signal_before_the_wait_is_returned_at_once(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Naps("before-signal", seconds=0.3))
    await wait_state(coord, wid, "sleeping")
    assert await coord.core.signal(wid, "go", "early") is True
    assert await coord.core.result(wid, 5) == "rested"
    wid = await coord.core.submit(Awaits("before"), workflow_id="signalled-first")
    assert await coord.core.signal(wid, "go", "early") is True
    assert await coord.core.result(wid, 5) == "early"
    assert "waiting" not in kinds(coord, wid)


async def test_duplicate_signals_keep_the_first_payload(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Awaits("dup"))
    await wait_state(coord, wid, "waiting")
    first, second = await asyncio.gather(coord.core.signal(wid, "go", 1), coord.core.signal(wid, "go", 2))
    assert sorted([first, second]) == [False, True]
    won = 1 if first else 2
    assert await coord.core.result(wid, 5) == won
    assert kinds(coord, wid).count("signal") == 1
    assert await coord.core.signal(wid, "go", 3) is False  # finished: a no-op
    assert await coord.core.signal(wid, "other", 3) is False
    with pytest.raises(UnknownWorkflow):
        await coord.core.signal("nobody", "go", 1)
    with pytest.raises(UnknownWorkflow):
        await coord.core.get_event("nobody", "phase")


async def test_a_signal_journaled_before_a_crash_wakes_the_workflow_after_restart(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Awaits("crash"))
    await wait_state(coord, wid, "waiting")
    coord.core.parking.schedule = lambda wf, now: None  # type: ignore[method-assign]  # crash before dispatch
    assert await coord.core.signal(wid, "go", "kept") is True
    await asyncio.sleep(0.05)
    assert (await coord.core.status(wid))["state"] == "waiting"
    await coord.close()
    fresh = LocalCoordinator(coord.options)
    await fresh.start()
    try:
        assert await fresh.core.result(wid, 5) == "kept"
        assert CALLS["crash/before"] == 1 and CALLS["crash/after"] == 1
        assert await fresh.core.get_event(wid, "phase") == "signalled"
    finally:
        await fresh.close()
        coord.journal.open()


async def test_a_wait_times_out_and_replays_the_timeout(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Awaits("timeout", timeout_s=0.2))
    status = await wait_state(coord, wid, "waiting")
    assert status["wake_at"] is not None and status["waiting_for"] == "go"
    assert await coord.core.result(wid, 5) == "timeout"
    assert await coord.core.get_event(wid, "phase") == "timed out"
    assert await coord.core.signal(wid, "go", "too late") is False
    steps = [o[2] for o in (await coord.core.status(wid))["outcomes"]]
    assert steps[2] == {"timeout": 0.2}


@dataclass
class TimesOutThenDelays(Command):
    """Times out, then needs another attempt: the replay raises TimeoutError again."""

    async def exec(self, ctx: Context) -> Any:
        try:
            await ctx.wait_for("go", 0.05)
        except TimeoutError:
            got = "timeout"
        else:
            got = "signal"
        if ctx.attempt < 3:
            raise Delayed("once more")
        return got


async def test_a_timeout_is_raised_again_on_replay_even_once_signalled(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(TimesOutThenDelays())
    for _ in range(300):
        status = await coord.core.status(wid)
        if status["state"] == "delayed":
            break
        await asyncio.sleep(0.01)
    await coord.core.signal(wid, "go", 1)
    assert await coord.core.result(wid, 5) == "timeout"


async def test_start_at_journals_at_once_and_sleeps_until_then(coord: LocalCoordinator) -> None:
    start = time.time() + 0.4
    wid = await coord.core.submit(Naps("later", seconds=0), start_at=start)
    status = await coord.core.status(wid)
    assert status["state"] == "sleeping" and status["wake_at"] == start
    assert kinds(coord, wid)[:1] == ["submitted"] and coord.core.stats()["in_flight"] == 1
    assert "later/before" not in CALLS
    assert await coord.core.result(wid, 5) == "rested"
    assert time.time() >= start
    past = await coord.core.submit_many([Naps("now", seconds=0)], start_at=time.time() - 10)
    assert await coord.core.result(past[0], 5) == "rested"


async def test_start_at_survives_a_restart(coord: LocalCoordinator) -> None:
    start = time.time() + 0.4
    wid = await coord.core.submit(Naps("later-restart", seconds=0), start_at=start)
    await coord.close()
    fresh = LocalCoordinator(coord.options)
    await fresh.start()
    try:
        assert (await fresh.core.status(wid))["wake_at"] == start
        assert await fresh.core.result(wid, 5) == "rested"
        assert time.time() >= start and CALLS["later-restart/before"] == 1
    finally:
        await fresh.close()
        coord.journal.open()


async def test_a_waiting_or_sleeping_workflow_is_cancelled_at_once(coord: LocalCoordinator) -> None:
    waiting = await coord.core.submit(Awaits("cancel-wait"))
    sleeping = await coord.core.submit(Naps("cancel-sleep", seconds=30))
    await wait_state(coord, waiting, "waiting")
    await wait_state(coord, sleeping, "sleeping")
    assert await coord.core.cancel(waiting) is True
    assert await coord.core.terminate(sleeping) is True
    await wait_state(coord, waiting, "cancelled")
    await wait_state(coord, sleeping, "terminated")
    assert coord.core.stats()["in_flight"] == 0
    assert await coord.core.signal(waiting, "go", 1) is False
