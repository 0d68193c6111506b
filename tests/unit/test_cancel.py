"""Cancel and terminate one workflow: pending, parked, paused, running, finished; across a restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import opts
from tests.unit.test_policy import PausesAtOnce, Stubborn, kinds, wait_state
from workflows import Command, Context, RetryPolicy
from workflows.errors import CommandFailed, UnknownWorkflow

GATES: dict[str, asyncio.Event] = {}
CALLS: Counter[tuple[str, str]] = Counter()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


@dataclass
class Tracked(Command):
    """Step ``a``, waits for its gate ``key``, then step ``b``; undoes each with two
    steps, waiting between them for the gate ``key/undo``. Every call is counted."""

    key: str

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("a", self._call, "a")
        await gate(self.key).wait()
        await ctx.step("b", self._call, "b")
        return "done"

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        await ctx.step("undo-a", self._call, "undo-a")
        await gate(f"{self.key}/undo").wait()
        await ctx.step("undo-b", self._call, "undo-b")

    def _call(self, name: str) -> str:
        CALLS[(self.key, name)] += 1
        return name


@dataclass
class Parks(Stubborn):
    retry: ClassVar[RetryPolicy] = RetryPolicy(30.0, 1.0, 30.0)


def calls(key: str) -> dict[str, int]:
    return {name: n for (k, name), n in CALLS.items() if k == key}


async def running(c: LocalCoordinator, key: str) -> str:
    wid = await c.core.submit(Tracked(key))
    for _ in range(500):
        if calls(key).get("a"):
            return wid
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} never ran")


async def fails_cancelled(c: LocalCoordinator, wid: str, state: str) -> None:
    with pytest.raises(CommandFailed, match="Cancelled"):
        await c.core.result(wid, 5)
    status = await c.core.status(wid)
    assert status["state"] == state and status["error"]["type"] == "workflows.errors.Cancelled"


@pytest.mark.parametrize("terminate", [False, True])
async def test_a_running_workflow_stops_at_its_next_step(coord: LocalCoordinator, terminate: bool) -> None:
    key = f"running-{terminate}"
    wid = await running(coord, key)
    stop = coord.core.terminate if terminate else coord.core.cancel
    assert await stop(wid, "changed my mind") is True
    gate(key).set()
    gate(f"{key}/undo").set()
    await fails_cancelled(coord, wid, "terminated" if terminate else "cancelled")
    undone = {} if terminate else {"undo-a": 1, "undo-b": 1}
    assert calls(key) == {"a": 1, **undone}  # step b was never called
    assert kinds(coord, wid).count("cancel") == 1 and coord.core.stats()["in_flight"] == 0
    assert "changed my mind" in (await coord.core.status(wid))["error"]["message"]
    assert await stop(wid) is False  # finished: a no-op


@pytest.mark.parametrize("terminate", [False, True])
async def test_a_pending_workflow_leaves_its_queue(terminate: bool) -> None:
    c = LocalCoordinator(opts(max_cmds=3))
    await c.start()
    try:
        key = f"pending-{terminate}"
        busy = [await running(c, f"{key}-{i}") for i in range(2)]  # both slots taken
        wid = await c.core.submit(Tracked(key))
        assert (await c.core.status(wid))["state"] == "pending"
        assert await (c.core.terminate if terminate else c.core.cancel)(wid) is True
        if terminate:  # ended by the supervisor: no slot needed
            await fails_cancelled(c, wid, "terminated")
            assert c.core.stats()["in_flight"] == 2
        for i, b in enumerate(busy):  # a cancelled one compensates in a slot, ahead of the others
            gate(f"{key}-{i}").set()
            assert await c.core.result(b, 5) == "done"
        await fails_cancelled(c, wid, "terminated" if terminate else "cancelled")
        assert calls(key) == {} and c.core.stats()["in_flight"] == 0  # nothing ran
    finally:
        await c.close()


@pytest.mark.parametrize("terminate", [False, True])
@pytest.mark.parametrize("command", [Parks(), PausesAtOnce(failures=1)])
async def test_a_parked_or_paused_workflow_stops_at_once(coord: LocalCoordinator, terminate: bool,
                                                          command: Command) -> None:
    wid = await coord.core.submit(command)
    await wait_state(coord, wid, "delayed" if isinstance(command, Parks) else "paused")
    assert await (coord.core.terminate if terminate else coord.core.cancel)(wid, "stop") is True
    await fails_cancelled(coord, wid, "terminated" if terminate else "cancelled")
    assert kinds(coord, wid).count("compensation") == (0 if terminate else 1)
    assert coord.core.stats()["in_flight"] == 0 and coord.core.stats()["parked"] == 0


async def test_cancel_is_idempotent_and_a_no_op_once_finished(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Parks())
    await wait_state(coord, wid, "delayed")
    first = await asyncio.gather(coord.core.cancel(wid), coord.core.cancel(wid))
    assert sorted(first) == [False, True]
    assert await coord.core.cancel(wid) is False and await coord.core.terminate(wid) is False
    await fails_cancelled(coord, wid, "cancelled")
    assert kinds(coord, wid).count("cancel") == 1
    done = await coord.core.submit(Stubborn(failures=0))
    assert await coord.core.result(done, 5) == 1
    assert await coord.core.cancel(done) is False and await coord.core.terminate(done) is False
    assert (await coord.core.status(done))["state"] == "completed"
    with pytest.raises(UnknownWorkflow):
        await coord.core.cancel("nope")


async def test_a_cancel_survives_a_restart_during_its_compensation(coord: LocalCoordinator) -> None:
    key = "restart"
    wid = await running(coord, key)
    assert await coord.core.cancel(wid) is True
    gate(key).set()
    for _ in range(500):
        if calls(key).get("undo-a"):
            break
        await asyncio.sleep(0.01)
    assert calls(key) == {"a": 1, "undo-a": 1}
    await coord.close()
    gate(f"{key}/undo").set()
    fresh = LocalCoordinator(coord.options)
    await fresh.start()
    try:
        await fails_cancelled(fresh, wid, "cancelled")
        assert calls(key) == {"a": 1, "undo-a": 1, "undo-b": 1}  # every compensation step once
        assert fresh.core.stats()["in_flight"] == 0
    finally:
        await fresh.close()
        coord.journal.open()  # the fixture closes it again


async def test_a_terminate_journaled_before_a_restart_ends_the_workflow(coord: LocalCoordinator) -> None:
    key = "restart-terminate"
    wid = await running(coord, key)
    coord.pool.runners[0].stop = lambda items: None  # type: ignore[method-assign]  # the message is lost
    coord.pool.runners[1].stop = lambda items: None  # type: ignore[method-assign]
    assert await coord.core.terminate(wid) is True
    await coord.close()
    fresh = LocalCoordinator(coord.options)
    await fresh.start()
    try:
        await fails_cancelled(fresh, wid, "terminated")
        assert calls(key) == {"a": 1}
    finally:
        await fresh.close()
        coord.journal.open()
