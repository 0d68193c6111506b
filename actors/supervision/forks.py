"""Forks: a new workflow that starts where another one was, `Forks` is a part of `SupervisorCore`.

``fork(workflow_id, from_step, new_workflow_id)`` journals a new workflow with the same
type and fields as ``workflow_id`` and, in the same batch as its ``submitted`` record,
the original's outcomes ``[0, from_step)`` as the new workflow's own ``outcome``
records. Its first attempt replays them and runs from step ``from_step`` on. The copies
are the new workflow's outcomes like any other: its steps past ``from_step`` send the
new workflow's keys (``"{new id}/{step}"``); its compensation sees every outcome, the
copied ones included, and undoes them under its own keys; `coordinator replay` of a
service re-sends the copies under the new workflow's id. The new workflow is admitted
as a submit is (MaxCmds, `Suspended` while intake is closed) and runs on a deployment
that imports its type, as a submit without a runtime_env would.

Refused, with nothing journaled: an unknown original (`UnknownWorkflow`); with
`InvalidCommand`, a ``from_step`` below 0 or past the original's journaled outcomes, an
original that compensated (some copied step may have been undone: fork it with
``from_step=0``), and a ``new_workflow_id`` that is invalid, the original's, or taken
by another workflow.

A copied ``ctx.child`` step names the original's child: the fork waits for that same
child (its end, if it ended), never a second run of it.

Idempotent: a repeat finds ``new_workflow_id`` holding the original's command and the
same first ``from_step`` outcomes, and answers the id without journaling anything. A
crash while the batch is written, before the call answered, can leave the fork with
fewer copied outcomes (a torn tail is cut at a record): it then runs those steps again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from actors.metrics import SUBMITTED, Metrics
from actors.options import Options
from actors.records import Known, Record, Step, Submitted
from actors.supervision.admission import Admission
from actors.supervision.intake import Intake
from actors.supervision.ports import JournalPort
from actors.workflow_state import Workflow, WorkflowTable
from workflows.command import check_workflow_id
from workflows.context import Outcome
from workflows.errors import InvalidCommand, UnknownWorkflow

log = structlog.get_logger("supervisor")


class Forks:
    """Journals forks of workflows and starts them (see the module docstring)."""

    def __init__(self, options: Options, journal: JournalPort, table: WorkflowTable, admission: Admission,
                 intake: Intake, clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.options = options
        self.journal = journal
        self.table = table
        self.admission = admission
        self.intake = intake
        self.clock = clock
        self.metrics = metrics or Metrics.off()
        self.forking: set[str] = set()
        """New ids of forks being journaled (also in ``intake.submitting``)."""

    async def fork(self, workflow_id: str, from_step: int, new_workflow_id: str) -> str:
        new_id = check_workflow_id(new_workflow_id)
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
            raise InvalidCommand(f"from_step must be a step index (an int >= 0), got {from_step!r}")
        if new_id == workflow_id:
            raise InvalidCommand(f"a fork of {workflow_id!r} needs a new workflow id")
        original, outcomes, compensations = await self._original(workflow_id)
        if from_step > len(outcomes):
            raise InvalidCommand(f"workflow {workflow_id!r} has {len(outcomes)} journaled outcomes: "
                                 f"from_step {from_step} is past them")
        copied = outcomes[:from_step]
        if await self._forked_already(original, copied, new_id):
            return new_id
        if compensations and from_step > 0:
            raise InvalidCommand(f"workflow {workflow_id!r} compensated: a copied step may have been undone; "
                                 "fork it from step 0")
        await self._journal(original, copied, new_id)
        log.info("workflow_forked", workflow_id=new_id, forked_from=workflow_id, from_step=from_step)
        return new_id

    async def _original(self, workflow_id: str) -> tuple[Workflow, list[Outcome], list[Outcome]]:
        """The original's workflow, journaled outcomes and compensations."""
        wf = self.table.workflows.get(workflow_id)
        if wf is not None and not wf.state.finished:
            entry = (await self.journal.live_steps([workflow_id])).get(workflow_id)
            if isinstance(entry, tuple):
                return wf, list(entry[0]), list(entry[1])
        found = (await self.journal.lookup([workflow_id])).get(workflow_id)
        if found is None:
            if wf is None:
                raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
            raise InvalidCommand(f"workflow {workflow_id!r} is ending: fork it again once it ended")
        done = Workflow.from_dict(found)
        return done, list(done.outcomes), list(done.compensations)

    async def _forked_already(self, original: Workflow, copied: list[Outcome], new_id: str) -> bool:
        """True if ``new_id`` holds this fork already; `InvalidCommand` if another workflow has it."""
        pending = self.intake.submitting.get(new_id)
        if pending is not None:
            if new_id not in self.forking:
                raise InvalidCommand(f"workflow id {new_id!r} is being submitted")
            await asyncio.wait([pending[1]])  # a fork being journaled: compare with it once it is
        existing = self.table.workflows.get(new_id)
        if existing is None:
            found = (await self.journal.lookup([new_id])).get(new_id)
            if found is None:
                return False
            existing = Workflow.from_dict(found)
        steps = (await self.journal.steps_of([new_id])).get(new_id, [])
        same = (existing.type, existing.fields) == (original.type, original.fields) and \
            [tuple(o) for o in steps[:len(copied)]] == [tuple(o) for o in copied]
        if not same:
            raise InvalidCommand(f"workflow id {new_id!r} is taken by another workflow")
        return True

    async def _journal(self, original: Workflow, copied: list[Outcome], new_id: str) -> None:
        """Admit and journal the fork, then start it; it holds ``new_id`` in ``forking`` meanwhile."""
        if new_id in self.forking or new_id in self.intake.submitting or new_id in self.table.workflows:
            raise InvalidCommand(f"workflow id {new_id!r} was taken meanwhile")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.forking.add(new_id)
        self.intake.submitting[new_id] = ((original.type, original.fields), future)
        try:
            placed = original.deployment
            if self.intake.route is not None:
                placed = (await self.intake.route([(original.type, None)]))[0]
            self.intake._check_intake()
            await self.admission.acquire(1, self.options.admission_timeout_s)
            try:
                self.intake._check_intake()
                submitted = Submitted(new_id, original.type, original.fields, self.clock(), placed)
                batch: list[Record] = [submitted, *(Step(new_id, o.step, o.service, o.value) for o in copied)]
                answers = await self.journal.append(batch)
            except BaseException:
                self.admission.release(1)
                raise
            if isinstance(answers[0], Known):  # cannot happen: the id was free and held here
                self.admission.release(1)
                raise InvalidCommand(f"workflow id {new_id!r} is taken by another workflow")
            self.metrics.count(SUBMITTED, 1, original.type)
            self.intake._start(self.table.apply(submitted))
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody may be waiting on it
            raise
        finally:
            self.forking.discard(new_id)
            self.intake.submitting.pop(new_id, None)

