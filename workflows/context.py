"""`Context`: what a running workflow sees of the coordinator.

A context belongs to one attempt of one workflow. Its outcome list is restored from
the journal before the attempt starts, so ``step`` replays what was already done and
calls services only for steps that have no outcome yet.

Steps and their keys. ``ctx.step(...)`` reserves its step index, hence its
idempotency key ``"{id}/{index}"``, when it is called, before anything runs: steps
made in the same order get the same indices on every attempt, whatever order they
finish in. `Context.gather` runs reserved steps concurrently; each journals its
outcome under its own index, and a step that finishes before an earlier one holds
its outcome until the earlier one is journaled (the journal keeps outcome *i* only
after *i-1*, one outcome per index). A step made or started while another is in
flight outside one ``gather`` raises `ConcurrentStep`: its index would depend on
timing, and a replay could give it another step's outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, Protocol

import structlog

from workflows.command import check_workflow_id, encode_command
from workflows.errors import CommandFailed, ConcurrentStep, CoordinatorError, InvalidCommand, NonDeterminism


class Outcome(NamedTuple):
    """One journaled step result: its index, the service that produced it, the value."""

    step: int
    service: str
    value: Any


class Recorder(Protocol):
    """Journals one outcome durably and returns the value the journal holds for it.

    The journal keeps the first outcome of each step index: if another attempt got
    there first, its value comes back and this one's is dropped.
    """

    async def record(self, workflow_id: str, kind: str, step: int, service: str, value: Any) -> Any: ...


_STEP: contextvars.ContextVar[tuple[Context, int] | None] = contextvars.ContextVar("workflow_step", default=None)
"""The context and index of the step whose function is running in this task (for `Context.key`)."""


class _Unjournaled(CoordinatorError):
    """A step finished after an earlier one of its ``gather`` failed: its outcome cannot
    be journaled (the journal refuses a skipped index); the retry calls it again."""


class Suspend(Exception):  # control flow, not an error of the command
    """Raised by ``ctx.sleep``, ``ctx.wait_for`` and ``ctx.child`` to park the attempt:
    ``wait`` is ``"sleeping"`` or ``"waiting"`` (for the signal ``name``), until ``due``
    (0: none). ``request``: the child workflow ``ctx.child`` asks the supervisor to submit
    (``{"id", "type", "fields"}``)."""

    def __init__(self, wait: str, due: float, name: str = "", request: dict[str, Any] | None = None) -> None:
        super().__init__(f"{wait} {name} until {due}".replace("  ", " "))
        self.wait, self.due, self.name, self.request = wait, due, name, request


CHILD_SIGNAL = "coordinator.child:"
"""The signal a parent waits for, ``CHILD_SIGNAL + child id``: the supervisor journals
the child's end (``{"id", "state", "result", "error"}``) under it."""

MAX_CHILD_FIELDS_BYTES = 16 << 20
"""The largest child command encoded here; the supervisor applies its own limit."""


def child_id(parent_id: str, step: int) -> str:
    """The id of a parent's child made at ``step`` without an id: ``"{parent}/child/{step}"``,
    or, for a parent id too long for that, one derived from its hash."""
    wid = f"{parent_id}/child/{step}"
    try:
        return check_workflow_id(wid)
    except InvalidCommand:
        return f"child-{hashlib.sha256(parent_id.encode('utf-8', 'surrogatepass')).hexdigest()}/{step}"


class Context:
    """The running workflow's view: identity, attempt, outcomes, services, logger."""

    def __init__(
        self,
        workflow_id: str,
        attempt: int,
        outcomes: list[Outcome],
        recorder: Recorder,
        gateway: Any = None,
        *,
        compensations: list[Outcome] | None = None,
        compensating: bool = False,
        boundary: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        signals: dict[str, Any] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.attempt = attempt
        self._outcomes = outcomes
        self._compensations = compensations if compensations is not None else []
        self._compensating = compensating
        self._recorder = recorder
        self._gateway = gateway
        self._cursor = 0
        """The next step index to reserve."""
        self._log: Any = None
        self._unstarted: dict[Coroutine[Any, Any, Any], int] = {}
        self._running: set[int] = set()
        self._groups: dict[int, int] = {}
        """Reserved index -> the `gather` call running it."""
        self._gathers = itertools.count(1)
        self._lost: int | None = None
        """The lowest index that settled without an outcome since the cursor last rewound."""
        self._settled: list[asyncio.Future[None]] = []
        self._boundary = boundary
        """Called before each step: raises `Cancelled` once the workflow is cancelled."""
        self._clock = clock
        self._signals = signals or {}
        self._events: list[asyncio.Task[Any]] = []

    @property
    def log(self) -> Any:
        """A structlog logger bound to this workflow and attempt (made on first use)."""
        if self._log is None:
            self._log = structlog.get_logger("workflow").bind(workflow_id=self.workflow_id, attempt=self.attempt)
        return self._log

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """The journaled outcomes of ``exec``, in step order (read-only)."""
        return tuple(self._outcomes)

    @property
    def compensations(self) -> tuple[Outcome, ...]:
        """The journaled outcomes of ``compensate`` so far."""
        return tuple(self._compensations)

    @property
    def gateway(self) -> Any:
        """The service gateway, bound to this context so calls carry its idempotency key."""
        bind = getattr(self._gateway, "bind", None)
        return bind(self) if bind is not None else self._gateway

    def key(self, step: int | None = None) -> str:
        """The idempotency key of a step: by default the step whose function is running
        (inside ``ctx.step``), else the next step to be made."""
        index = step
        if index is None:
            current = _STEP.get()
            index = current[1] if current is not None and current[0] is self else self._cursor
        if self._compensating:
            return f"{self.workflow_id}/compensate/{index}"
        return f"{self.workflow_id}/{index}"

    def _current(self) -> list[Outcome]:
        return self._compensations if self._compensating else self._outcomes

    async def record(self, service: str, value: Any) -> Any:
        """Journal ``value`` as the next outcome durably, then append it; returns it."""
        self._check_idle("ctx.record")
        if self._boundary is not None:
            self._boundary()
        current = self._current()
        index = len(current)
        stored = await self._journal(index, service, value)
        self._cursor = index + 1
        return stored

    async def _journal(self, index: int, service: str, value: Any) -> Any:
        kind = "compensation" if self._compensating else "outcome"
        stored = await self._recorder.record(self.workflow_id, kind, index, service, value)
        self._current().append(Outcome(index, service, stored))
        return stored

    def step(self, service: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Reserve the next step index now; awaited, run that step: the journaled
        outcome if there is one, else call ``fn`` (plain or async) and record its value.

        Await it at once, or pass several to `gather`. `ConcurrentStep` if another
        step is in flight (not awaited yet through ``gather``)."""
        self._check_idle("ctx.step")
        if self._boundary is not None:
            self._boundary()
        index = self._cursor
        self._cursor += 1
        coro = self._step(index, service, fn, args, kwargs)
        self._unstarted[coro] = index
        return coro

    async def gather(self, *steps: Awaitable[Any]) -> list[Any]:
        """Run steps made by ``ctx.step`` concurrently; their results in call order.

        Each keeps the index and key it reserved when it was made. If one raises,
        ``gather`` waits for the others to settle, then raises the error of the
        earliest step that failed; the outcomes journaled before it stay journaled."""
        coros = [s for s in steps if isinstance(s, Coroutine) and s in self._unstarted]
        if len(coros) != len(steps):
            raise TypeError("ctx.gather takes the not yet awaited results of ctx.step(...) calls of this context")
        group = next(self._gathers)
        for coro in coros:
            self._groups[self._unstarted[coro]] = group
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(coro) for coro in coros]  # started in call order
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, _Unjournaled)), errors[0])
        return results

    def _check_idle(self, what: str) -> None:
        if self._running:
            raise ConcurrentStep(
                f"{what} of {self.workflow_id} was called while step {min(self._running)} is in flight: "
                "run steps concurrently only with ctx.gather(ctx.step(...), ...)")

    async def _step(self, index: int, service: str, fn: Callable[..., Any],
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._start(index)
        try:
            return await self._run(index, service, fn, args, kwargs)
        except BaseException:
            self._lost = index if self._lost is None else min(self._lost, index)
            raise
        finally:
            self._settle(index)

    def _start(self, index: int) -> None:
        for coro, i in list(self._unstarted.items()):
            if i == index:
                del self._unstarted[coro]
        group = self._groups.get(index)
        # A gather's steps may start in any order: each waits its turn to be journaled.
        earlier = [i for i in self._unstarted.values() if i < index and (group is None or self._groups.get(i) != group)]
        alongside = [i for i in self._running if group is None or self._groups.get(i) != group]
        if earlier or alongside:
            self._lost = index if self._lost is None else min(self._lost, index)
            self._settle(index)
            what = f"step {min(earlier)} was made before it and is not awaited" if earlier else \
                f"step {min(alongside)} is in flight"
            raise ConcurrentStep(f"step {index} of {self.workflow_id} started while {what}: await steps in "
                                 "the order they are made, or run them together with ctx.gather")
        self._running.add(index)

    async def _run(self, index: int, service: str, fn: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        current = self._current()
        if index < len(current):
            done = current[index]
            if done.service != service:
                raise NonDeterminism(
                    f"step {index} of {self.workflow_id} recorded service {done.service!r}, "
                    f"replay asked for {service!r}"
                )
            return done.value
        token = _STEP.set((self, index))
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        finally:
            _STEP.reset(token)
        while len(current) < index:  # an earlier step of the same gather is still running
            if self._lost is not None and self._lost < index:
                raise _Unjournaled(f"step {index} of {self.workflow_id} follows step {self._lost}, which failed")
            waiter = asyncio.get_running_loop().create_future()
            self._settled.append(waiter)
            await waiter
        return await self._journal(index, service, value)

    def _settle(self, index: int) -> None:
        """``index`` is done (with or without an outcome): wake the steps waiting their turn.
        Once nothing is in flight, the cursor goes back to the first step without an
        outcome, as a step that raised never took its index."""
        self._running.discard(index)
        self._groups.pop(index, None)
        waiters, self._settled = self._settled, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        if not self._running and not self._unstarted and self._lost is not None:
            self._cursor, self._lost = self._lost, None

    async def sleep(self, seconds: float) -> None:
        """A durable timer, a step: its wake time is journaled as the step's outcome; the
        attempt parks (state ``sleeping``) until then, and a later attempt returns at once."""
        due = await self.step("coordinator.sleep", lambda: self._clock() + max(0.0, float(seconds)))
        if self._clock() < due:
            raise Suspend("sleeping", due)

    async def wait_for(self, name: str, timeout_s: float | None = None) -> Any:
        """The payload of the signal ``name``; the attempt parks (state ``waiting``) until it
        is journaled. Two steps: the timeout's due time, then the signal (or the timeout,
        which raises `TimeoutError` here, on every replay too)."""
        due = await self.step("coordinator.wait_for",
                              lambda: None if timeout_s is None else self._clock() + max(0.0, float(timeout_s)))

        def arrived() -> dict[str, Any]:
            if name in self._signals:
                return {"signal": self._signals[name]}
            if due is not None and self._clock() >= due:
                return {"timeout": timeout_s}
            raise Suspend("waiting", due or 0.0, name)

        got = await self.step(f"coordinator.signal.{name}", arrived)
        if "timeout" in got:
            raise TimeoutError(f"no signal {name!r} within {got['timeout']}s")
        return got["signal"]

    async def child(self, cmd: Any, workflow_id: str | None = None) -> Any:
        """Run ``cmd`` as a child workflow; its result. Two steps: the child's id (by default
        `child_id` of this workflow and the step), then the child's end. The attempt parks
        (state ``waiting``) while the supervisor submits the child (once: a replay submits
        the same id, answered by the journal) and until it ends; the end is journaled as
        the second step's outcome. A child that did not complete raises `CommandFailed`
        here, as a failed step does, on every replay too. For ``exec``, not ``compensate``."""
        if self._compensating:
            raise TypeError("ctx.child runs in exec, not in compensate")
        name, fields = encode_command(cmd, MAX_CHILD_FIELDS_BYTES)
        wanted = workflow_id if workflow_id is not None else child_id(self.workflow_id, self._cursor)
        made = await self.step("coordinator.child", lambda: {"id": check_workflow_id(wanted), "type": name})
        cid: str = made["id"]
        signal = CHILD_SIGNAL + cid

        def ended() -> Any:
            if signal in self._signals:
                return self._signals[signal]
            raise Suspend("waiting", 0.0, signal, request={"id": cid, "type": name, "fields": fields})

        end = await self.step("coordinator.child.end", ended)
        if end["state"] == "completed":
            return end["result"]
        error = end.get("error") or {}
        raise CommandFailed(cid, error.get("type", "unknown"), error.get("message", ""), error.get("traceback", ""))

    def set_event(self, key: str, value: Any) -> None:
        """Journal ``value`` under ``key`` (not a step: a replay journals it again); the
        attempt ends or parks only once it is durable."""
        journal = getattr(self._recorder, "event", None)
        if journal is not None:
            self._events.append(asyncio.get_running_loop().create_task(journal(self.workflow_id, key, value)))

    async def flush(self) -> None:
        """Wait until every ``set_event`` of this attempt is journaled."""
        events, self._events = self._events, []
        if events:
            await asyncio.gather(*events)
