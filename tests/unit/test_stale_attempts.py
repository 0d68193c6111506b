"""SPEC §4.2, 4.3, 4.10 and 4.13: an attempt of a workflow the journal has ended meanwhile.

A workflow whose end is durable but whose attempt was never reported (its actor died
before reporting, or its ``started`` append failed) is finished from what the journal
holds, never dispatched again from the supervisor's cache; a late writer's records
are answered with the journal's end, so what it reports is what is durable.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator, LocalJournal
from actors.journal import MemoryBackend
from actors.options import Options
from actors.records import Completed, Dispatch, Ended, Kind, Record, Report, Started, Step, Submitted
from actors.runner import Runner
from workflows.command import Command
from workflows.context import Context
from workflows.errors import CommandFailed, JournalUnavailable, WorkerLost

FAST: dict[str, Any] = {"slow_retry_interval_s": 0.02, "fast_retry_interval_s": 0.0, "jitter_s": 0.0,
                        "gateway": None}


def opts(**kw: Any) -> Options:
    return Options(storage=f"mem://{uuid.uuid4().hex}", **{**FAST, **kw})


def teardown_module() -> None:
    for name in list(MemoryBackend._stores):
        MemoryBackend.drop(name)


@dataclass
class Collects(Command):
    """Three steps whose values name the attempt that ran them; returns them."""

    steps: int = 3

    async def exec(self, ctx: Context) -> Any:
        return [await ctx.step("svc", lambda i=i: f"attempt{ctx.attempt}-{i}") for i in range(self.steps)]


@dataclass
class CollectsThenFails(Command):
    """One step, then fails; its compensation undoes the step."""

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("svc", lambda: f"attempt{ctx.attempt}")
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        await ctx.step("undo", lambda: f"undone-by-{ctx.attempt}")


def lose_reports(c: LocalCoordinator, times: int) -> list[Report]:
    """The next ``times`` attempts run to their end, then their actor dies before reporting."""
    dropped: list[Report] = []
    run = c.pool.run

    async def drop(report: Report) -> None:
        dropped.append(report)

    async def run_then_die(worker: int, items: list[Dispatch]) -> None:
        if len(dropped) >= times:
            await run(worker, items)
            return
        runner = c.pool.runners[worker]
        report, runner._report = runner._report, drop
        try:
            await run(worker, items)
        finally:
            runner._report = report
        raise WorkerLost(f"worker {worker} died before reporting")

    c.pool.run = run_then_die  # type: ignore[method-assign]
    return dropped


def records(c: LocalCoordinator, wid: str) -> list[dict[str, Any]]:
    return [r for r in c.journal.read() if r.get("w") == wid]


@pytest.mark.parametrize("command", [Collects(), CollectsThenFails()])
async def test_an_attempt_lost_after_its_end_is_durable_is_finished_from_the_journal(command: Command) -> None:
    c = LocalCoordinator(opts(command_actors=1))
    await c.start()
    try:
        dropped = lose_reports(c, times=1)
        wid = await c.core.submit(command)
        if isinstance(command, Collects):
            assert await c.core.result(wid, 5) == ["attempt1-0", "attempt1-1", "attempt1-2"]
        else:
            with pytest.raises(CommandFailed, match="attempt 1 failed"):
                await c.core.result(wid, 5)
        assert len(dropped) == 1
        kinds = [r["k"] for r in records(c, wid)]
        assert kinds.count("started") == 1, "dispatched again after its end was durable"
        end = records(c, wid)[-1]
        status = await c.core.status(wid)
        assert status["state"] == end["k"] and status["attempts"] == 1
        assert not c.core.dispatcher.running and c.core.dispatcher.free == [c.options.slots_per_actor]
        assert c.core.admission.admitted == 0
    finally:
        await c.close()
    again = LocalCoordinator(c.options)  # what a restart answers is what was answered before
    await again.start()
    try:
        if isinstance(command, Collects):
            assert await again.core.result(wid, 5) == ["attempt1-0", "attempt1-1", "attempt1-2"]
    finally:
        await again.close()


async def test_a_failed_started_append_after_a_durable_end_answers_the_journal_result() -> None:
    c = LocalCoordinator(opts(command_actors=1))
    runner = c.pool.runners[0]
    append = runner._append
    failed: list[Record] = []

    async def started_fails_once(recs: list[Record]) -> list[Any]:
        if not failed and isinstance(recs[0], Started):
            failed.append(recs[0])
            raise JournalUnavailable("the journal leader did not answer")
        return await append(recs)

    runner._append = started_fails_once
    await c.start()
    try:
        wid = await c.core.submit(Collects())
        assert await c.core.result(wid, 5) == ["attempt1-0", "attempt1-1", "attempt1-2"]
        assert failed and [r["k"] for r in records(c, wid)].count("outcome") == 3
        assert "started" not in [r["k"] for r in records(c, wid)]
    finally:
        await c.close()


async def test_a_stale_attempt_reports_the_journal_end_and_journals_nothing() -> None:
    c = LocalCoordinator(opts(command_actors=1))
    await c.start()
    try:
        wid = await c.core.submit(Collects())
        result = await c.core.result(wid, 5)
        before = c.journal.next_seq
        reports: list[Report] = []

        async def report(rep: Report) -> None:
            reports.append(rep)

        port = LocalJournal(c.journal)
        stale = Runner(c.pool.runners[0]._append, port.live_steps, report, None, c.options.max_payload_bytes)
        wf = c.core.table.workflows[wid]
        await stale.run([Dispatch(wid, wf.type, wf.fields, 2, "old")])
        assert len(reports) == 1
        assert reports[0].end is Kind.COMPLETED and reports[0].result == result
        assert c.journal.next_seq == before
    finally:
        await c.close()


async def test_the_journal_answers_records_of_an_ended_workflow_with_its_end() -> None:
    c = LocalCoordinator(opts())
    await c.start()
    try:
        j = c.journal
        await j.append([Submitted("a", "T", {}, 1.0)])
        step = Step("a", 0, "svc", None)
        assert await j.append([step, replace(step, value="second")]) == [None, None]  # §4.2: the held value
        end = Completed("a", {"r": 1}, 2.0)
        answers = await j.append([end, replace(end, result=2), replace(step, step=1, value="late")])
        assert answers[0] is None
        assert answers[1] == answers[2] == Ended(Kind.COMPLETED, result={"r": 1}, error=None)
        assert isinstance(answers[2], Ended)
        assert await j.append([Started("a", 3, 3.0)]) == [answers[1]]
        assert await j.append([replace(step, workflow_id="unknown")]) == [Ended(None, result=None, error=None)]
        assert [r["k"] for r in j.read() if r.get("w") == "a"] == ["submitted", "outcome", "completed"]
        assert j.live_steps(["a", "unknown"]) == {"a": answers[1]}
    finally:
        await c.close()
