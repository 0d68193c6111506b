"""The supervisor's read side: results, waits, status, listings, stats, replays.

`Queries` is a part of `actors.supervision.supervisor.SupervisorCore`, kept apart because it only
reads the workflow table (and the journal, for live steps and replays) and wakes
nothing but its own futures. A waiter's future leaves ``waiters`` however its call
ends: answered, timed out or cancelled.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from typing import Any

from actors.options import Options
from actors.supervision.admission import Admission
from actors.supervision.modes import Mode
from actors.supervision.ports import JournalPort
from actors.supervision.retry import TimerHeap
from actors.workflow_state import State, Workflow, WorkflowTable
from workflows.errors import CommandFailed, UnknownWorkflow


class Queries:
    options: Options
    journal: JournalPort
    table: WorkflowTable
    mode: Mode
    held: bool
    admission: Admission
    timers: TimerHeap
    running: dict[str, tuple[int, int]]
    waiters: dict[str, list[asyncio.Future[None]]]
    started: asyncio.Event

    def _get(self, workflow_id: str) -> Workflow:
        wf = self.table.workflows.get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        return wf

    def _notify(self, workflow_id: str) -> None:
        """Wake every call waiting for ``workflow_id`` to finish."""
        for future in self.waiters.pop(workflow_id, []):
            if not future.done():
                future.set_result(None)

    async def _until_finished(self, workflow_ids: builtins.list[str], timeout_s: float | None) -> None:
        """Wait until one of ``workflow_ids`` is finished (`_notify`), or raise TimeoutError."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for w in workflow_ids:
            self.waiters.setdefault(w, []).append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        finally:
            for w in workflow_ids:
                pending = self.waiters.get(w)
                if pending is not None and future in pending:
                    pending.remove(future)
                    if not pending:
                        del self.waiters[w]

    async def result(self, workflow_id: str, timeout_s: float | None = None) -> Any:
        await self.started.wait()
        wf = self._get(workflow_id)
        if not wf.state.finished:
            try:
                await self._until_finished([workflow_id], timeout_s)
            except TimeoutError:
                raise TimeoutError(f"workflow {workflow_id} did not finish within {timeout_s} s") from None
        if wf.state is State.COMPLETED:
            return wf.result
        err = wf.error or {}
        raise CommandFailed(workflow_id, err.get("type", "unknown"), err.get("message", ""), err.get("traceback", ""))

    async def wait(self, workflow_ids: builtins.list[str], timeout_s: float | None = None) -> dict[str, Any]:
        """Wait until at least one of ``workflow_ids`` has finished (or ``timeout_s``);
        return each finished one's ``{"state", "result", "error"}`` by id. One call for
        many workflows: a driver with many in flight pays a call per round, not per result."""
        await self.started.wait()
        wfs = [self._get(w) for w in workflow_ids]
        if wfs and not any(wf.state.finished for wf in wfs):
            with contextlib.suppress(TimeoutError):
                await self._until_finished(workflow_ids, timeout_s)
        return {wf.id: {"state": wf.state.value, "result": wf.result, "error": wf.error}
                for wf in wfs if wf.state.finished}

    async def status(self, workflow_id: str) -> dict[str, Any]:
        await self.started.wait()
        wf = self._get(workflow_id)
        status = wf.status()
        if wf.state is State.RUNNING:
            steps = await self.journal.live_steps([workflow_id])
            entry = steps.get(workflow_id)
            if entry is not None and not isinstance(entry, dict):  # a dict: ended, its report on the way
                status["outcomes"] = [list(o) for o in entry[0]]
        return status

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        if state is not None and state not in {s.value for s in State}:
            raise ValueError(f"unknown state {state!r}: one of {', '.join(s.value for s in State)}")
        out = []
        for wf in self.table.workflows.values():
            if state is None or wf.state.value == state:
                out.append(wf.status())
                if len(out) >= limit:
                    break
        return out

    def stats(self) -> dict[str, Any]:
        counts = {s.value: 0 for s in State}
        for wf in self.table.workflows.values():
            counts[wf.state.value] += 1
        return {"mode": self.mode.value, "held": self.held, "in_flight": self.admission.admitted,
                "max_cmds": self.options.max_cmds, "waiting_admission": self.admission.waiting,
                "running": len(self.running), "parked": len(self.timers), "counts": counts}

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        """The journaled steps of ``service``, outcomes and compensations, in journal order."""
        return await self.journal.outcomes(service, since_seq, limit)
