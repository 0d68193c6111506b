"""Parked attempts and the suspension mode: retry timers, deadlines, the mode machine.

`Parking` is a part of `actors.supervision.supervisor.SupervisorCore`. It parks an
attempt that raised `Delayed` or `Blocked` at a jittered retry time (or expires it
past its command's deadline), hands it back to dispatch when its timer is due, and
moves the mode on as reports come in.

A parked attempt's report carries its command's retry policy (the runner has the
command's class; this process never imports it): the wait before the retry, the
attempts allowed, and what happens when they or the deadline run out: ``fail``
compensates (the `Expired` record), ``pause`` leaves the workflow ``paused``, with
no timer and out of the backlog, keeping its MaxCmds slot, until `resume_workflow`.

Guarantees:

- a parked workflow is in ``retrying`` (the backlog whose draining reopens intake)
  and on the timer heap until it is due or finished; never a finished one;
- a mode change is journaled before it takes effect: the mode in memory is always
  one the journal holds, so a restart comes back in the mode this process last
  acted on; if the ``mode`` record cannot be written the mode stays as it was;
- in fast mode, parked retries are brought forward to the fast interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from actors.metrics import RETRIES, Metrics
from actors.options import Options
from actors.records import Error, Expired, Kind, ModeChanged, Parked, Report
from actors.supervision.modes import Mode, Signal, next_mode
from actors.supervision.ports import JournalPort
from actors.supervision.retry import TimerHeap, backoff_interval, retry_delay
from actors.workflow_state import Event, State, Workflow, WorkflowTable, transition
from workflows.command import resolve_type
from workflows.errors import DeadlineExceeded, InvalidCommand, JournalError, RetriesExhausted, UnknownWorkflow

log = structlog.get_logger("supervisor")


class Parking:
    """Retry timers, deadlines and the mode; ``ready`` hands a due workflow to dispatch."""

    def __init__(self, options: Options, journal: JournalPort, table: WorkflowTable,
                 ready: Callable[[str], None], clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None) -> None:
        self.options = options
        self.metrics = metrics or Metrics.off()
        self.journal = journal
        self.table = table
        self.ready = ready
        self.clock = clock
        self.mode = Mode.NORMAL
        self.held = False
        self.timers = TimerHeap()
        self.retrying: set[str] = set()
        self.wake = asyncio.Event()
        self._signalling = asyncio.Lock()  # one mode change at a time: memory follows the journal's order

    def park(self, wf: Workflow, report: Report) -> Parked | Expired:
        """The record that ends a parked attempt: `Parked` with its retry time; once its
        retry policy's attempts or its deadline run out, `Expired` (the workflow then
        runs to compensate, and the runner journals its end) or, with
        ``on_exhausted="pause"``, a paused `Parked`. A compensation is retried however
        long it takes: what was done is undone, however late."""
        now = self.clock()
        if report.end is Kind.PAUSED:
            return self.pause(wf, report.reason, now)
        if report.end in (Kind.SLEEPING, Kind.WAITING):
            return self.suspend(wf, report, now)
        policy = report.retry or {}
        due = now + self._delay(wf, policy)
        exhausted = None if wf.compensating else self._exhausted(wf, policy, due)
        if exhausted is not None:
            if policy.get("on_exhausted") == "pause":
                return self.pause(wf, f"{exhausted['message']}; last: {report.reason}", now)
            self.retrying.discard(wf.id)
            wf.compensating, wf.error = True, exhausted
            return Expired(wf.id, exhausted, now)
        blocked = report.end is Kind.BLOCKED
        wf.state = transition(wf.state, Event.BLOCK if blocked else Event.DELAY)
        wf.next_retry_at, wf.reason = due, report.reason
        self.wait(wf.id, due)
        return Parked(wf.id, blocked, wf.attempts, due, now, report.reason)

    def _delay(self, wf: Workflow, policy: dict[str, Any]) -> float:
        """Seconds to the retry: the policy's backoff, else the mode's interval (in fast
        mode, at most the fast interval), plus the jitter of (workflow id, attempt)."""
        fast = self.mode is Mode.SUSPENDED_FAST
        interval = self.options.fast_retry_interval_s if fast else self.options.slow_retry_interval_s
        if policy.get("initial_interval_s") is not None:
            backoff = backoff_interval(policy["initial_interval_s"], policy["backoff"], policy["max_interval_s"],
                                       wf.attempts)
            interval = min(backoff, interval) if fast else backoff
        return retry_delay(interval, self.options.jitter_s, wf.id, wf.attempts)

    def _exhausted(self, wf: Workflow, policy: dict[str, Any], due: float) -> Error | None:
        """The error of a retry the policy no longer allows, or None."""
        limit = policy.get("max_attempts")
        if limit is not None and wf.attempts >= limit:
            return _error(RetriesExhausted, f"max_attempts={limit} reached")
        deadline = policy["deadline_s"] if "deadline_s" in policy else resolve_deadline(wf.type)
        if deadline is not None and due > wf.submitted_at + deadline:
            return _error(DeadlineExceeded, f"deadline_s={deadline} passed after {wf.attempts} attempts")
        return None

    def pause(self, wf: Workflow, reason: str, now: float) -> Parked:
        """Leave ``wf`` paused: no timer, out of the backlog; it keeps its MaxCmds slot."""
        wf.state = transition(wf.state, Event.PAUSE)
        wf.next_retry_at, wf.reason = None, reason
        self.done(wf.id)
        log.warning("workflow_paused", workflow_id=wf.id, attempt=wf.attempts, reason=reason)
        return Parked(wf.id, False, wf.attempts, 0.0, now, reason, paused=True)

    def suspend(self, wf: Workflow, report: Report, now: float) -> Parked:
        """Park ``wf`` on ``ctx.sleep`` or ``ctx.wait_for``: out of the backlog (it does not
        hold intake suspended), keeping its MaxCmds slot, on the timer heap at its due
        time (a waiting one at once if its signal is journaled meanwhile)."""
        waiting = report.end is Kind.WAITING
        wf.state = transition(wf.state, Event.WAIT if waiting else Event.SLEEP)
        wf.next_retry_at, wf.reason = report.wake_at or None, report.reason
        self.done(wf.id)
        self.schedule(wf, now)
        return Parked(wf.id, False, wf.attempts, report.wake_at, now, report.reason, wait=report.end.value)

    def schedule(self, wf: Workflow, now: float) -> None:
        """Put a sleeping or waiting ``wf`` on the timer heap: at once if its signal is
        journaled, else at its due time (none for a wait without a timeout)."""
        if wf.state is State.WAITING and wf.reason in wf.signals:
            self.timers.push(now, wf.id)
        elif wf.next_retry_at:  # 0 or None: a wait without a timeout
            self.timers.push(wf.next_retry_at, wf.id)
        self.wake.set()

    async def resume_workflow(self, workflow_id: str) -> bool:
        """Run a paused workflow again from its last outcome; False (nothing done) unless
        it is paused. Journaled first, as a ``delayed`` record due at once, so a restart
        runs it too. Idempotent: a second call finds it resumed."""
        wf = self.table.workflows.get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        if wf.state is not State.PAUSED:
            return False
        now = self.clock()
        wf.state = transition(wf.state, Event.RESUME)  # before the await: a concurrent call is a no-op
        try:
            await self.journal.append([Parked(wf.id, False, wf.attempts, now, now, wf.reason)])
        except BaseException:
            wf.state = State.PAUSED
            raise
        log.info("workflow_resumed", workflow_id=wf.id, attempt=wf.attempts)
        self.ready(wf.id)
        return True

    async def retry_now(self, wf: Workflow) -> bool:
        """Retry a ``delayed`` or ``blocked`` workflow at once instead of at its timer;
        False (nothing done) in any other state. Journaled first, as a parked record due
        now (as `resume_workflow`), so a restart retries it at once too. Idempotent: a
        second call finds it retrying (or retried)."""
        if not wf.state.parked:
            return False
        now = self.clock()
        blocked = wf.state is State.BLOCKED
        await self.journal.append([Parked(wf.id, blocked, wf.attempts, now, now, wf.reason)])
        if not wf.state.parked:  # its timer ran it (or it ended) meanwhile
            return False
        wf.next_retry_at = now
        log.info("workflow_retry_now", workflow_id=wf.id, attempt=wf.attempts)
        self.wait(wf.id, now)
        return True

    def wait(self, workflow_id: str, due: float) -> None:
        """Retry ``workflow_id`` at ``due``."""
        self.retrying.add(workflow_id)
        self.timers.push(due, workflow_id)
        self.wake.set()

    def done(self, workflow_id: str) -> None:
        """``workflow_id`` finished: no backlog, no timer."""
        self.retrying.discard(workflow_id)
        self.timers.discard(workflow_id)

    async def settle(self, blocked: bool, succeeded: bool) -> None:
        """Move the mode on: a Blocked report suspends, a parked command's success
        hastens retries, an empty backlog reopens intake."""
        if blocked:
            await self.signal(Signal.BLOCKED)
        if self.mode is Mode.NORMAL:
            return
        if succeeded and self.mode is Mode.SUSPENDED_SLOW:
            await self.signal(Signal.RETRY_SUCCEEDED)
        if not self.retrying:
            await self.signal(Signal.DRAINED)

    async def signal(self, signal: Signal, held: bool | None = None) -> None:
        """Journal the mode ``signal`` leads to, then take it. ``held`` is the operator's
        hold to set with it (an operator's signal is journaled even if the mode stays).
        Signals take turns: each is computed from the mode the one before it left, and
        the last one journaled is the last one taken."""
        async with self._signalling:
            keep = self.held if held is None else held
            mode = next_mode(self.mode, signal, held=keep)
            if mode is self.mode and held is None:
                return
            await self.journal.append([ModeChanged(mode.value, keep, self.clock())])
            log.info("mode_changed", mode=mode.value, was=self.mode.value, signal=signal.value)
            self.mode, self.held = mode, keep
        if mode is Mode.SUSPENDED_FAST:
            self._hasten_retries()

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
        self.wake.set()

    def _drained(self) -> bool:
        """Nothing parked, no hold, and the mode still suspended: its `Signal.DRAINED` is due."""
        return self.mode is not Mode.NORMAL and not self.retrying and not self.held

    async def timer_loop(self) -> None:
        """Hand due workflows to dispatch. Also reopens intake when the backlog drained
        but the mode change could not be journaled then (a report's `settle` failed):
        no later report may come to move it on, so it is tried again here, at the slow
        retry interval, until it is journaled."""
        while True:
            due = self.timers.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            if self.mode is not Mode.NORMAL:  # look again while suspended: the backlog may drain
                again = max(self.options.slow_retry_interval_s, 0.05)
                timeout = again if timeout is None else min(timeout, again)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                if self._drained():
                    with contextlib.suppress(JournalError):  # tried again on the next round
                        await self.signal(Signal.DRAINED)
            self.wake.clear()
            for wid in self.timers.pop_due(self.clock()):
                wf = self.table.workflows.get(wid)
                if wf is not None and (wf.state.parked or wf.state.timed):
                    if wf.state.parked:
                        self.metrics.count(RETRIES, 1, wf.type)
                    wf.state = transition(wf.state, Event.RETRY_DUE)
                    self.ready(wid)


def _error(cls: type[Exception], message: str) -> Error:
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "message": message, "traceback": ""}


def resolve_deadline(type_name: str) -> float | None:
    try:
        return resolve_type(type_name).deadline_s
    except InvalidCommand:
        return None
