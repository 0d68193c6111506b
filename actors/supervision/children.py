"""Child workflows (``ctx.child``): `Children` is a part of `SupervisorCore`.

A parent's ``ctx.child(cmd)`` journals the child's id as a step, then parks its attempt
(state ``waiting``, for the signal ``CHILD_SIGNAL + child id``) with the child's command
in its report. Before that report parks the parent, `take` submits the child: its
``submitted`` record is durable before the parent's ``waiting`` record, so a parent
never waits for a child that is not journaled. When the child ends, its end
(``{"id", "state", "result", "error"}``) is journaled as that signal of the parent
(`Signals`), which wakes it; its ``ctx.child`` step journals the end as its outcome.

Durable and submitted once: the child's id is journaled before it is submitted, and a
submit of a known id is answered by the journal (`Known`), never run twice; a parent
that runs again (a crash before its ``waiting`` record) asks again and finds the child,
running or ended. A restart runs each parent that waits for a child again (`recover`):
its replay asks again, and so learns of an end that was not journaled to it.

MaxCmds: a child is admitted at once, counted against MaxCmds but never waiting for
room (``in_flight`` may pass ``max_cmds`` by the children of waiting parents), and
submitted also while intake is suspended. Its parent keeps its own slot while it
waits, so a child that waited for room could wait forever once every slot is held by
a parent waiting on a child; new submits wait until ``in_flight`` is under the limit.
A parent waiting on a child gives its CommandActor slot back. A child runs on its
parent's deployment (the code that made the command has its type).

Cancelling (terminating) a parent that waits for a child cancels (terminates) the
child too (`stop_children`): the parent compensates what it did, the child what it did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import msgpack
import structlog

from actors.metrics import SUBMITTED, Metrics
from actors.options import Options
from actors.records import Kind, Known, Report, Submitted
from actors.supervision.admission import Admission
from actors.supervision.intake import Intake
from actors.supervision.ports import JournalPort
from actors.supervision.signals import Signals
from actors.supervision.tasks import Tasks
from actors.workflow_state import State, Workflow, WorkflowTable
from workflows.command import check_workflow_id
from workflows.context import CHILD_SIGNAL
from workflows.errors import InvalidCommand, JournalError, UnknownWorkflow

log = structlog.get_logger("supervisor")

DELIVER_RETRY_MAX_S = 5.0


class Children:
    """Submits the children parents ask for and tells each parent its child's end."""

    def __init__(self, options: Options, journal: JournalPort, table: WorkflowTable, admission: Admission,
                 intake: Intake, signals: Signals, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None) -> None:
        self.options = options
        self.journal = journal
        self.table = table
        self.admission = admission
        self.intake = intake
        self.signals = signals
        self.clock = clock
        self.metrics = metrics or Metrics.off()
        self.parents: dict[str, set[str]] = {}
        """Child id -> the parents waiting for its end."""
        self._tasks = Tasks()

    async def take(self, reports: list[Report], incarnation: str) -> list[Report]:
        """Submit the child of each parent's report that asks for one; the reports to
        act on (a parent whose child could not be journaled is parked as delayed)."""
        out = []
        for rep in reports:
            request = rep.result if rep.end is Kind.WAITING and rep.reason.startswith(CHILD_SIGNAL) else None
            # A parent being cancelled runs again to stop: it asks for no new child.
            parent = self.table.workflows.get(rep.workflow_id)
            if not isinstance(request, dict) or parent is None or parent.stop or rep.incarnation != incarnation:
                out.append(rep)
                continue
            try:
                await self._child(parent, request)
            except JournalError as exc:  # its retry asks again
                log.warning("child_not_submitted", workflow_id=parent.id, child=request.get("id"), error=repr(exc))
                rep = replace(rep, end=Kind.DELAYED, result=None, reason=f"child not submitted: {exc}")
            out.append(rep)
        return out

    async def _child(self, parent: Workflow, request: dict[str, Any]) -> None:
        cid, name, fields = request.get("id"), request.get("type"), request.get("fields")
        try:
            check_workflow_id(cid)
            if not isinstance(name, str) or not isinstance(fields, dict):
                raise InvalidCommand(f"child {cid!r}: not a command")
            size = len(msgpack.packb(fields, use_bin_type=True))
            if size > self.options.max_payload_bytes:
                raise InvalidCommand(f"child {cid!r}: fields are {size} bytes, over the "
                                     f"{self.options.max_payload_bytes}-byte limit")
        except InvalidCommand as exc:
            self._tasks.spawn(self._deliver(parent.id, str(cid), _failure(str(cid), exc)))
            return
        assert isinstance(cid, str) and isinstance(name, str) and isinstance(fields, dict)
        self.parents.setdefault(cid, set()).add(parent.id)
        child = self.table.workflows.get(cid)
        if child is None:
            found = (await self.journal.lookup([cid])).get(cid)
            child = Workflow.from_dict(found) if found is not None else None
        if child is None:
            child = await self._submit(parent, cid, name, fields)
        if (child.type, child.fields) != (name, fields):
            self.parents[cid].discard(parent.id)
            error = InvalidCommand(f"child id {cid!r} is taken by another workflow ({child.type})")
            self._tasks.spawn(self._deliver(parent.id, cid, _failure(cid, error)))
        elif child.state.finished:
            self.ended(cid, child)

    async def _submit(self, parent: Workflow, cid: str, name: str, fields: dict[str, Any]) -> Workflow:
        """Journal the child, admitted at once (see MaxCmds above); the workflow the journal holds."""
        record = Submitted(cid, name, fields, self.clock(), parent.deployment)
        self.admission.force(1)
        try:
            answer = (await self.journal.append([record]))[0]
        except BaseException:
            self.admission.release(1)
            raise
        if isinstance(answer, Known):  # submitted meanwhile, by another parent or a client
            if (answer.type, answer.fields) != (name, fields):
                self.admission.release(1)
                return Workflow(cid, answer.type, answer.fields, record.t)
            if not self.intake._adopt(record, answer.workflow):
                self.admission.release(1)
            held = self.table.workflows.get(cid)
            return held if held is not None else Workflow(cid, name, fields, record.t)
        self.metrics.count(SUBMITTED, 1, name)
        wf = self.table.apply(record)
        assert wf is not None
        self.intake._start(wf)
        self.intake.dispatcher.fresh.add(cid)
        log.info("child_submitted", workflow_id=cid, parent=parent.id)
        return wf

    def ended(self, workflow_id: str, wf: Workflow | None = None) -> None:
        """``workflow_id`` finished: journal its end to the parents waiting for it."""
        parents = self.parents.pop(workflow_id, None)
        wf = wf or self.table.workflows.get(workflow_id)
        if not parents or wf is None:
            return
        end = {"id": workflow_id, "state": wf.state.value, "result": wf.result, "error": wf.error}
        for parent in parents:
            self._tasks.spawn(self._deliver(parent, workflow_id, end))

    async def stop_children(self, parent_id: str, reason: str,
                            stop: Callable[[str, str], Awaitable[bool]]) -> list[str]:
        """``parent_id`` was cancelled or terminated: ``stop`` the children it waits for; their ids."""
        kids = sorted(cid for cid, parents in self.parents.items() if parent_id in parents)
        for cid in kids:
            self.parents[cid].discard(parent_id)
            child = self.table.workflows.get(cid)
            if child is not None and not child.state.finished:
                await stop(cid, f"its parent {parent_id} was stopped" + (f": {reason}" if reason else ""))
        return kids

    async def recover(self) -> None:
        """After a restart: run again each parent that waits for a child's end not journaled
        to it. Its replay asks for the child again (`take`): the journal answers whether it
        knows the child, running or ended, and a child it refused is refused again."""
        now = self.clock()
        for wf in self.table.unfinished():
            name = wf.reason
            if wf.state is State.WAITING and name.startswith(CHILD_SIGNAL) and name not in wf.signals:
                self.parents.setdefault(name[len(CHILD_SIGNAL):], set()).add(wf.id)  # for `stop_children`
                self.signals.parking.timers.push(now, wf.id)
        self.signals.parking.wake.set()

    async def _deliver(self, parent: str, cid: str, end: dict[str, Any]) -> None:
        """Journal ``end`` as the parent's signal; retried while the journal cannot take it."""
        delay = max(self.options.slow_retry_interval_s, 0.01)
        while True:
            try:
                try:
                    await self.signals.signal(parent, CHILD_SIGNAL + cid, end)
                except InvalidCommand as exc:  # a result too big for a signal
                    await self.signals.signal(parent, CHILD_SIGNAL + cid, _failure(cid, exc))
                return
            except UnknownWorkflow:
                return
            except JournalError as exc:
                log.warning("child_end_not_delivered", workflow_id=parent, child=cid, error=repr(exc))
            wf = self.table.workflows.get(parent)
            if wf is None or wf.state.finished:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, DELIVER_RETRY_MAX_S)

    def close(self) -> None:
        self._tasks.close()


def _failure(cid: str, exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    error = {"type": f"{cls.__module__}.{cls.__qualname__}", "message": str(exc), "traceback": ""}
    return {"id": cid, "state": "failed", "result": None, "error": error}
