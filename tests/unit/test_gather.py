"""`ctx.gather`: parallel steps keep the indices and keys they reserved in call order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import opts
from workflows.command import Command
from workflows.context import Context, Outcome
from workflows.errors import CommandFailed, ConcurrentStep, Delayed
from workflows.testing import log_call, read_calls


@dataclass
class Parallel(Command):
    """Steps ``svc{i}`` run together, each finishing after ``delays[i]`` s, then one
    step more; Delayed after it on the first ``parks`` attempts. Each step's value is
    the key its service saw, read inside the step after its wait."""

    dir: str
    delays: list[float]
    parks: int = 0

    async def exec(self, ctx: Context) -> Any:
        values = await ctx.gather(*(ctx.step(f"svc{i}", self._call, ctx, d) for i, d in enumerate(self.delays)))
        last = await ctx.step("after", self._call, ctx, 0.0)
        if ctx.attempt <= self.parks:
            raise Delayed(f"attempt {ctx.attempt}: parked on purpose")
        return [*values, last]

    async def _call(self, ctx: Context, delay: float) -> str:
        await asyncio.sleep(delay)
        key = ctx.key()
        log_call(self.dir, key)
        return key


@dataclass
class OneFails(Command):
    """Three steps together; the middle one raises ``error`` on the first attempt."""

    dir: str
    error: str = "delayed"

    async def exec(self, ctx: Context) -> Any:
        return await ctx.gather(ctx.step("a", self._call, ctx, 0.02, False),
                                ctx.step("b", self._call, ctx, 0.01, ctx.attempt == 1),
                                ctx.step("c", self._call, ctx, 0.0, False))

    async def _call(self, ctx: Context, delay: float, fail: bool) -> str:
        await asyncio.sleep(delay)
        key = ctx.key()
        log_call(self.dir, key)
        if fail:
            raise Delayed("b did not answer") if self.error == "delayed" else ValueError("b refused")
        return key

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        await ctx.gather(*(ctx.step(f"undo-{o.service}", self._call, ctx, 0.0, False) for o in ctx.outcomes))


@dataclass
class Unreserved(Command):
    """Two tasks each making their own step: the second is refused."""

    async def exec(self, ctx: Context) -> Any:
        async def one(name: str) -> Any:
            return await ctx.step(name, asyncio.sleep, 0.01, name)

        return await asyncio.gather(one("a"), one("b"))


@dataclass
class Recorder:
    journal: list[tuple[int, str]] = field(default_factory=list)

    async def record(self, workflow_id: str, kind: str, step: int, service: str, value: Any) -> Any:
        await asyncio.sleep(0)
        self.journal.append((step, service))
        return value


def outcome_steps(c: LocalCoordinator, wid: str) -> list[int]:
    return [r["step"] for r in c.journal.read() if r.get("w") == wid and r["k"] == "outcome"]


async def test_steps_finishing_out_of_order_are_journaled_by_index_and_replay_after_a_restart(tmp_path: Any) -> None:
    c = LocalCoordinator(opts(slow_retry_interval_s=0.3, jitter_s=0.0))
    await c.start()
    wid = await c.core.submit(Parallel(str(tmp_path), [0.06, 0.0, 0.03], parks=1), "trip")
    for _ in range(200):
        if (await c.core.status(wid))["state"] == "delayed":
            break
        await asyncio.sleep(0.01)
    # The services finished 1, 2, 0; each saw the key of the index it reserved.
    assert read_calls(str(tmp_path)) == ["trip/1", "trip/2", "trip/0", "trip/3"]
    assert outcome_steps(c, wid) == [0, 1, 2, 3]
    await c.close()
    fresh = LocalCoordinator(c.options)
    await fresh.start()
    try:
        assert await fresh.core.result(wid, 5) == ["trip/0", "trip/1", "trip/2", "trip/3"]
        assert read_calls(str(tmp_path)) == ["trip/1", "trip/2", "trip/0", "trip/3"]  # replayed, not called
        assert outcome_steps(fresh, wid) == [0, 1, 2, 3]
    finally:
        await fresh.close()


async def test_a_failing_step_is_raised_after_the_others_settle(coord: LocalCoordinator, tmp_path: Any) -> None:
    wid = await coord.core.submit(OneFails(str(tmp_path)), "w")
    assert await coord.core.result(wid, 5) == ["w/0", "w/1", "w/2"]
    calls = read_calls(str(tmp_path))
    # Step 0 was journaled before the retry; steps 1 and 2 ran again under their keys.
    assert calls.count("w/0") == 1 and calls.count("w/1") == 2 and calls.count("w/2") == 2
    assert outcome_steps(coord, wid) == [0, 1, 2]


async def test_a_failed_step_compensates_what_the_gather_journaled(coord: LocalCoordinator, tmp_path: Any) -> None:
    wid = await coord.core.submit(OneFails(str(tmp_path), error="fail"), "w")
    with pytest.raises(CommandFailed, match="b refused"):
        await coord.core.result(wid, 5)
    status = await coord.core.status(wid)
    assert status["state"] == "compensated" and [o[1] for o in status["outcomes"]] == ["a"]
    assert "w/compensate/0" in read_calls(str(tmp_path))


async def test_an_unreserved_concurrent_step_is_refused(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Unreserved())
    with pytest.raises(CommandFailed, match="ConcurrentStep"):
        await coord.core.result(wid, 5)


async def test_results_in_call_order_and_keys_from_the_reservation() -> None:
    rec = Recorder()
    ctx = Context("w", 1, [], rec)
    first = ctx.step("slow", asyncio.sleep, 0.03, "slow")
    key = ctx.key()
    second = ctx.step("fast", asyncio.sleep, 0.0, "fast")
    assert key == "w/1" and ctx.key() == "w/2"
    assert await ctx.gather(first, second) == ["slow", "fast"]
    assert rec.journal == [(0, "slow"), (1, "fast")]
    assert await ctx.step("next", lambda: ctx.key()) == "w/2"


async def test_steps_awaited_out_of_order_are_refused_and_the_cursor_rewinds() -> None:
    ctx = Context("w", 1, [], Recorder())
    a = ctx.step("a", lambda: 1)
    b = ctx.step("b", lambda: 2)
    with pytest.raises(ConcurrentStep, match="step 0 was made before it"):
        await b
    assert await a == 1
    assert await ctx.step("c", lambda: ctx.key()) == "w/1"  # b never took its index


async def test_gather_takes_only_steps_of_its_context() -> None:
    ctx = Context("w", 1, [], Recorder())
    other = Context("v", 1, [], Recorder())
    foreign = other.step("a", lambda: 1)
    with pytest.raises(TypeError, match=r"ctx\.gather"):
        await ctx.gather(foreign)
    with pytest.raises(ConcurrentStep, match="step 0 was made before it"):  # "a" is still to be awaited
        await other.step("b", lambda: 2)
    assert await foreign == 1


async def test_replay_returns_each_outcome_by_index() -> None:
    done = [Outcome(0, "a", "A"), Outcome(1, "b", "B")]
    ctx = Context("w", 2, list(done), Recorder())
    assert await ctx.gather(ctx.step("a", lambda: "x"), ctx.step("b", lambda: "y"), ctx.step("c", lambda: "C")) \
        == ["A", "B", "C"]
