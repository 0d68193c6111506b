"""The supervisor's logic, without Ray: admission, suspension, retries, dispatch, results.

`SupervisorCore` is driven by the Ray shell in `actors.supervisor` and, in unit
tests, by an in-process journal and pool. Its state is a cache of the journal:
`start` rebuilds it by folding every record, then schedules each unfinished command
again before any new one is admitted.

What survives a crash: everything journaled. Idempotent: `submit` (same id, same
command), `report` (a duplicate report of an attempt is ignored), `start`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from actors.admission import Admission
from actors.modes import Mode, Signal, next_mode
from actors.retry import TimerHeap, retry_delay
from actors.state import Event, State, Workflow, WorkflowTable, transition
from cluster.options import Options
from workflows.command import encode_command, resolve_type
from workflows.context import Outcome
from workflows.errors import (
    CommandFailed,
    DeadlineExceeded,
    InvalidCommand,
    Suspended,
    UnknownWorkflow,
    WorkerLost,
)

log = structlog.get_logger("supervisor")

FINISH_EVENTS = {"completed": Event.COMPLETE, "failed": Event.FAIL, "compensated": Event.COMPENSATE}


class JournalPort(Protocol):
    async def append(self, records: list[dict[str, Any]]) -> list[Any]: ...
    async def state(self, offset: int, limit: int) -> dict[str, Any]: ...
    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Any]: ...
    async def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]: ...


class PoolPort(Protocol):
    size: int

    async def run(self, worker: int, items: list[dict[str, Any]]) -> None: ...
    async def reset(self, incarnation: str) -> None: ...


class SupervisorCore:
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
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.submitting: dict[str, tuple[str, dict[str, Any]]] = {}
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
            if wf.state.parked:
                self.retrying.add(wf.id)
                self.timers.push(wf.next_retry_at or now, wf.id)
            else:
                wf.state = transition(wf.state, Event.LOST)  # cut off by the restart
                self.ready.append(wf.id)
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

    # --- intake ---------------------------------------------------------------------

    async def submit(self, cmd: Any, workflow_id: str | None = None) -> str:
        return (await self.submit_many([cmd], [workflow_id]))[0]

    async def submit_many(self, cmds: list[Any], workflow_ids: list[str | None] | None = None) -> list[str]:
        """Journal new commands as one batch once there is room; return their ids."""
        await self.started.wait()
        if workflow_ids is not None and len(workflow_ids) != len(cmds):
            raise InvalidCommand(f"{len(cmds)} commands but {len(workflow_ids)} workflow ids")
        ids = list(workflow_ids or [None] * len(cmds))
        new: dict[str, tuple[str, dict[str, Any]]] = {}
        out: list[str] = []
        for cmd, wid in zip(cmds, ids, strict=True):
            encoded = encode_command(cmd, self.options.max_payload_bytes)
            wid = wid if wid is not None else uuid.uuid4().hex
            if not isinstance(wid, str) or not wid:
                raise InvalidCommand(f"workflow id must be a non-empty string, got {wid!r}")
            known = self._known(wid) or new.get(wid)
            if known is not None and known != encoded:
                raise InvalidCommand(f"workflow id {wid!r} was already submitted with another command ({known[0]})")
            if known is None:
                new[wid] = encoded
            out.append(wid)
        if new:
            await self._admit(new)
        return out

    def _known(self, wid: str) -> tuple[str, dict[str, Any]] | None:
        wf = self.table.workflows.get(wid)
        if wf is not None:
            return wf.type, wf.fields
        return self.submitting.get(wid)

    def _check_intake(self) -> None:
        if self.mode is not Mode.NORMAL:
            reason = "suspended by an operator" if self.held else "a service is out (circuit breaker open)"
            raise Suspended(f"intake is closed: {reason}; mode {self.mode.value}")

    async def _admit(self, new: dict[str, tuple[str, dict[str, Any]]]) -> None:
        self._check_intake()
        self.submitting.update(new)
        try:
            await self.admission.acquire(len(new), self.options.admission_timeout_s)
            try:
                self._check_intake()
                now = self.clock()
                records = [{"k": "submitted", "w": w, "type": t, "fields": f, "t": now} for w, (t, f) in new.items()]
                await self.journal.append(records)
            except BaseException:
                self.admission.release(len(new))
                raise
            for wid, r in zip(new, records, strict=True):
                self.table.apply(r)
                self.ready.append(wid)
            self._wake_dispatch.set()
        finally:
            for w in new:
                self.submitting.pop(w, None)

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
        try:
            await self.pool.run(worker, items)
        except WorkerLost as exc:
            log.warning("command_actor_lost", worker=worker, workflows=len(items), error=str(exc))
        # The actor reports each attempt before `run` returns: what is left was lost.
        lost = {i["w"]: (worker, i["attempt"]) for i in items if self.running.get(i["w"]) == (worker, i["attempt"])}
        if lost:
            await self._requeue(lost)

    async def _requeue(self, lost: dict[str, tuple[int, int]]) -> None:
        """Dispatch again, from their journaled outcomes, attempts whose actor was lost."""
        steps = await self.journal.live_steps(list(lost))
        for wid, slot in lost.items():
            if self.running.get(wid) != slot:
                continue  # reported meanwhile
            del self.running[wid]
            self.free[slot[0]] += 1
            wf = self.table.workflows[wid]
            if wid in steps:
                outs, comps = steps[wid]
                wf.outcomes = [Outcome(*o) for o in outs]
                wf.compensations = [Outcome(*o) for o in comps]
            wf.state = transition(wf.state, Event.LOST)
            self.ready.appendleft(wid)
        self._wake_dispatch.set()

    # --- reports from CommandActors --------------------------------------------------

    async def report(self, reports: list[dict[str, Any]]) -> None:
        """Take the ends of attempts; terminal ones are journaled already by the runner."""
        parked: list[dict[str, Any]] = []
        for rep in reports:
            wf = self.table.workflows.get(rep["w"])
            slot = self.running.get(rep["w"])
            if rep.get("inc") != self.incarnation or wf is None or slot is None or slot[1] != rep["attempt"]:
                continue  # a stale or duplicate report
            del self.running[wf.id]
            self.free[slot[0]] += 1
            wf.outcomes = [Outcome(*o) for o in rep["outcomes"]]
            wf.compensations = [Outcome(*o) for o in rep["compensations"]]
            if rep["kind"] in ("delayed", "blocked"):
                if "error" in rep:
                    wf.compensating, wf.error = True, rep["error"]
                parked.append(self._park(wf, rep["kind"]))
            else:
                self._finish(wf, rep["kind"], rep.get("result"), rep.get("error"))
        self._wake_dispatch.set()
        if parked:
            await self.journal.append(parked)
        await self._settle_mode(reports)

    def _park(self, wf: Workflow, kind: str) -> dict[str, Any]:
        now = self.clock()
        interval = (self.options.fast_retry_interval_s if self.mode is Mode.SUSPENDED_FAST
                    else self.options.slow_retry_interval_s)
        due = now + retry_delay(interval, self.options.jitter_s, wf.id, wf.attempts)
        deadline = resolve_deadline(wf.type)
        if deadline is not None and due > wf.submitted_at + deadline:
            error = {"type": f"{DeadlineExceeded.__module__}.DeadlineExceeded",
                     "message": f"deadline_s={deadline} passed after {wf.attempts} attempts", "traceback": ""}
            self._finish(wf, "failed", None, error)
            return {"k": "failed", "w": wf.id, "error": error, "t": now}
        wf.state = transition(wf.state, Event.BLOCK if kind == "blocked" else Event.DELAY)
        wf.next_retry_at = due
        self.retrying.add(wf.id)
        self.timers.push(due, wf.id)
        self._wake_timer.set()
        return {"k": kind, "w": wf.id, "attempt": wf.attempts, "next_retry_at": due, "t": now}

    def _finish(self, wf: Workflow, kind: str, result: Any, error: dict[str, Any] | None) -> None:
        wf.state = transition(wf.state, FINISH_EVENTS[kind])
        wf.finished_at, wf.next_retry_at = self.clock(), None
        wf.result, wf.error = result, error if error is not None else wf.error
        self.admission.release(1)
        for future in self.waiters.pop(wf.id, []):
            if not future.done():
                future.set_result(None)

    async def _settle_mode(self, reports: list[dict[str, Any]]) -> None:
        if any(r["kind"] == "blocked" for r in reports):
            await self._signal(Signal.BLOCKED)
        if self.mode is Mode.NORMAL:
            self.retrying.difference_update(r["w"] for r in reports if r["kind"] not in ("delayed", "blocked"))
            return
        succeeded = [r["w"] for r in reports if r["kind"] not in ("delayed", "blocked") and r["w"] in self.retrying]
        self.retrying.difference_update(succeeded)
        if succeeded and self.mode is Mode.SUSPENDED_SLOW:
            await self._signal(Signal.RETRY_SUCCEEDED)
        if not self.retrying:
            await self._signal(Signal.DRAINED)

    async def _signal(self, signal: Signal, force: bool = False) -> None:
        mode = next_mode(self.mode, signal, held=self.held)
        if mode is self.mode and not force:
            return
        log.info("mode_changed", mode=mode.value, was=self.mode.value, signal=signal.value)
        self.mode = mode
        if mode is Mode.SUSPENDED_FAST:
            self._hasten_retries()
        await self.journal.append([{"k": "mode", "mode": mode.value, "held": self.held, "t": self.clock()}])

    def _hasten_retries(self) -> None:
        """In fast mode the backlog drains at the fast interval: bring parked retries forward."""
        now = self.clock()
        for wid in self.retrying:
            wf = self.table.workflows.get(wid)
            if wf is not None and wf.state.parked:
                due = now + retry_delay(self.options.fast_retry_interval_s, self.options.jitter_s, wid, wf.attempts)
                if wf.next_retry_at is None or due < wf.next_retry_at:
                    wf.next_retry_at = due
                    self.timers.push(due, wid)
        self._wake_timer.set()

    # --- timers ---------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            due = self.timers.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_timer.wait(), timeout)
            self._wake_timer.clear()
            for wid in self.timers.pop_due(self.clock()):
                wf = self.table.workflows.get(wid)
                if wf is not None and wf.state.parked:
                    wf.state = transition(wf.state, Event.RETRY_DUE)
                    self.ready.append(wid)
                    self._wake_dispatch.set()

    async def _forget_loop(self) -> None:
        """Drop finished workflows past ``retention_s`` from the cache (the journal's
        snapshot drops them from storage)."""
        period = min(max(self.options.retention_s / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(period)
            self.table.forget(self.clock() - self.options.retention_s)

    # --- queries --------------------------------------------------------------------

    def _get(self, workflow_id: str) -> Workflow:
        wf = self.table.workflows.get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        return wf

    async def result(self, workflow_id: str, timeout_s: float | None = None) -> Any:
        await self.started.wait()
        wf = self._get(workflow_id)
        if not wf.state.finished:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.setdefault(workflow_id, []).append(future)
            try:
                await asyncio.wait_for(future, timeout_s)
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
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for w in workflow_ids:
                self.waiters.setdefault(w, []).append(future)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), timeout_s)
            finally:
                for w in workflow_ids:
                    pending = self.waiters.get(w)
                    if pending and future in pending:
                        pending.remove(future)
        return {wf.id: {"state": wf.state.value, "result": wf.result, "error": wf.error}
                for wf in wfs if wf.state.finished}

    async def status(self, workflow_id: str) -> dict[str, Any]:
        await self.started.wait()
        wf = self._get(workflow_id)
        status = wf.status()
        if wf.state is State.RUNNING:
            steps = await self.journal.live_steps([workflow_id])
            if workflow_id in steps:
                status["outcomes"] = [list(o) for o in steps[workflow_id][0]]
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

    async def suspend(self) -> dict[str, Any]:
        self.held = True
        await self._signal(Signal.SUSPEND, force=True)
        return self.stats()

    async def resume(self) -> dict[str, Any]:
        self.held = False
        await self._signal(Signal.RESUME, force=True)
        return self.stats()

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        return await self.journal.outcomes(service, since_seq, limit)


def resolve_deadline(type_name: str) -> float | None:
    try:
        return resolve_type(type_name).deadline_s
    except InvalidCommand:
        return None
