"""A dispatch batch Ray delivers twice (it could not say whether the first call ran, so
the pool sends it again to the restarted actor): the runner runs each attempt once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from actors.records import Dispatch, Kind, Record, Report
from actors.runner import Runner
from workflows.command import Command, encode_command
from workflows.context import Context

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
