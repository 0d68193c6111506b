"""The supervisor's logic, without Ray: admission, suspension, retries, dispatch, results.

`SupervisorCore` is driven by the Ray shell in `actors.supervisor` and, in unit
tests, by an in-process journal and pool. Its state is a cache of the journal:
`start` rebuilds it by folding every record, then schedules each unfinished command
again before any new one is admitted. Intake (submits, adoption of workflows the
journal keeps) is in `actors.supervision.intake`, parked attempts and the mode in
`actors.supervision.suspension`, the read side (results, status, stats) in
`actors.supervision.queries`.

What survives a crash: everything journaled. Idempotent: `submit` (same id, same
command), `report` (a duplicate report of an attempt is ignored), `start`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from actors.options import Options
from actors.supervision.admission import Admission
from actors.supervision.intake import Encoded, Intake
from actors.supervision.modes import Mode, Signal
from actors.supervision.ports import JournalPort, PoolPort
from actors.supervision.queries import Queries
from actors.supervision.retry import TimerHeap
from actors.supervision.suspension import Suspension
from actors.workflow_state import Event, State, Workflow, WorkflowTable, transition
from workflows.context import Outcome
from workflows.errors import JournalError, WorkerLost

__all__ = ["JournalPort", "PoolPort", "SupervisorCore"]

log = structlog.get_logger("supervisor")

FINISH_EVENTS = {"completed": Event.COMPLETE, "failed": Event.FAIL, "compensated": Event.COMPENSATE}
PARKED = ("delayed", "blocked")
REQUEUE_RETRY_MAX_S = 5.0


class SupervisorCore(Intake, Suspension, Queries):
    def __init__(self, options: Options, journal: JournalPort, pool: PoolPort,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.journal = journal
        self.pool = pool
        self.clock = clock
        self.incarnation = uuid.uuid4().hex
        self.table = WorkflowTable()
        self.mode = Mode.NORMAL
        self.held = False
        self.admission = Admission(options.max_cmds)
        self.timers = TimerHeap()
        self.ready: deque[str] = deque()
        self.running: dict[str, tuple[int, int]] = {}  # id -> (worker, attempt)
        self.free = [options.slots_per_actor] * pool.size
        self.retrying: set[str] = set()
        """Parked workflows: the backlog whose draining reopens intake. Never a finished one."""
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.submitting: dict[str, tuple[Encoded, asyncio.Future[None]]] = {}
        """Ids being admitted: their command, and a future that ends as their submit does."""
        self.started = asyncio.Event()
        self._wake_dispatch = asyncio.Event()
        self._wake_timer = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    # --- start-up -------------------------------------------------------------------

    async def start(self) -> None:
        """Fold the journal, reschedule every unfinished command, then open intake."""
        await self.pool.reset(self.incarnation)
        offset = 0
        while True:
            page = await self.journal.state(offset, 20_000)
            for d in page["workflows"]:
                wf = Workflow.from_dict(d)
                self.table.workflows[wf.id] = wf
            offset += len(page["workflows"])
            if not page["workflows"]:
                break
        self.mode, self.held = Mode(page["mode"]), page["held"]
        now = self.clock()
        for wf in self.table.unfinished():
            self.admission.force(1)
            self._schedule(wf, now)
        if not self.retrying and not self.held and self.mode is not Mode.NORMAL:
            await self._signal(Signal.DRAINED)
        self._loops = [asyncio.get_running_loop().create_task(self._dispatch_loop()),
                       asyncio.get_running_loop().create_task(self._timer_loop()),
                       asyncio.get_running_loop().create_task(self._forget_loop())]
        self.started.set()
        self._wake_dispatch.set()
        self._wake_timer.set()
        log.info("supervisor_started", workflows=len(self.table.workflows), unfinished=self.admission.admitted,
                 mode=self.mode.value)

    def close(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()

    # --- dispatch -------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake_dispatch.wait()
            self._wake_dispatch.clear()
            batches: dict[int, list[dict[str, Any]]] = {}
            while self.ready:
                worker = max(range(len(self.free)), key=self.free.__getitem__)
                if self.free[worker] <= 0:
                    break
                wf = self.table.workflows.get(self.ready.popleft())
                if wf is None or wf.state is not State.PENDING:
                    continue
                self.free[worker] -= 1
                wf.state = transition(wf.state, Event.DISPATCH)
                wf.attempts += 1
                self.running[wf.id] = (worker, wf.attempts)
                batches.setdefault(worker, []).append(self._item(wf))
            for worker, items in batches.items():
                self._spawn(self._run_on(worker, items))

    def _item(self, wf: Workflow) -> dict[str, Any]:
        return {
            "w": wf.id, "type": wf.type, "fields": wf.fields, "attempt": wf.attempts, "inc": self.incarnation,
            "outcomes": [list(o) for o in wf.outcomes], "compensations": [list(o) for o in wf.compensations],
            "error": wf.error if wf.compensating else None,
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_on(self, worker: int, items: list[dict[str, Any]]) -> None:
        """Run a batch on a worker; whatever ends the call, attempts it did not report
        go back to be dispatched again (a workflow is never left running on nothing)."""
        try:
            await self.pool.run(worker, items)
        except WorkerLost as exc:
            log.warning("command_actor_lost", worker=worker, workflows=len(items), error=str(exc))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this supervisor is closing
            log.error("dispatch_failed", worker=worker, workflows=len(items), error=repr(exc))
        except Exception as exc:  # the dispatch's one catch-all: any failed call (Ray's object lost,
            # out of memory, task cancelled, a journal error) leaves its attempts to requeue below
            log.error("dispatch_failed", worker=worker, workflows=len(items), error=repr(exc))
        # The actor reports each attempt before `run` returns: what is left was lost.
        lost = {i["w"]: (worker, i["attempt"]) for i in items if self.running.get(i["w"]) == (worker, i["attempt"])}
        if lost:
            await self._requeue(lost)

    async def _requeue(self, lost: dict[str, tuple[int, int]]) -> None:
        """Dispatch again, from their journaled outcomes, attempts whose actor was lost.

        The journal has the last word: the lost attempt may have recorded more than
        this cache knows, or ended its workflow (then it is finished from the terminal
        record the journal holds, never run again). While the journal cannot answer, or
        holds an end not yet durable, the attempts wait and ask again."""
        delay = max(self.options.slow_retry_interval_s, 0.01)
        while True:
            lost = {w: slot for w, slot in lost.items() if self.running.get(w) == slot}
            if not lost:
                return  # reported meanwhile
            try:
                steps = await self.journal.live_steps(list(lost))
            except Exception as exc:  # the requeue's one catch-all: ask again, never drop them
                log.warning("requeue_retrying", workflows=len(lost), error=repr(exc), retry_in_s=delay)
            else:
                lost = await self._resume(lost, steps)
                if not lost:
                    return
                log.info("requeue_waiting_for_end", workflows=len(lost), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REQUEUE_RETRY_MAX_S)

    async def _resume(self, lost: dict[str, tuple[int, int]], steps: dict[str, Any]) -> dict[str, tuple[int, int]]:
        """Dispatch again, or finish, the lost attempts the journal answered for; the rest."""
        left: dict[str, tuple[int, int]] = {}
        succeeded = False
        for wid, slot in lost.items():
            if self.running.get(wid) != slot:
                continue  # reported meanwhile
            entry = steps.get(wid)
            if entry is None:
                left[wid] = slot
                continue
            del self.running[wid]
            self.free[slot[0]] += 1
            wf = self.table.workflows[wid]
            if isinstance(entry, dict):  # ended in the journal: answer what it holds
                succeeded = succeeded or wid in self.retrying
                self._finish(wf, entry["k"], entry.get("result"), entry.get("error"))
                continue
            outs, comps = entry
            wf.outcomes = [Outcome(*o) for o in outs]
            wf.compensations = [Outcome(*o) for o in comps]
            wf.state = transition(wf.state, Event.LOST)
            self.ready.appendleft(wid)
        self._wake_dispatch.set()
        if succeeded:
            try:
                await self._settle_mode(False, succeeded)
            except JournalError as exc:  # the next report moves the mode on
                log.warning("mode_not_journaled", error=repr(exc))
        return left

    # --- reports from CommandActors --------------------------------------------------

    async def report(self, reports: list[dict[str, Any]]) -> None:
        """Take the ends of attempts; terminal ones are journaled already by the runner.

        A parked attempt's record is journaled here; one past its deadline is journaled
        as ``compensating`` (then dispatched to compensate) or ``failed`` before it
        moves on, so neither is answered before it is durable.
        """
        records: list[dict[str, Any]] = []
        ends: list[tuple[Workflow, dict[str, Any]]] = []
        blocked = succeeded = False
        for rep in reports:
            wf = self.table.workflows.get(rep["w"])
            slot = self.running.get(rep["w"])
            if rep.get("inc") != self.incarnation or wf is None or slot is None or slot[1] != rep["attempt"]:
                continue  # a stale or duplicate report
            del self.running[wf.id]
            self.free[slot[0]] += 1
            wf.outcomes = [Outcome(*o) for o in rep["outcomes"]]
            wf.compensations = [Outcome(*o) for o in rep["compensations"]]
            if rep["kind"] in PARKED:
                blocked = blocked or rep["kind"] == "blocked"
                if "error" in rep:
                    wf.compensating, wf.error = True, rep["error"]
                record = self._park(wf, rep["kind"])
                records.append(record)
                if record["k"] not in PARKED:
                    ends.append((wf, record))
            else:
                succeeded = succeeded or wf.id in self.retrying
                self._finish(wf, rep["kind"], rep.get("result"), rep.get("error"))
        self._wake_dispatch.set()
        answers: dict[int, Any] = {}
        if records:
            try:
                answers = {id(r): a for r, a in zip(records, await self.journal.append(records), strict=True)}
            except JournalError:
                for wf, _ in ends:  # not journaled: run again, to be parked or expired anew
                    wf.state = transition(wf.state, Event.LOST)
                    self.ready.append(wf.id)
                raise
        for wf, record in ends:
            end = answers.get(id(record))
            if isinstance(end, dict):  # ended meanwhile (a late attempt): what the journal holds
                self._finish(wf, end["k"], end.get("result"), end.get("error"))
            elif record["k"] == "failed":
                self._finish(wf, "failed", None, record["error"])
            else:
                wf.state = transition(wf.state, Event.EXPIRE)
                self.ready.append(wf.id)
                self._wake_dispatch.set()
        await self._settle_mode(blocked, succeeded)

    def _finish(self, wf: Workflow, kind: str, result: Any, error: dict[str, Any] | None) -> None:
        wf.state = transition(wf.state, FINISH_EVENTS[kind])
        wf.finished_at, wf.next_retry_at = self.clock(), None
        wf.result, wf.error = result, error if error is not None else wf.error
        self.retrying.discard(wf.id)  # a finished workflow is no backlog
        self.timers.discard(wf.id)
        self.admission.release(1)
        self._notify(wf.id)

    # --- retention ------------------------------------------------------------------

    async def _forget_loop(self) -> None:
        """Drop finished workflows past ``retention_s`` from the cache (the journal's
        snapshot drops them from storage). An id forgotten here and still kept by the
        journal stays reserved: the journal answers a submit of it (see `_take_answers`)."""
        period = min(max(self.options.retention_s / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(period)
            self.table.forget(self.clock() - self.options.retention_s)

    # --- operator -------------------------------------------------------------------

    async def suspend(self) -> dict[str, Any]:
        self.held = True
        await self._signal(Signal.SUSPEND, force=True)
        return self.stats()

    async def resume(self) -> dict[str, Any]:
        self.held = False
        await self._signal(Signal.RESUME, force=True)
        return self.stats()
