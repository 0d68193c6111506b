"""SPEC §4.5, 4.7, 4.10 and §3 on the core, in one process: deadlines compensate and
leave the backlog, any dispatch failure requeues, replays include compensations,
timed-out waits leave nothing behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from actors.inprocess import LocalCoordinator, LocalJournal
from actors.journal import MemoryBackend
from actors.options import Options
from tests.unit.local import FAST, opts
from workflows.command import Command
from workflows.context import Context
from workflows.errors import CommandFailed, Delayed, JournalUnavailable
from workflows.testing import Echo, Flaky, Impatient


async def until(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def teardown_module() -> None:
    for name in list(MemoryBackend._stores):
        MemoryBackend.drop(name)


@dataclass
class BookThenStall(Command):
    """Books ``flights``, then its next service never answers; undoes the booking."""

    deadline_s: ClassVar[float | None] = 0.25
    trip: str = "t"

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("flights", lambda: f"booked-{self.trip}")
        raise Delayed("hotels did not answer")

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        for outcome in reversed(ctx.outcomes):
            await ctx.step(outcome.service, lambda o=outcome: f"cancelled-{o.value}")


@dataclass
class BookThenFail(Command):
    """Books ``flights``, then fails; undoes the booking on the same service."""

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("flights", lambda: "booked")
        raise ValueError("payment refused")

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        await ctx.step("flights", lambda: "cancelled")


# --- deadlines ------------------------------------------------------------------------------


async def test_a_deadline_failure_leaves_the_backlog_and_intake_reopens(coord: LocalCoordinator) -> None:
    with pytest.raises(CommandFailed, match="deadline_s"):
        await coord.core.result(await coord.core.submit(Impatient()), 5)
    assert not coord.core.parking.retrying
    blocked = await coord.core.submit(Flaky(failures=1, kind="blocked"))
    await coord.core.result(blocked, 5)
    await until(lambda: coord.core.mode.value == "normal")
    assert await coord.core.result(await coord.core.submit(Echo("open")), 5) == "open"


async def test_a_deadline_failure_while_suspended_drains_the_backlog(coord: LocalCoordinator) -> None:
    late = await coord.core.submit(Impatient())
    blocked = await coord.core.submit(Flaky(failures=3, kind="blocked"))
    with pytest.raises(CommandFailed, match="deadline_s"):
        await coord.core.result(late, 5)
    await coord.core.result(blocked, 5)
    await until(lambda: coord.core.mode.value == "normal")
    assert not coord.core.parking.retrying and coord.core.stats()["in_flight"] == 0


async def test_a_deadline_failure_compensates_what_was_done(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(BookThenStall("t-9"))
    with pytest.raises(CommandFailed, match=r"deadline_s=0\.25") as info:
        await coord.core.result(wid, 5)
    assert info.value.error_type.endswith("DeadlineExceeded")
    assert (await coord.core.status(wid))["state"] == "compensated"
    records = [r for r in coord.journal.read() if r.get("w") == wid]
    expired = [r for r in records if r["k"] == "expired"]  # the supervisor's; the runner compensates
    assert len(expired) == 1 and expired[0]["error"]["type"].endswith("DeadlineExceeded")
    assert not any(r["k"] == "compensating" for r in records)
    assert [r["value"] for r in records if r["k"] == "compensation"] == ["cancelled-booked-t-9"]
    assert records[-1]["k"] == "compensated" and not coord.core.parking.retrying


async def test_an_expired_workflow_compensates_after_a_restart(tmp_path: Path) -> None:
    c = LocalCoordinator(Options(storage=str(tmp_path), **FAST))
    await c.start()
    wid = await c.core.submit(BookThenStall("t-r"))
    await until(lambda: any(r["k"] == "expired" for r in c.journal.read()))
    await c.close()
    c = LocalCoordinator(Options(storage=str(tmp_path), **FAST))
    await c.start()
    with pytest.raises(CommandFailed, match=r"DeadlineExceeded|deadline_s"):
        await c.core.result(wid, 5)
    assert (await c.core.status(wid))["state"] == "compensated"
    await c.close()


# --- dispatch failures ----------------------------------------------------------------------


class ObjectLost(Exception):
    """Stands for Ray's errors of a call (object lost, out of memory, task cancelled)."""


async def test_any_dispatch_error_requeues_the_attempts(coord: LocalCoordinator) -> None:
    coord.pool.fail(0, ObjectLost("object lost"))
    coord.pool.fail(1, MemoryError("out of memory"))
    coord.pool.fail(0, asyncio.CancelledError())
    ids = await coord.core.submit_many([Echo(i) for i in range(4)])
    assert [await coord.core.result(w, 5) for w in ids] == [0, 1, 2, 3]
    assert not coord.core.dispatcher.running and coord.core.dispatcher.free == [1, 1]


class FlakyLiveSteps(LocalJournal):
    """A journal whose ``live_steps`` fails ``failures`` times first."""

    def __init__(self, inner: LocalJournal, failures: int) -> None:
        super().__init__(inner.journal)
        self.failures = failures

    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Any]:
        if self.failures > 0:
            self.failures -= 1
            raise JournalUnavailable("leader did not answer")
        return await super().live_steps(workflow_ids)


async def test_a_failing_live_steps_during_requeue_is_asked_again() -> None:
    c = LocalCoordinator(opts(slow_retry_interval_s=0.01))
    port = FlakyLiveSteps(LocalJournal(c.journal), failures=2)
    c.core.dispatcher.journal = port  # the requeue asks through it
    await c.start()
    try:
        c.pool.lost.update({0, 1})
        wid = await c.core.submit(Echo("again"))
        assert await c.core.result(wid, 5) == "again"
        assert port.failures == 0 and not c.core.dispatcher.running and c.core.dispatcher.free == [1, 1]
    finally:
        await c.close()


# --- replays include compensations ----------------------------------------------------------


async def test_outcomes_replay_compensations_in_journal_order(tmp_path: Path) -> None:
    c = LocalCoordinator(Options(storage=str(tmp_path), **FAST))
    await c.start()
    kept = await c.core.submit(Echo("x", steps=0))
    wid = await c.core.submit(BookThenFail())
    with pytest.raises(CommandFailed):
        await c.core.result(wid, 5)
    await c.core.result(kept, 5)
    replay = await c.core.outcomes("flights")
    assert [(r["kind"], r["value"], r["workflow_id"]) for r in replay] == [
        ("outcome", "booked", wid), ("compensation", "cancelled", wid)]
    assert replay[0]["seq"] < replay[1]["seq"]
    assert await c.core.outcomes("flights", replay[0]["seq"] + 1) == replay[1:]
    await c.journal.snapshot()  # the same from a snapshot, after a restart
    await c.close()
    c = LocalCoordinator(Options(storage=str(tmp_path), **FAST))
    await c.start()
    assert await c.core.outcomes("flights") == replay
    await c.close()


# --- waits that time out ----------------------------------------------------------------------


async def test_timed_out_results_leave_no_waiter(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Flaky(failures=1000))
    for _ in range(5):
        with pytest.raises(TimeoutError):
            await coord.core.result(wid, 0.01)
    assert coord.core.queries.waiters == {}
    waiting = asyncio.ensure_future(coord.core.result(wid))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await coord.core.wait([wid], 0.01) == {}
    assert coord.core.queries.waiters == {}


# --- errors too big to journal whole ---------------------------------------------------------


@dataclass
class FailsLoudly(Command):
    """Fails with a message bigger than a journal record."""

    async def exec(self, ctx: Context) -> Any:
        raise ValueError("x" * (70 << 20))


async def test_an_error_too_big_to_journal_is_cut_and_the_command_fails(coord: LocalCoordinator) -> None:
    with pytest.raises(CommandFailed, match="characters cut") as info:
        await coord.core.result(await coord.core.submit(FailsLoudly()), 10)
    assert len(info.value.message) < 70 << 10


# --- the operator's mode is journaled before it takes effect ----------------------------------


async def test_an_operator_resume_that_cannot_be_journaled_changes_nothing() -> None:
    c = LocalCoordinator(opts())
    await c.start()
    await c.core.suspend()
    append = c.journal.append

    async def down(records: list[Any]) -> list[Any]:
        raise JournalUnavailable("the journal leader did not answer")

    c.journal.append = down  # type: ignore[method-assign]
    with pytest.raises(JournalUnavailable):
        await c.core.resume()
    assert (c.core.mode.value, c.core.held) == ("suspended_slow", True)  # as the journal holds it
    c.journal.append = append  # type: ignore[method-assign]
    await c.close()
    again = LocalCoordinator(c.options)
    await again.start()
    try:
        assert (again.core.mode.value, again.core.held) == ("suspended_slow", True)
        await again.core.resume()
        assert (again.core.mode.value, again.core.held) == ("normal", False)
    finally:
        await again.close()
