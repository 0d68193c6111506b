"""Cancel and terminate: an operator stops one workflow.

`Cancels` is a part of `actors.supervision.supervisor.SupervisorCore`. The request is
journaled first (a `Cancel` record); its fold makes a parked or paused workflow
pending again, with the `Cancelled` error to compensate. Then:

- a pending one (parked or paused ones are, now) leaves its queue or timer at once: a
  cancelled one is dispatched to compensate; a terminated one ends here (the
  supervisor journals its ``terminated`` record);
- a running one is told through the pool (`PoolPort.stop`): its attempt raises
  `Cancelled` at its next step boundary; the runner compensates (unless terminated)
  and journals the end, ``cancelled`` or ``terminated``.

Guarantees: a no-op (False) on a finished workflow and on one already cancelled; a
restart acts on a journaled request again (every dispatch of the workflow carries
it), so a compensation a cancel started ends ``cancelled`` whatever crashes meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from actors.records import Cancel, Ended, Kind, Stopped
from actors.supervision.dispatcher import Dispatcher
from actors.supervision.parking import Parking
from actors.supervision.ports import JournalPort, PoolPort
from actors.workflow_state import State, Workflow, WorkflowTable
from workflows.errors import JournalError, UnknownWorkflow

log = structlog.get_logger("supervisor")


class Cancels:
    """Operators' cancels and terminations of single workflows."""

    def __init__(self, journal: JournalPort, pool: PoolPort, table: WorkflowTable, parking: Parking,
                 dispatcher: Dispatcher, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.pool = pool
        self.table = table
        self.parking = parking
        self.dispatcher = dispatcher
        self.clock = clock
        self.asking: set[str] = set()
        """Ids whose request is being journaled: a concurrent one is a no-op."""

    async def cancel(self, workflow_id: str, reason: str = "", terminate: bool = False) -> bool:
        """Journal the request, then stop the workflow; True once the request is journaled,
        False (nothing done) if it finished or was cancelled already."""
        wf = self.table.workflows.get(workflow_id)
        if wf is None:
            if await self.journal.lookup([workflow_id]):
                return False  # finished, out of this cache
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        if wf.state.finished or wf.stop or workflow_id in self.asking:
            return False
        record = Cancel(workflow_id, terminate, reason, self.clock())
        self.asking.add(workflow_id)
        try:
            answer = (await self.journal.append([record]))[0]
        finally:
            self.asking.discard(workflow_id)
        if isinstance(answer, Ended):
            return False  # it ended meanwhile: the journal holds its end
        if wf.state.finished:
            return True  # its end was journaled after the request: it stands
        self.table.apply(record)
        log.info("workflow_cancel_requested", workflow_id=workflow_id, terminate=terminate, reason=reason,
                 state=wf.state.value)
        await self._act(wf)
        return True

    async def _act(self, wf: Workflow) -> None:
        if wf.state is State.RUNNING:
            slot = self.dispatcher.running.get(wf.id)
            if slot is not None:
                try:
                    await self.pool.stop(slot[0], [(wf.id, wf.stop, wf.error or {})])
                except Exception as exc:  # the attempt ends anyway; a lost one is dispatched again, stopping
                    log.warning("cancel_not_delivered", workflow_id=wf.id, error=repr(exc))
            return
        self.parking.done(wf.id)
        if wf.stop == "cancel":
            self.dispatcher.enqueue(wf.id, first=True)
        else:
            await self._terminate(wf)
        try:
            await self.parking.settle(False, False)  # the backlog may be empty now
        except JournalError as exc:  # the next report moves the mode on
            log.warning("mode_not_journaled", error=repr(exc))

    async def _terminate(self, wf: Workflow) -> None:
        """End a pending workflow ``terminated``; held out of dispatch while it is journaled."""
        self.dispatcher.held.add(wf.id)
        try:
            answer = (await self.journal.append([Stopped(wf.id, wf.error or {}, self.clock(), True)]))[0]
        except BaseException:
            self.dispatcher.enqueue(wf.id)  # its dispatch ends it: the runner journals the end
            raise
        finally:
            self.dispatcher.held.discard(wf.id)
        if wf.state is not State.PENDING:
            return
        if isinstance(answer, Ended) and answer.kind is not None:
            self.dispatcher.finish(wf, answer.kind, answer.result, answer.error)
        else:
            self.dispatcher.finish(wf, Kind.TERMINATED, None, wf.error)
