"""Durable timers, signals and events: ctx.sleep, ctx.wait_for and signal, ctx.set_event and get_event."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from workflows import Command, Context

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


async def wait_state(c: LocalCoordinator, wid: str, state: str) -> dict[str, Any]:
    status: dict[str, Any] = {}
    for _ in range(500):
        status = await c.core.status(wid)
        if status["state"] == state:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"{wid} never reached {state}: {status}")


def kinds(c: LocalCoordinator, wid: str) -> list[str]:
    return [r["k"] for r in c.journal.read() if r.get("w") == wid]


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


