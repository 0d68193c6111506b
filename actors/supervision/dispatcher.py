"""Dispatch: the ready queue, free slots, running attempts, reports and requeues.

`Dispatcher` is a part of `actors.supervision.supervisor.SupervisorCore`. It sends
ready workflows to free CommandActor slots in batches (`Dispatch`), takes the
`Report` of each attempt, and finishes or parks the workflow.

Guarantees:

- a dispatched attempt stays in ``running`` until its report, or until the call that
  ran it ended without one; then it is requeued from the journal, so a workflow is
  never left running on nothing;
- a report of another incarnation or attempt (stale, or a duplicate) is ignored;
- an end is acted on only once durable: the runner journals a workflow's end before
  it reports it, and the `Parked` or `Expired` record of a parked attempt is journaled
  here before the workflow moves on;
- the journal has the last word on a lost attempt: one whose workflow it holds as
  ended is finished with that end, never run again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from actors.metrics import BLOCKED, DELAYED, FINISHED, WORKFLOW_LATENCY, Metrics
from actors.options import Options
from actors.records import PARKED, Dispatch, Ended, Expired, Kind, Record, Report
from actors.supervision.admission import Admission
from actors.supervision.parking import Parking
from actors.supervision.ports import JournalPort, PoolPort
from actors.supervision.tasks import Tasks
from actors.workflow_state import Event, State, Workflow, WorkflowTable, transition
from workflows.errors import JournalError, WorkerLost

log = structlog.get_logger("supervisor")

FINISH_EVENTS = {Kind.COMPLETED: Event.COMPLETE, Kind.FAILED: Event.FAIL, Kind.COMPENSATED: Event.COMPENSATE,
                 Kind.CANCELLED: Event.CANCEL, Kind.TERMINATED: Event.TERMINATE}
REQUEUE_RETRY_MAX_S = 5.0
Slot = tuple[int, int]
"""Where an attempt runs: (worker, attempt)."""


class Dispatcher:
    """Ready queue, free slots per worker and running attempts; ``finished`` is told of each end."""

    def __init__(self, options: Options, journal: JournalPort, pool: PoolPort, table: WorkflowTable,
                 admission: Admission, parking: Parking, finished: Callable[[str], None], incarnation: str,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.options = options
        self.metrics = metrics or Metrics.off()
        self.journal = journal
        self.pool = pool
        self.table = table
        self.admission = admission
        self.parking = parking
        self.finished = finished
        self.incarnation = incarnation
        self.clock = clock
        self.ready: deque[str] = deque()
        self.running: dict[str, Slot] = {}
        self.free = [options.slots_per_actor] * pool.size
        self.last_node: dict[str, str] = {}
        """The node of each unfinished workflow's last attempt: its retry prefers another."""
        self.fresh: set[str] = set()
        """Ids submitted here and not yet dispatched: their first attempt needs no steps."""
        self.held: set[str] = set()
        """Pending ids kept out of dispatch (a termination being journaled)."""
        self.wake = asyncio.Event()
        self._tasks = Tasks()

    def enqueue(self, workflow_id: str, first: bool = False) -> None:
        """Make a pending workflow ready (``first``: ahead of the others)."""
        if first:
            self.ready.appendleft(workflow_id)
        else:
            self.ready.append(workflow_id)
        self.wake.set()

    async def loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            for worker, items in self._batches().items():
                self._tasks.spawn(self._run_on(worker, items))

    def _batches(self) -> dict[int, list[Dispatch]]:
        """Ready workflows onto free slots of their deployment's workers; the ones whose
        deployment has no free slot keep their place in the queue."""
        self.free += [self.options.slots_per_actor] * (self.pool.size - len(self.free))
        capacity = sum(max(0, self.free[w]) for w in live_workers(self.pool))
        batches: dict[int, list[Dispatch]] = {}
        waiting: list[str] = []
        full: set[str] = set()
        while self.ready and capacity > 0:
            wf = self.table.workflows.get(self.ready.popleft())
            if wf is None or wf.state is not State.PENDING or wf.id in self.held:
                continue
            worker = None if wf.deployment in full else self._pick(wf)
            if worker is None:
                full.add(wf.deployment)
                waiting.append(wf.id)
                continue
            self.free[worker] -= 1
            capacity -= 1
            wf.state = transition(wf.state, Event.DISPATCH)
            wf.attempts += 1
            self.running[wf.id] = (worker, wf.attempts)
            batches.setdefault(worker, []).append(self._item(wf))
        self.ready.extendleft(reversed(waiting))
        return batches

    def _pick(self, wf: Workflow) -> int | None:
        """The worker of ``wf``'s deployment with the most free slots, preferring one on
        another node than its last attempt's (SPEC 4.15); None if all are busy."""
        free = [w for w in workers_of(self.pool, wf.deployment) if self.free[w] > 0]
        last = self.last_node.get(wf.id)
        elsewhere = [w for w in free if last is None or node_of(self.pool, w) != last]
        worker = max(elsewhere or free, key=self.free.__getitem__, default=None)
        node = None if worker is None else node_of(self.pool, worker)
        if node is not None:
            self.last_node[wf.id] = node
        return worker

    def _item(self, wf: Workflow) -> Dispatch:
        fresh = wf.id in self.fresh
        self.fresh.discard(wf.id)
        return Dispatch(wf.id, wf.type, wf.fields, wf.attempts, self.incarnation,
                        wf.error if wf.compensating or wf.stop else None, fresh and wf.attempts == 1, wf.stop,
                        dict(wf.signals))

    def close(self) -> None:
        self._tasks.close()

    async def _run_on(self, worker: int, items: list[Dispatch]) -> None:
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
        lost = {i.workflow_id: (worker, i.attempt) for i in items
                if self.running.get(i.workflow_id) == (worker, i.attempt)}
        if lost:
            await self._requeue(lost)

    async def _requeue(self, lost: dict[str, Slot]) -> None:
        """Dispatch again attempts whose actor was lost; the next attempt reads their
        journaled steps. The journal has the last word: the lost attempt may have
        ended its workflow (then it is finished from the terminal record the journal
        holds, never run again). While the journal cannot answer, or holds an end not
        yet durable, the attempts wait and ask again."""
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

    async def _resume(self, lost: dict[str, Slot], steps: dict[str, Any]) -> dict[str, Slot]:
        """Dispatch again, or finish, the lost attempts the journal answered for; the rest."""
        left: dict[str, Slot] = {}
        succeeded = False
        for wid, slot in lost.items():
            if self.running.get(wid) != slot:
                continue  # reported meanwhile
            entry = steps.get(wid)
            if entry is None:
                left[wid] = slot
                continue
            self._release(wid, slot)
            wf = self.table.workflows[wid]
            if isinstance(entry, Ended) and entry.kind is not None:  # ended in the journal: what it holds
                succeeded = succeeded or wid in self.parking.retrying
                self.finish(wf, entry.kind, entry.result, entry.error)
                continue
            wf.state = transition(wf.state, Event.LOST)
            self.enqueue(wid, first=True)
        self.wake.set()
        if succeeded:
            try:
                await self.parking.settle(False, succeeded)
            except JournalError as exc:  # the next report moves the mode on
                log.warning("mode_not_journaled", error=repr(exc))
        return left

    def _release(self, wid: str, slot: Slot) -> None:
        del self.running[wid]
        self.free[slot[0]] += 1

    async def report(self, reports: list[Report]) -> None:
        """Take the ends of attempts; terminal ones are journaled already by the runner.

        A parked attempt's `Parked` record is journaled here, or past its deadline its
        `Expired` record: the workflow then runs again to compensate, once that record
        is durable."""
        records: list[Record] = []
        ids: list[str] = []
        expired: list[Workflow] = []
        blocked = succeeded = False
        for rep in reports:
            wf = self.table.workflows.get(rep.workflow_id)
            if rep.end is Kind.EVENT:  # ctx.set_event, journaled by the runner
                if wf is not None:
                    wf.events[rep.reason] = rep.result
                continue
            slot = self.running.get(rep.workflow_id)
            if rep.incarnation != self.incarnation or wf is None or slot is None or slot[1] != rep.attempt:
                continue  # a stale or duplicate report
            self._release(wf.id, slot)
            if rep.end in PARKED and wf.stop and (rep.error is None or wf.stop == "terminate"):
                wf.state = transition(wf.state, Event.EXPIRE)  # cancelled meanwhile: it runs again, to stop
                self.enqueue(wf.id, first=True)
            elif rep.end in PARKED:
                blocked = blocked or rep.end is Kind.BLOCKED
                if rep.end in (Kind.BLOCKED, Kind.DELAYED):
                    self.metrics.count(BLOCKED if rep.end is Kind.BLOCKED else DELAYED, 1, wf.type)
                if rep.error is not None:
                    wf.compensating, wf.error = True, rep.error
                record = self.parking.park(wf, rep)
                records.append(record)
                ids.append(wf.id)
                if isinstance(record, Expired):
                    expired.append(wf)
            else:
                succeeded = succeeded or wf.id in self.parking.retrying
                self.finish(wf, rep.end, rep.result, rep.error)
        self.wake.set()
        if records:
            await self._journal_parked(records, ids, expired)
        await self.parking.settle(blocked, succeeded)

    async def _journal_parked(self, records: list[Record], ids: list[str], expired: list[Workflow]) -> None:
        try:
            answers = dict(zip(ids, await self.journal.append(records), strict=True))
        except JournalError:
            for wf in expired:  # not journaled: run again, to be parked or expired anew
                wf.compensating, wf.error = False, None
                wf.state = transition(wf.state, Event.LOST)
                self.enqueue(wf.id)
            raise
        for wf in expired:
            end = answers.get(wf.id)
            if isinstance(end, Ended) and end.kind is not None:  # ended meanwhile (a late attempt)
                self.finish(wf, end.kind, end.result, end.error)
            else:
                wf.state = transition(wf.state, Event.EXPIRE)
                self.enqueue(wf.id)

    def finish(self, wf: Workflow, kind: Kind, result: Any, error: dict[str, Any] | None) -> None:
        wf.state = transition(wf.state, FINISH_EVENTS[kind])
        wf.finished_at, wf.next_retry_at = self.clock(), None
        wf.result, wf.error = result, error if error is not None else wf.error
        self.metrics.count(FINISHED[kind], 1, wf.type)
        self.metrics.observe(WORKFLOW_LATENCY, wf.finished_at - wf.submitted_at, wf.type)
        self.parking.done(wf.id)
        self.last_node.pop(wf.id, None)
        self.admission.release(1)
        self.finished(wf.id)


def workers_of(pool: PoolPort, deployment: str) -> list[int]:
    """The workers of a deployment; a pool without deployments gives every worker to all."""
    pick = getattr(pool, "workers_of", None)
    return list(range(pool.size)) if pick is None else list(pick(deployment))


def live_workers(pool: PoolPort) -> list[int]:
    live = getattr(pool, "live", None)
    return list(range(pool.size)) if live is None else list(live())


def node_of(pool: PoolPort, worker: int) -> str | None:
    node = getattr(pool, "node_of", None)
    return None if node is None else node(worker)
