"""The supervisor's logic, without Ray: a facade over the parts that do the work.

`SupervisorCore` is driven by the Ray shell in `actors.supervisor` and, in unit
tests, by an in-process journal and pool. It owns the `WorkflowTable` (a cache of
the journal) and shares it, explicitly, with its parts, as Ray Serve's controller
delegates to its state managers:

- `Intake` (`intake`): admission under MaxCmds, submits, adoption of workflows the journal keeps;
- `Dispatcher` (`dispatcher`): the ready queue, free slots, running attempts, reports, requeues;
- `Parking` (`parking`): retry timers, deadlines, the suspension mode;
- `Queries` (`queries`): results, waiters, status, listings, replays;
- `Cancels` (`cancels`): an operator's cancel or termination of one workflow;
- `Signals` (`signals`): signals to waiting workflows, and their events;
- `Forks` (`forks`): new workflows that start from another one's outcomes;
- `Children` (`children`): the child workflows of ``ctx.child``, and their ends to their parents.

`start` rebuilds the table by folding the journal, then schedules each unfinished
command again before any new one is admitted. What survives a crash: everything
journaled. Idempotent: `submit` (same id, same command), `report` (a duplicate report
of an attempt is ignored), `start`.
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from actors import metrics as m
from actors.options import Options
from actors.records import Report
from actors.supervision.admission import Admission
from actors.supervision.cancels import Cancels
from actors.supervision.children import Children
from actors.supervision.dispatcher import Dispatcher
from actors.supervision.forks import Forks
from actors.supervision.intake import Intake
from actors.supervision.modes import Mode, Signal
from actors.supervision.parking import Parking
from actors.supervision.ports import JournalPort, PoolPort
from actors.supervision.queries import Queries
from actors.supervision.signals import Signals
from actors.workflow_state import FINISHED, State, Workflow, WorkflowTable

__all__ = ["JournalPort", "PoolPort", "SupervisorCore"]

log = structlog.get_logger("supervisor")


class SupervisorCore:
    """The supervisor's public methods, each delegated to the part that owns it."""

    def __init__(self, options: Options, journal: JournalPort, pool: PoolPort,
                 clock: Callable[[], float] = time.time, metrics: m.Metrics | None = None) -> None:
        self.options = options
        self.pool = pool
        self.clock = clock
        self.metrics = metrics or m.Metrics.off()
        self.incarnation = uuid.uuid4().hex
        self.table = WorkflowTable(options.result_cache_size)
        self.admission = Admission(options.max_cmds)
        self.started = asyncio.Event()
        self.queries = Queries(journal, self.table, self.started, self.metrics)
        self.parking = Parking(options, journal, self.table, lambda wid: self.dispatcher.enqueue(wid), clock,
                               self.metrics)
        self.dispatcher = Dispatcher(options, journal, pool, self.table, self.admission, self.parking,
                                     self._finished, self.incarnation, clock, self.metrics)
        self.intake = Intake(options, journal, self.table, self.admission, self.parking, self.dispatcher,
                             self.started, clock, self.metrics)
        self.cancels = Cancels(journal, pool, self.table, self.parking, self.dispatcher, clock)
        self.signals = Signals(journal, self.table, self.parking, self.queries, clock, options.max_payload_bytes)
        self.forks = Forks(options, journal, self.table, self.admission, self.intake, clock, self.metrics)
        self.children = Children(options, journal, self.table, self.admission, self.intake, self.signals, clock,
                                 self.metrics)
        self.metrics.source(self._sample)
        self._loops: list[asyncio.Task[Any]] = []

    @property
    def mode(self) -> Mode:
        return self.parking.mode

    @property
    def held(self) -> bool:
        return self.parking.held

    async def start(self) -> None:
        """Fold the journal, reschedule every unfinished command, then open intake."""
        await self.pool.reset(self.incarnation)
        offset = 0
        while True:
            page = await self.intake.journal.state(offset, 20_000)
            for d in page["workflows"]:
                wf = Workflow.from_dict(d)
                wf.outcomes, wf.compensations = [], []  # the journal holds them; attempts read them there
                self.table.put(wf)
            offset += len(page["workflows"])
            if not page["workflows"]:
                break
        self.parking.mode, self.parking.held = Mode(page["mode"]), page["held"]
        now = self.clock()
        for wf in self.table.unfinished():
            self.admission.force(1)
            self.intake.recover(wf, now)
        if not self.parking.retrying and not self.held and self.mode is not Mode.NORMAL:
            await self.parking.signal(Signal.DRAINED)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self.dispatcher.loop()), loop.create_task(self.parking.timer_loop()),
                       loop.create_task(self._forget_loop())]
        await self.children.recover()
        self.started.set()
        self.dispatcher.wake.set()
        self.parking.wake.set()
        log.info("supervisor_started", workflows=len(self.table.workflows), unfinished=self.admission.admitted,
                 mode=self.mode.value)

    def _sample(self, metrics: m.Metrics) -> None:
        """The gauges, read at each metrics flush rather than kept up to date per event."""
        metrics.gauge(m.IN_FLIGHT, self.admission.admitted)
        metrics.gauge(m.MAX_CMDS, self.options.max_cmds)
        metrics.gauge(m.MODE, m.MODES[self.mode.value])

    def _finished(self, workflow_id: str) -> None:
        self.queries.notify(workflow_id)
        self.children.ended(workflow_id)

    def close(self) -> None:
        for task in self._loops:
            task.cancel()
        self.children.close()
        self.dispatcher.close()

    async def _forget_loop(self) -> None:
        """Drop finished workflows past ``retention_s`` from the cache (the journal's
        snapshot drops them from storage). An id forgotten here and still kept by the
        journal stays reserved: the journal answers a submit of it (see `Intake`)."""
        period = min(max(self.options.retention_s / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(period)
            self.table.forget(self.clock() - self.options.retention_s)

    # --- the public methods ------------------------------------------------------------

    async def submit(self, cmd: Any, workflow_id: str | None = None, start_at: float | None = None) -> str:
        return (await self.intake.submit_many([cmd], [workflow_id], start_at))[0]

    async def submit_many(self, cmds: builtins.list[Any], workflow_ids: builtins.list[str | None] | None = None,
                          start_at: float | None = None) -> builtins.list[str]:
        """``start_at`` (epoch seconds): the workflows are journaled now and sleep until then."""
        return await self.intake.submit_many(cmds, workflow_ids, start_at)

    async def report(self, reports: builtins.list[Report]) -> None:
        await self.dispatcher.report(await self.children.take(reports, self.incarnation))

    async def result(self, workflow_id: str, timeout_s: float | None = None) -> Any:
        return await self.queries.result(workflow_id, timeout_s)

    async def wait(self, workflow_ids: builtins.list[str], timeout_s: float | None = None) -> dict[str, Any]:
        return await self.queries.wait(workflow_ids, timeout_s)

    async def status(self, workflow_id: str) -> dict[str, Any]:
        return await self.queries.status(workflow_id)

    async def list(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return await self.queries.list(state, limit)

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        return await self.queries.outcomes(service, since_seq, limit)

    async def page(self, state: str | None = None, type_part: str | None = None, cursor: str | None = None,
                   limit: int = 50) -> dict[str, Any]:
        """Workflows by cursor, in flight first, then finished ones, the last to end first (`Queries.page`)."""
        return await self.queries.page(state, type_part, cursor, limit)

    async def finished_counts(self) -> dict[str, int]:
        """The finished workflows the journal keeps, by state (`Queries.finished_counts`)."""
        return await self.queries.finished_counts()

    async def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        """The journaled records of a workflow's last run, in journal order (`Queries.history`)."""
        return await self.queries.history(workflow_id)

    def stats(self, kept: dict[str, int] | None = None) -> dict[str, Any]:
        """Mode, intake and counts by state; with ``kept`` (`finished_counts`), the finished
        states count every workflow the journal keeps, not only those cached here."""
        counts = {s.value: 0 for s in State}
        for wf in self.table.workflows.values():
            counts[wf.state.value] += 1
        if kept is not None:
            for state in FINISHED:
                counts[state.value] = max(counts[state.value], kept.get(state.value, 0))
        return {"mode": self.mode.value, "held": self.held, "in_flight": self.admission.admitted,
                "max_cmds": self.options.max_cmds, "waiting_admission": self.admission.waiting,
                "running": len(self.dispatcher.running), "parked": len(self.parking.timers), "counts": counts,
                "finished_since_start": self.queries.ended}

    async def suspend(self) -> dict[str, Any]:
        """Hold intake closed until `resume`; journaled before it takes effect."""
        await self.parking.signal(Signal.SUSPEND, held=True)
        return self.stats()

    async def resume(self) -> dict[str, Any]:
        """Release the operator's hold; journaled before it takes effect."""
        await self.parking.signal(Signal.RESUME, held=False)
        return self.stats()

    async def resume_workflow(self, workflow_id: str) -> bool:
        """Run a ``paused`` workflow again from its last outcome; journaled, idempotent,
        False (a no-op) unless it is paused."""
        await self.started.wait()
        return await self.parking.resume_workflow(workflow_id)

    async def retry_now(self, workflow_id: str) -> bool:
        """Retry a ``delayed`` or ``blocked`` workflow at once, not at its retry time;
        journaled, idempotent; False (a no-op) in any other state; `UnknownWorkflow`."""
        await self.started.wait()
        wf = self.table.workflows.get(workflow_id) or await self.queries.get(workflow_id)
        return await self.parking.retry_now(wf)

    async def fork(self, workflow_id: str, from_step: int, new_workflow_id: str) -> str:
        """A new workflow ``new_workflow_id``, with ``workflow_id``'s type and fields and its
        outcomes ``[0, from_step)`` copied, that runs on from ``from_step``; journaled,
        idempotent (a repeat answers the same id). See `actors.supervision.forks`."""
        await self.started.wait()
        return await self.forks.fork(workflow_id, from_step, new_workflow_id)

    async def cancel(self, workflow_id: str, reason: str = "") -> bool:
        """Stop a workflow and compensate it (end state ``cancelled``); journaled first.
        False (a no-op) once it finished or was cancelled already. The children it waits
        for (``ctx.child``) are cancelled too."""
        await self.started.wait()
        done = await self.cancels.cancel(workflow_id, reason)
        if done:
            await self.children.stop_children(workflow_id, reason, lambda cid, why: self.cancels.cancel(cid, why))
        return done

    async def terminate(self, workflow_id: str, reason: str = "") -> bool:
        """Stop a workflow without compensating it (end state ``terminated``); as `cancel`."""
        await self.started.wait()
        done = await self.cancels.cancel(workflow_id, reason, terminate=True)
        if done:
            await self.children.stop_children(workflow_id, reason,
                                              lambda cid, why: self.cancels.cancel(cid, why, terminate=True))
        return done

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> bool:
        """Journal the signal ``name`` once per workflow (the first payload wins) and wake a
        workflow waiting for it; False (a no-op) for a repeat or a finished workflow."""
        await self.started.wait()
        return await self.signals.signal(workflow_id, name, payload)

    async def get_event(self, workflow_id: str, key: str) -> Any:
        """The last value ``ctx.set_event(key, value)`` journaled, or None."""
        await self.started.wait()
        return await self.signals.get_event(workflow_id, key)
