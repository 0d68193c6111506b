"""The supervisor's read side: results, waits, status, listings, stats, replays.

`Queries` is a part of `actors.supervision.supervisor.SupervisorCore`. Guarantees: it
only reads the workflow table (and the journal, for outcomes and replays) and wakes
nothing but its own futures; a waiter's future leaves ``waiters`` however its call
ends (answered, timed out or cancelled); outcomes in a status are the journal's
durable ones.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from typing import Any

from actors.metrics import RESULT_CACHE_HITS, RESULT_CACHE_MISSES, Metrics
from actors.supervision.ports import JournalPort
from actors.workflow_state import State, Workflow, WorkflowTable
from workflows.errors import CommandFailed, UnknownWorkflow

PAGE_MAX = 500
"""The most workflows one `Queries.page` answers."""


def _cursor(cursor: str | None, state: str | None) -> tuple[str, int | None]:
    """A page cursor as (phase, position): ``u<n>``, the ``n``-th unfinished workflow on;
    ``f<pos>``, finished ones that ended before the journal's position ``pos``; ``f``,
    finished ones from the newest."""
    if not cursor:
        return ("f", None) if state is not None and State(state).finished else ("u", 0)
    kind, rest = cursor[0], cursor[1:]
    if kind not in "uf" or (rest and not rest.isdigit()) or (kind == "u" and not rest):
        raise ValueError(f"bad cursor {cursor!r}")
    return kind, int(rest) if rest else None


def _typed(type_: str, part: str | None) -> bool:
    return not part or part.lower() in type_.lower()


class Queries:
    """Results, waiters, status, listings and replays over ``table`` and the journal."""

    def __init__(self, journal: JournalPort, table: WorkflowTable, started: asyncio.Event,
                 metrics: Metrics | None = None) -> None:
        self.journal = journal
        self.metrics = metrics or Metrics.off()
        self.table = table
        self.started = started
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.ended = 0
        """Workflows that finished since this process started (counts by state hold only the cached ones)."""

    async def _find(self, workflow_ids: builtins.list[str]) -> dict[str, Workflow]:
        """The workflows of ``workflow_ids`` held here or, finished and out of this
        cache, kept by the journal (read back from its storage); unknown ones left out."""
        found = {w: wf for w in workflow_ids if (wf := self.table.workflows.get(w)) is not None}
        missing = [w for w in dict.fromkeys(workflow_ids) if w not in found]
        if missing:
            self.metrics.count(RESULT_CACHE_MISSES, len(missing))
            for w in missing:
                here = self.journal.finished_here(w)
                if here is not None:
                    found[w] = here
            asked = [w for w in missing if w not in found]
            if asked:
                for w, d in (await self.journal.lookup(asked)).items():
                    found[w] = Workflow.from_dict(d)
        return found

    async def _get(self, workflow_id: str) -> Workflow:
        wf = (await self._find([workflow_id])).get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        return wf

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow, held here or read back from the journal; `UnknownWorkflow`."""
        return await self._get(workflow_id)

    def notify(self, workflow_id: str) -> None:
        """``workflow_id`` finished: it joins the table's cache of finished ones, and
        every call waiting for it wakes."""
        self.table.ended(workflow_id)
        self.ended += 1
        for future in self.waiters.pop(workflow_id, []):
            if not future.done():
                future.set_result(None)

    async def _until_finished(self, workflow_ids: builtins.list[str], timeout_s: float | None) -> None:
        """Wait until one of ``workflow_ids`` is finished (`notify`), or raise TimeoutError."""
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
        held = workflow_id in self.table.workflows
        wf = await self._get(workflow_id)
        if not wf.state.finished:
            try:
                await self._until_finished([workflow_id], timeout_s)
            except TimeoutError:
                raise TimeoutError(f"workflow {workflow_id} did not finish within {timeout_s} s") from None
        if held:  # one read back from the journal counted as a miss
            self.metrics.count(RESULT_CACHE_HITS)
        if wf.state is State.COMPLETED:
            return wf.result
        err = wf.error or {}
        raise CommandFailed(workflow_id, err.get("type", "unknown"), err.get("message", ""), err.get("traceback", ""))

    async def wait(self, workflow_ids: builtins.list[str], timeout_s: float | None = None) -> dict[str, Any]:
        """Wait until at least one of ``workflow_ids`` has finished (or ``timeout_s``);
        return each finished one's ``{"state", "result", "error"}`` by id. One call for
        many workflows: a driver with many in flight pays a call per round, not per result."""
        await self.started.wait()
        held = {w for w in workflow_ids if w in self.table.workflows}
        found = await self._find(workflow_ids)
        unknown = next((w for w in workflow_ids if w not in found), None)
        if unknown is not None:
            raise UnknownWorkflow(f"no workflow with id {unknown!r}")
        wfs = [found[w] for w in dict.fromkeys(workflow_ids)]
        if wfs and not any(wf.state.finished for wf in wfs):
            with contextlib.suppress(TimeoutError):
                await self._until_finished(workflow_ids, timeout_s)
        answers = {wf.id: {"state": wf.state.value, "result": wf.result, "error": wf.error}
                   for wf in wfs if wf.state.finished}
        self.metrics.count(RESULT_CACHE_HITS, len(answers.keys() & held))
        return answers

    async def status(self, workflow_id: str) -> dict[str, Any]:
        await self.started.wait()
        return (await self._with_outcomes([await self._get(workflow_id)]))[0]

    async def list(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        if state is not None and state not in {s.value for s in State}:
            raise ValueError(f"unknown state {state!r}: one of {', '.join(s.value for s in State)}")
        found = []
        for wf in self.table.workflows.values():
            if state is None or wf.state.value == state:
                found.append(wf)
                if len(found) >= limit:
                    break
        if len(found) < limit and (state is None or State(state).finished):
            # Finished ones out of this cache: the journal's, newest first, past those held here.
            held = {wf.id for wf in found}
            for d in await self.journal.finished_page(state, limit - len(found), builtins.list(held)):
                found.append(Workflow.from_dict(d))
        return await self._with_outcomes(found)

    async def _with_outcomes(self, wfs: builtins.list[Workflow]) -> builtins.list[dict[str, Any]]:
        """Status dicts, with the outcomes the journal holds: asked of it for those held in
        this cache (which keeps none); those read back from it carry theirs."""
        held = [wf.id for wf in wfs if self.table.workflows.get(wf.id) is wf]
        steps = await self.journal.steps_of(held) if held else {}
        out = []
        for wf in wfs:
            status = wf.status()
            status["outcomes"] = [list(o) for o in steps.get(wf.id, wf.outcomes)]
            out.append(status)
        return out

    async def page(self, state: str | None = None, type_part: str | None = None, cursor: str | None = None,
                   limit: int = 50) -> dict[str, Any]:
        """Workflows a page at a time, however many the journal keeps: the unfinished ones
        (all held here), newest submitted first, then the finished ones, the last to end
        first, paged from the journal's order of ends (`actors.journal.ends`), so a page
        costs its length, not the history. Filters: ``state``, and ``type_part`` within the
        type. ``cursor``: the ``next`` of the page before (opaque; None for the first).
        Returns ``{"items": status dicts, "next": cursor or None, "scanned": ends looked at}``."""
        await self.started.wait()
        if state is not None and state not in {s.value for s in State}:
            raise ValueError(f"unknown state {state!r}: one of {', '.join(s.value for s in State)}")
        limit = max(1, min(limit, PAGE_MAX))
        phase, n = _cursor(cursor, state)
        items: builtins.list[dict[str, Any]] = []
        following: str | None = None
        if phase == "u":
            n = n or 0
            live = [wf for wf in reversed(self.table.workflows.values()) if not wf.state.finished
                    and (state is None or wf.state.value == state) and _typed(wf.type, type_part)]
            items = await self._with_outcomes(live[n:n + limit])
            if n + limit < len(live):
                return {"items": items, "next": f"u{n + limit}", "scanned": len(live)}
            if state is not None:
                return {"items": items, "next": None, "scanned": len(live)}
            phase, n = "f", None
            following = "f"
        scanned = 0
        if len(items) < limit:
            found = await self.journal.page(state, type_part, n, limit - len(items))
            items += [Workflow.from_dict(d).status() for d in found["items"]]
            following = None if found["next"] is None else f"f{found['next']}"
            scanned = found["scanned"]
        return {"items": items, "next": following, "scanned": scanned}

    async def finished_counts(self) -> dict[str, int]:
        """The finished workflows the journal keeps, by state (`SupervisorCore.stats` counts
        them so when given these)."""
        await self.started.wait()
        return await self.journal.finished_counts()

    async def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        """The journaled records of ``workflow_id``'s last run, in journal order (`UnknownWorkflow`)."""
        await self.started.wait()
        await self._get(workflow_id)
        return await self.journal.history(workflow_id)

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        """The journaled steps of ``service``, outcomes and compensations, in journal order."""
        return await self.journal.outcomes(service, since_seq, limit)
