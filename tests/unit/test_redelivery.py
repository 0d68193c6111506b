"""A dispatch batch Ray delivers twice (it could not say whether the first call ran, so
the pool sends it again to the restarted actor): the runner runs each attempt once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import pytest

from actors.records import Dispatch, Kind, Record, Report
from actors.runner import Runner
from workflows.command import Command, encode_command
from workflows.context import Context
from workflows.errors import WorkerLost

CALLS: list[str] = []


@dataclass
class Counted(Command):
    """Two slow steps, each counting its call."""

    async def exec(self, ctx: Context) -> Any:
        return [await ctx.step("svc", self.call, ctx.key()) for _ in range(2)]

    async def call(self, key: str) -> str:
        CALLS.append(key)
        await asyncio.sleep(0.05)
        return key


async def test_a_batch_delivered_twice_runs_each_attempt_once_and_both_calls_wait_for_it() -> None:
    CALLS.clear()
    journal: list[Record] = []
    reports: list[Report] = []

    async def append(records: list[Record]) -> list[Any]:
        journal.extend(records)
        return [None] * len(records)

    async def live_steps(ids: list[str]) -> dict[str, Any]:
        return {w: ([], []) for w in ids}

    async def report(rep: Report) -> None:
        reports.append(rep)

    runner = Runner(append, live_steps, report, None, 1 << 20)
    name, fields = encode_command(Counted(), 1 << 20)
    item = Dispatch("w-1", name, fields, 1, "inc", fresh=True)
    first = asyncio.create_task(runner.run([item]))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(runner.run([replace(item, fresh=False)]))
    await asyncio.sleep(0.01)
    assert not second.done()  # it waits for the attempt the first copy runs
    await asyncio.gather(first, second)
    await runner.run([replace(item, fresh=False)])  # a late copy of a finished attempt: nothing runs
    assert CALLS == ["w-1/0", "w-1/1"]
    assert [r.end for r in reports] == [Kind.COMPLETED]
    await runner.run([replace(item, attempt=2, fresh=False)])  # a new attempt runs
    assert len(reports) == 2


class FlakyHandle:
    """A CommandActor handle whose ``run`` calls raise the given errors, then succeed."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        self.sent: list[list[Dispatch]] = []
        self.run = self

    def remote(self, items: list[Dispatch]) -> Any:
        self.sent.append(items)
        error = self.errors.pop(0) if self.errors else None

        async def answer() -> None:
            if error is not None:
                raise error

        return answer()


async def test_a_batch_for_an_actor_being_restarted_goes_to_it_again_reading_its_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from actors import pools
    from actors.options import Options

    monkeypatch.setattr(pools, "UNAVAILABLE_RETRY_S", 0.0)
    pool = pools.RayPools(Options(gateway=None), None, None)
    item = Dispatch("w-1", "t:T", {}, 1, "inc", fresh=True)
    handle = FlakyHandle([ActorUnavailableError("The actor is restarting", None)] * 2)
    pool.workers.append(pools.Worker(handle, "d", "command-d-1"))
    await pool.run(0, [item])
    assert [[i.fresh for i in batch] for batch in handle.sent] == [[True], [False], [False]]
    dead = FlakyHandle([ActorDiedError()])
    pool.workers.append(pools.Worker(dead, "d", "command-d-2"))
    with pytest.raises(WorkerLost):  # gone for good: its attempts go elsewhere
        await pool.run(1, [item])
    assert len(dead.sent) == 1
