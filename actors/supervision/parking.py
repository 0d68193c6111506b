"""Parked attempts and the suspension mode: retry timers, deadlines, the mode machine.

`Parking` is a part of `actors.supervision.supervisor.SupervisorCore`. It parks an
attempt that raised `Delayed` or `Blocked` at a jittered retry time (or expires it
past its command's deadline), hands it back to dispatch when its timer is due, and
moves the mode on as reports come in.

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

import structlog

from actors.metrics import RETRIES, Metrics
from actors.options import Options
from actors.records import Expired, Kind, ModeChanged, Parked, Report
from actors.supervision.modes import Mode, Signal, next_mode
from actors.supervision.ports import JournalPort
from actors.supervision.retry import TimerHeap, retry_delay
from actors.workflow_state import Event, Workflow, WorkflowTable, transition
from workflows.command import resolve_type
from workflows.errors import DeadlineExceeded, InvalidCommand

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

    def park(self, wf: Workflow, report: Report) -> Parked | Expired:
        """The record that ends a parked attempt: `Parked` with its retry time, or past
        the command's deadline `Expired` (the workflow then runs to compensate, and the
        runner journals its end). A compensation is retried past the deadline: what
        was done is undone, however late."""
        now = self.clock()
        interval = (self.options.fast_retry_interval_s if self.mode is Mode.SUSPENDED_FAST
                    else self.options.slow_retry_interval_s)
        due = now + retry_delay(interval, self.options.jitter_s, wf.id, wf.attempts)
        deadline = resolve_deadline(wf.type)
        if deadline is not None and due > wf.submitted_at + deadline and not wf.compensating:
            error = {"type": f"{DeadlineExceeded.__module__}.DeadlineExceeded",
                     "message": f"deadline_s={deadline} passed after {wf.attempts} attempts", "traceback": ""}
            self.retrying.discard(wf.id)
            wf.compensating, wf.error = True, error
            return Expired(wf.id, error, now)
        blocked = report.end is Kind.BLOCKED
        wf.state = transition(wf.state, Event.BLOCK if blocked else Event.DELAY)
        wf.next_retry_at = due
        self.wait(wf.id, due)
        return Parked(wf.id, blocked, wf.attempts, due, now, report.reason)

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
        hold to set with it (an operator's signal is journaled even if the mode stays)."""
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

    async def timer_loop(self) -> None:
        while True:
            due = self.timers.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            for wid in self.timers.pop_due(self.clock()):
                wf = self.table.workflows.get(wid)
                if wf is not None and wf.state.parked:
                    wf.state = transition(wf.state, Event.RETRY_DUE)
                    self.metrics.count(RETRIES, 1, wf.type)
                    self.ready(wid)


def resolve_deadline(type_name: str) -> float | None:
    try:
        return resolve_type(type_name).deadline_s
    except InvalidCommand:
        return None
