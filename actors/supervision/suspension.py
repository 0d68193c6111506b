"""Parked attempts and the suspension mode: retry times, deadlines, the mode machine.

`Suspension` is a part of `actors.supervision.supervisor.SupervisorCore`: it parks
an attempt that raised `Delayed` or `Blocked` (or ends it past its command's
deadline), wakes it when its retry timer is due, and moves the mode on as reports
come in. A mode change is journaled before it is acted on by a restarted supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import structlog

from actors.options import Options
from actors.supervision.modes import Mode, Signal, next_mode
from actors.supervision.ports import JournalPort
from actors.supervision.retry import TimerHeap, retry_delay
from actors.workflow_state import Event, Workflow, WorkflowTable, transition
from workflows.command import resolve_type
from workflows.errors import DeadlineExceeded, InvalidCommand

log = structlog.get_logger("supervisor")


class Suspension:
    options: Options
    journal: JournalPort
    clock: Any
    table: WorkflowTable
    mode: Mode
    held: bool
    timers: TimerHeap
    ready: deque[str]
    retrying: set[str]
    _wake_dispatch: asyncio.Event
    _wake_timer: asyncio.Event

    def _park(self, wf: Workflow, kind: str) -> dict[str, Any]:
        """The record that ends a parked attempt: ``delayed``/``blocked`` with its retry
        time; past the command's deadline, ``compensating`` (it has outcomes to undo) or
        ``failed`` with `DeadlineExceeded`. A compensation is retried past the deadline:
        what was done is undone, however late."""
        now = self.clock()
        interval = (self.options.fast_retry_interval_s if self.mode is Mode.SUSPENDED_FAST
                    else self.options.slow_retry_interval_s)
        due = now + retry_delay(interval, self.options.jitter_s, wf.id, wf.attempts)
        deadline = resolve_deadline(wf.type)
        if deadline is not None and due > wf.submitted_at + deadline and not wf.compensating:
            error = {"type": f"{DeadlineExceeded.__module__}.DeadlineExceeded",
                     "message": f"deadline_s={deadline} passed after {wf.attempts} attempts", "traceback": ""}
            self.retrying.discard(wf.id)
            if not wf.outcomes:
                return {"k": "failed", "w": wf.id, "error": error, "t": now}
            wf.compensating, wf.error = True, error
            return {"k": "compensating", "w": wf.id, "error": error, "t": now}
        wf.state = transition(wf.state, Event.BLOCK if kind == "blocked" else Event.DELAY)
        wf.next_retry_at = due
        self.retrying.add(wf.id)
        self.timers.push(due, wf.id)
        self._wake_timer.set()
        return {"k": kind, "w": wf.id, "attempt": wf.attempts, "next_retry_at": due, "t": now}

    async def _settle_mode(self, blocked: bool, succeeded: bool) -> None:
        """Move the mode on: a Blocked report suspends, a parked command's success
        hastens retries, an empty backlog reopens intake."""
        if blocked:
            await self._signal(Signal.BLOCKED)
        if self.mode is Mode.NORMAL:
            return
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


def resolve_deadline(type_name: str) -> float | None:
    try:
        return resolve_type(type_name).deadline_s
    except InvalidCommand:
        return None
