"""fork(workflow_id, from_step, new_workflow_id): outcomes copied, the rest run again; refusals; idempotence."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import kinds, opts, wait_state
from workflows import Command, Context
from workflows.errors import CommandFailed, InvalidCommand, UnknownWorkflow

CALLS: Counter[str] = Counter()
"""Service calls by idempotency key."""


@dataclass
class Three(Command):
    """Three steps, each returning its key; fails at step ``fail_at`` (on the original only)."""

    tag: str
    fail_at: int = -1

    async def exec(self, ctx: Context) -> Any:
        values = []
        for i in range(3):
            if i == self.fail_at and not ctx.workflow_id.startswith("fork"):
                raise ValueError(f"step {i} refused")
            values.append(await ctx.step(f"svc{i}", self._call, ctx))
        return values

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        for o in reversed(ctx.outcomes):
            await ctx.step(f"undo-{o.service}", lambda: "undone")

    def _call(self, ctx: Context) -> str:
        CALLS[ctx.key()] += 1
        return ctx.key()


async def test_a_fork_copies_the_first_outcomes_and_runs_the_rest(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Three("a"), "orig-a")
    assert await coord.core.result(wid, 5) == ["orig-a/0", "orig-a/1", "orig-a/2"]
    assert await coord.core.fork(wid, 2, "fork-a") == "fork-a"
    assert await coord.core.result("fork-a", 5) == ["orig-a/0", "orig-a/1", "fork-a/2"]
    assert CALLS["fork-a/0"] == 0 and CALLS["fork-a/1"] == 0 and CALLS["fork-a/2"] == 1
    assert CALLS["orig-a/0"] == CALLS["orig-a/1"] == CALLS["orig-a/2"] == 1
    status = await coord.core.status("fork-a")
    assert status["type"] == (await coord.core.status(wid))["type"] and status["attempts"] == 1
    assert [o[2] for o in status["outcomes"]] == ["orig-a/0", "orig-a/1", "fork-a/2"]
    assert kinds(coord, "fork-a")[:3] == ["submitted", "outcome", "outcome"]


async def test_a_fork_from_step_zero_runs_everything_again(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Three("z"), "orig-z")
    await coord.core.result(wid, 5)
    await coord.core.fork(wid, 0, "fork-z")
    assert await coord.core.result("fork-z", 5) == ["fork-z/0", "fork-z/1", "fork-z/2"]


async def test_a_repeat_answers_the_same_id_and_runs_nothing_twice(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Three("r"), "orig-r")
    await coord.core.result(wid, 5)
    first, second = await asyncio.gather(coord.core.fork(wid, 1, "fork-r"), coord.core.fork(wid, 1, "fork-r"))
    assert first == second == "fork-r"
    await coord.core.result("fork-r", 5)
    assert await coord.core.fork(wid, 1, "fork-r") == "fork-r"
    assert kinds(coord, "fork-r").count("submitted") == 1
    assert CALLS["fork-r/1"] == 1 and CALLS["fork-r/2"] == 1


async def test_refusals(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Three("x"), "orig-x")
    other = await coord.core.submit(Three("y"), "other-y")
    await coord.core.result(wid, 5)
    await coord.core.result(other, 5)
    with pytest.raises(UnknownWorkflow):
        await coord.core.fork("nobody", 0, "fork-n")
    for bad in (-1, 4, True):
        with pytest.raises(InvalidCommand, match="from_step"):
            await coord.core.fork(wid, bad, "fork-x")  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match="taken"):
        await coord.core.fork(wid, 1, other)
    for taken in ("", "bad\x00id", "x/compensate", wid):
        with pytest.raises(InvalidCommand):
            await coord.core.fork(wid, 1, taken)
    assert "fork-x" not in coord.core.table.workflows and "fork-n" not in coord.core.table.workflows


async def test_a_compensated_workflow_forks_only_from_step_zero(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Three("c", fail_at=2), "orig-c")
    with pytest.raises(CommandFailed):
        await coord.core.result(wid, 5)
    assert (await coord.core.status(wid))["state"] == "compensated"
    with pytest.raises(InvalidCommand, match="compensated"):
        await coord.core.fork(wid, 1, "fork-c1")
    await coord.core.fork(wid, 0, "fork-c0")
    assert await coord.core.result("fork-c0", 5) == ["fork-c0/0", "fork-c0/1", "fork-c0/2"]


@dataclass
class Waits(Command):
    """One step, then waits for the signal ``go``."""

    async def exec(self, ctx: Context) -> Any:
        first = await ctx.step("svc0", lambda: ctx.key())
        return [first, await ctx.wait_for("go")]


async def test_a_running_workflow_forks_from_its_journaled_outcomes(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Waits(), "orig-w")
    await wait_state(coord, wid, "waiting")
    await coord.core.fork(wid, 1, "fork-w")
    await wait_state(coord, "fork-w", "waiting")
    assert await coord.core.signal("fork-w", "go", "f") is True
    assert await coord.core.result("fork-w", 5) == ["orig-w/0", "f"]
    assert (await coord.core.status(wid))["state"] == "waiting"


async def test_a_fork_survives_a_restart() -> None:
    options = opts()
    c = LocalCoordinator(options)
    await c.start()
    wid = await c.core.submit(Waits(), "orig-s")
    await wait_state(c, wid, "waiting")
    await c.core.fork(wid, 1, "fork-s")
    await wait_state(c, "fork-s", "waiting")
    await c.close()
    fresh = LocalCoordinator(options)
    await fresh.start()
    try:
        assert await fresh.core.fork(wid, 1, "fork-s") == "fork-s"
        await fresh.core.signal("fork-s", "go", 1)
        assert await fresh.core.result("fork-s", 5) == ["orig-s/0", 1]
        assert kinds(fresh, "fork-s").count("submitted") == 1
    finally:
        await fresh.close()
