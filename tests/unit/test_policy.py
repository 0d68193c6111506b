"""Retry policies: backoff, attempt limits, non-retryable errors, pausing and resuming."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import kinds, opts, wait_state
from workflows import Command, Context, Delayed, RetryPolicy
from workflows.errors import Blocked, CommandFailed, UnknownWorkflow
from workflows.testing import ServiceTimeout


@dataclass
class Stubborn(Command):
    """One step, then Delayed (Blocked with ``blocked``) on the first ``failures`` attempts."""

    failures: int = 1_000
    blocked: bool = False
    retry: ClassVar[RetryPolicy] = RetryPolicy(0.02, 2.0, 0.06)

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("svc", lambda: "done")
        if ctx.attempt <= self.failures:
            raise (Blocked if self.blocked else Delayed)(f"attempt {ctx.attempt}: no answer")
        return ctx.attempt

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        await ctx.step("undo", lambda: "undone")


@dataclass
class Limited(Stubborn):
    retry: ClassVar[RetryPolicy] = RetryPolicy(0.0, 1.0, 0.0, max_attempts=3)


@dataclass
class Pauses(Stubborn):
    retry: ClassVar[RetryPolicy] = RetryPolicy(0.0, 1.0, 0.0, max_attempts=2, on_exhausted="pause")


@dataclass
class PausesAtOnce(Stubborn):
    retry: ClassVar[RetryPolicy] = RetryPolicy(0.0, 1.0, 0.0, max_attempts=1, on_exhausted="pause")


@dataclass
class Refuses(Command):
    """Raises an error from Delayed that its policy names as not retryable."""

    retry: ClassVar[RetryPolicy] = RetryPolicy(0.0, 1.0, 0.0, non_retryable=("ServiceTimeout",))

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("svc", lambda: "done")
        try:
            raise Delayed("socket timeout")
        except Delayed as exc:
            raise ServiceTimeout("payments did not answer") from exc

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        await ctx.step("undo", lambda: "undone")


@dataclass
class Diverges(Command):
    """Its first step's service is named after the attempt: a replay diverges."""

    async def exec(self, ctx: Context) -> Any:
        await ctx.step(f"svc{min(ctx.attempt, 2)}", lambda: "done")
        raise Delayed("once more")




@pytest.mark.parametrize(("kw", "match"), [
    ({"initial_interval_s": -1}, "initial_interval_s"), ({"backoff": 0.5}, "backoff"),
    ({"max_interval_s": 0.1}, "max_interval_s"), ({"max_attempts": 0}, "max_attempts"),
    ({"non_retryable": "ValueError"}, "non_retryable"), ({"on_exhausted": "retry"}, "on_exhausted"),
    ({"backoff": float("inf")}, "backoff"),
])
def test_a_policy_is_validated(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**{"initial_interval_s": 1.0, "backoff": 2.0, "max_interval_s": 5.0, **kw})


def test_a_policy_is_frozen_and_names_errors_through_their_causes() -> None:
    policy = RetryPolicy(1.0, 2.0, 5.0, non_retryable=["builtins.KeyError"])  # type: ignore[arg-type]
    assert policy.non_retryable == ("builtins.KeyError",)
    with pytest.raises(AttributeError):
        policy.backoff = 3.0  # type: ignore[misc]
    try:
        try:
            raise KeyError("x")
        except KeyError as exc:
            raise Delayed("wrapped") from exc
    except Delayed as exc:
        assert policy.refuses(exc)
    assert not policy.refuses(Delayed("plain"))


async def test_backoff_grows_to_max_interval() -> None:
    c = LocalCoordinator(opts(jitter_s=0.0))
    await c.start()
    try:
        wid = await c.core.submit(Stubborn(failures=4))
        assert await c.core.result(wid, 5) == 5
        waits = [round(r["next_retry_at"] - r["t"], 6) for r in c.journal.read()
                 if r.get("w") == wid and r["k"] == "delayed"]
        assert waits == [0.02, 0.04, 0.06, 0.06]
    finally:
        await c.close()


async def test_max_attempts_fails_and_compensates(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Limited())
    with pytest.raises(CommandFailed, match="RetriesExhausted"):
        await coord.core.result(wid, 5)
    status = await coord.core.status(wid)
    assert status["state"] == "compensated" and status["attempts"] == 4  # three tries, one to compensate
    assert kinds(coord, wid).count("delayed") == 2 and "expired" in kinds(coord, wid)


async def test_non_retryable_error_fails_even_from_delayed(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Refuses())
    with pytest.raises(CommandFailed, match="ServiceTimeout"):
        await coord.core.result(wid, 5)
    assert (await coord.core.status(wid))["state"] == "compensated"
    assert "delayed" not in kinds(coord, wid)


async def test_exhausted_policy_pauses_until_resumed(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Pauses(failures=2))
    status = await wait_state(coord, wid, "paused")
    assert "max_attempts=2" in status["reason"] and "Delayed: attempt 2: no answer" in status["reason"]
    assert status["next_retry_at"] is None and coord.core.stats()["in_flight"] == 1
    await asyncio.sleep(0.1)
    assert (await coord.core.status(wid))["state"] == "paused"  # no timer runs it
    assert await coord.core.resume_workflow(wid) is True
    assert await coord.core.result(wid, 5) == 3
    assert await coord.core.resume_workflow(wid) is False  # a no-op unless paused
    with pytest.raises(UnknownWorkflow):
        await coord.core.resume_workflow("nope")


async def test_a_paused_workflow_is_not_in_the_suspension_backlog(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(PausesAtOnce(failures=1, blocked=True))
    await wait_state(coord, wid, "paused")
    for _ in range(100):
        if coord.core.mode.value == "normal":
            break
        await asyncio.sleep(0.01)
    assert coord.core.mode.value == "normal" and coord.core.stats()["in_flight"] == 1
    assert [r["mode"] for r in coord.journal.read() if r["k"] == "mode"] == ["suspended_slow", "normal"]


async def test_a_pause_survives_a_restart(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Pauses(failures=2))
    await wait_state(coord, wid, "paused")
    await coord.close()
    fresh = LocalCoordinator(coord.options)
    await fresh.start()
    try:
        await asyncio.sleep(0.1)
        status = await fresh.core.status(wid)
        assert status["state"] == "paused" and "max_attempts=2" in status["reason"]
        assert fresh.core.stats()["in_flight"] == 1
        assert await fresh.core.resume_workflow(wid)
        assert await fresh.core.result(wid, 5) == 3
    finally:
        await fresh.close()
        coord.journal.open()  # the fixture closes it again


async def test_non_determinism_at_replay_pauses_instead_of_compensating(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Diverges())
    status = await wait_state(coord, wid, "paused")
    assert status["reason"].startswith("NonDeterminism: step 0")
    assert "compensating" not in kinds(coord, wid) and kinds(coord, wid)[-1] == "paused"
