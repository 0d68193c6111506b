"""The step runner behind a CommandActor: runs workflow attempts, one per slot.

The runner writes what happens inside an attempt (see the table in `actors.records`):
``started``, each outcome and compensation, ``compensating`` as ``exec`` raises, and
the attempt's end (``completed``, ``compensated``, ``failed``), journaled before the
supervisor hears of it (a `Report`), so a result is durable before it is reported.
A first attempt starts from no steps; any other gets the journaled ones of its
workflow from the journal (one call per dispatch batch), so it replays done steps and
calls services only for new ones.
The journal answers a record of a workflow it holds as ended with that end
(`Ended`): the attempt is stale, it stops and reports what the journal holds, never
what it computed (or nothing, when the journal does not know the workflow).
The gateway the steps call through is built from ``Options.gateway`` (`actors.gateways`).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgpack
import structlog

from actors import logs
from actors.gateways import build_gateway as build_gateway
from actors.metrics import STEP_LATENCY, Metrics
from actors.records import (
    Compensated,
    Compensating,
    Completed,
    Dispatch,
    Ended,
    Ending,
    Error,
    EventSet,
    Failed,
    Kind,
    Record,
    Report,
    Started,
    Step,
    Steps,
    Stopped,
)
from workflows.command import Command, decode_command
from workflows.context import Context, Outcome, Suspend
from workflows.errors import (
    Blocked,
    Cancelled,
    CommandFailed,
    Delayed,
    InvalidCommand,
    JournalError,
    NonDeterminism,
    PayloadTooLarge,
    cancel_error,
)
from workflows.policy import COORDINATOR_SCHEDULE

log = structlog.get_logger("runner")

Append = Callable[[list[Record]], Awaitable[list[Any]]]
LiveSteps = Callable[[list[str]], Awaitable[dict[str, Steps | Ended]]]
Reporting = Callable[..., Report]
"""A `Report` of one attempt, given its end and what goes with it."""


def retry_kind(exc: BaseException) -> Kind | None:
    """``delayed`` or ``blocked`` for those errors, their subclasses and errors raised from them."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, Blocked):
            return Kind.BLOCKED
        if isinstance(cur, Delayed):
            return Kind.DELAYED
        seen.add(id(cur))
        cur = cur.__cause__
    return None


def diverged(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, `NonDeterminism`: a replay met other code."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, NonDeterminism):
            return True
        seen.add(id(cur))
        cur = cur.__cause__
    return False


def retry_wire(cmd: Command) -> dict[str, Any]:
    """What the supervisor needs of the command's retry policy, and its deadline."""
    cls = type(cmd)
    wire = {} if cls.retry is COORDINATOR_SCHEDULE else cls.retry.to_wire()
    wire["deadline_s"] = cls.deadline_s
    return wire


def reason(exc: BaseException) -> str:
    """A parked attempt's reason as journaled: the error's type and message, bounded."""
    return _bounded(f"{type(exc).__qualname__}: {exc}")


MAX_ERROR_TEXT = 64 << 10
"""Characters kept of an error's message and of its traceback: a failure is journaled,
and an error carrying megabytes must not make its record too big to be written."""
RAN_MEMORY = 20_000
"""Finished attempts a runner remembers, to skip them in a batch sent again."""


def describe(exc: BaseException) -> Error:
    """An error as the journal keeps it: type name, message and traceback text, each bounded."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}"[:MAX_ERROR_TEXT],
        "message": _bounded(str(exc)),
        "traceback": _bounded("".join(traceback.format_exception(exc))),
    }


def _bounded(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    cut = len(text) - MAX_ERROR_TEXT
    half = MAX_ERROR_TEXT // 2
    return f"{text[:half]}\n... [{cut} characters cut] ...\n{text[-half:]}"


class StaleAttempt(JournalError):
    """The journal holds the workflow as ended: this attempt's records are dropped."""

    def __init__(self, end: Ended) -> None:
        super().__init__(f"the journal holds this workflow as ended ({end.kind})")
        self.end = end


class Runner:
    """Runs attempts; ``append`` journals records, ``live_steps`` reads the journaled
    steps of attempts that are not first ones, ``report`` tells the supervisor."""

    def __init__(self, append: Append, live_steps: LiveSteps, report: Callable[[Report], Awaitable[Any]],
                 gateway: Any, max_payload_bytes: int, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, deployment: str = "") -> None:
        self._append = append
        self._deployment = deployment
        """The deployment this runner's actor serves (``""``: none), bound to each attempt's log lines."""
        self._metrics = metrics or Metrics.off()
        self._step_since: dict[str, tuple[str, float]] = {}
        """Per running workflow: its type, and when its current step began (the last one's end)."""
        self._live_steps = live_steps
        self._report = report
        self._gateway = gateway
        self._max_payload = max_payload_bytes
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._claimed: dict[tuple[str, int], asyncio.Future[None]] = {}
        """Attempts of batches in progress, each with its batch's end."""
        self._ran: OrderedDict[tuple[str, int], None] = OrderedDict()
        """The last `RAN_MEMORY` attempts run to their end, oldest first."""
        self._attempts: dict[str, int] = {}  # the attempt each running workflow is on, for its step records
        self._stops: dict[str, tuple[str, Error]] = {}
        """Workflows an operator cancelled (``"cancel"``) or terminated, with their error."""

    def stop(self, items: list[tuple[str, str, Error]]) -> None:
        """Cancel or terminate running workflows ``(id, "cancel" or "terminate", error)``:
        each raises `Cancelled` at its next step boundary (a compensation only for terminate)."""
        for wid, how, error in items:
            self._stops[wid] = (how, error)

    def _boundary(self, wid: str, compensating: bool) -> None:
        stop = self._stops.get(wid)
        if stop is not None and (not compensating or stop[0] == "terminate"):
            raise Cancelled(stop[1]["message"])

    # Recorder protocol, for Context
    async def record(self, workflow_id: str, kind: str, step: int, service: str, value: Any) -> Any:
        self._check_payload(value, f"{kind} {step} of {workflow_id}")
        answer = await self._journal(Step(workflow_id, step, service, value, compensation=kind == "compensation",
                                          t=self._clock(), attempt=self._attempts.get(workflow_id)))
        since = self._step_since.get(workflow_id)
        if since is not None:
            now = time.perf_counter()
            self._metrics.observe(STEP_LATENCY, now - since[1], since[0])
            self._step_since[workflow_id] = (since[0], now)
        return answer

    async def event(self, workflow_id: str, key: str, value: Any) -> None:
        self._check_payload(value, f"event {key!r} of {workflow_id}")
        await self._journal(EventSet(workflow_id, key, value, self._clock()))
        await self._report(Report(workflow_id, 0, "", Kind.EVENT, value, reason=key))

    async def _journal(self, record: Record) -> Any:
        """Append one record; its answer, or `StaleAttempt` if the journal holds the workflow as ended."""
        answer = (await self._append([record]))[0]
        if isinstance(answer, Ended):
            raise StaleAttempt(answer)
        return answer

    def _check_payload(self, value: Any, what: str) -> None:
        try:
            size = len(msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadTooLarge(f"{what} cannot be encoded with msgpack ({exc})") from None
        if size > self._max_payload:
            raise PayloadTooLarge(f"{what} is {size} bytes, over the {self._max_payload}-byte limit")

    async def run(self, items: list[Dispatch]) -> None:
        """Run a dispatch batch; returns once every attempt in it has been reported.

        Attempts that are not ``fresh`` get their journaled steps first, in one call
        for the batch. One the journal has no steps for (its end is not durable yet) is
        not run nor reported: the supervisor requeues what a batch left unreported.

        Idempotent per attempt: a batch sent again (Ray could not say whether the first
        call ran) waits for the attempts of it this runner has started, and skips those
        it has finished, instead of running them twice."""
        loop = asyncio.get_running_loop()
        mine = [i for i in items if (i.workflow_id, i.attempt) not in self._claimed
                and (i.workflow_id, i.attempt) not in self._ran]
        others = {self._claimed[(i.workflow_id, i.attempt)] for i in items
                  if (i.workflow_id, i.attempt) in self._claimed}
        done: asyncio.Future[None] = loop.create_future()
        for i in mine:  # claimed before the first await: a second copy of the batch sees them
            self._claimed[(i.workflow_id, i.attempt)] = done
        try:
            await self._run(mine)
        finally:
            for i in mine:
                self._claimed.pop((i.workflow_id, i.attempt), None)
                self._ran[(i.workflow_id, i.attempt)] = None
            while len(self._ran) > RAN_MEMORY:
                self._ran.popitem(last=False)
            done.set_result(None)
        if others:
            await asyncio.gather(*others)

    async def _run(self, items: list[Dispatch]) -> None:
        stale = [i.workflow_id for i in items if not i.fresh]
        steps: dict[str, Steps | Ended] = await self._live_steps(stale) if stale else {}
        tasks = []
        for item in items:
            if not item.fresh and item.workflow_id not in steps:
                continue
            entry = steps.get(item.workflow_id, ([], []))
            # A task copies the context it is created in: every line its attempt logs is bound.
            with logs.scope(**self._fields(item)):
                task = asyncio.get_running_loop().create_task(self._attempt(item, entry))
            self._tasks[item.workflow_id] = task
            self._attempts[item.workflow_id] = item.attempt
            if self._metrics.enabled:
                self._step_since[item.workflow_id] = (item.type, time.perf_counter())
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in items:
            self._stops.pop(item.workflow_id, None)
            if self._tasks.get(item.workflow_id) in tasks:
                del self._tasks[item.workflow_id]
                self._attempts.pop(item.workflow_id, None)
                self._step_since.pop(item.workflow_id, None)

    def _fields(self, item: Dispatch) -> dict[str, Any]:
        fields: dict[str, Any] = {"workflow_id": item.workflow_id, "attempt": item.attempt}
        if self._deployment:
            fields["deployment"] = self._deployment
        return fields

    def cancel_all(self) -> int:
        for task in self._tasks.values():
            task.cancel()
        n = len(self._tasks)
        self._tasks.clear()
        self._attempts.clear()
        self._step_since.clear()
        self._stops.clear()
        return n

    async def _attempt(self, item: Dispatch, entry: Steps | Ended) -> None:
        wid = item.workflow_id
        report = partial(Report, wid, item.attempt, item.incarnation)
        if isinstance(entry, Ended):  # ended before this attempt: report the journal's end
            if entry.kind is not None:
                await self._report(report(entry.kind, entry.result, entry.error))
            return
        started = asyncio.ensure_future(self._append([Started(wid, item.attempt, self._clock())]))
        outcomes, compensations = list(entry[0]), list(entry[1])
        ctx = Context(wid, item.attempt, outcomes, self, self._gateway, boundary=partial(self._boundary, wid, False),
                      clock=self._clock, signals=item.signals)
        if item.stop:
            self._stops[wid] = (item.stop, item.error or cancel_error("", item.stop == "terminate"))
        done: Report | None = None
        end: Ended | None = None
        try:
            cmd = decode_command(item.type, item.fields)
            if item.stop == "terminate":
                done = await self._terminal(report, Stopped(wid, self._stops[wid][1], self._clock(), terminated=True))
            elif item.error is not None:
                done = await self._compensate(cmd, ctx, compensations, item.error, None, report)
            else:
                done = await self._exec(cmd, ctx, compensations, report)
        except InvalidCommand as exc:  # the command cannot be rebuilt: fail it, nothing to undo
            try:
                done = await self._terminal(report, Failed(wid, describe(exc), self._clock()))
            except StaleAttempt as stale:
                end = stale.end
        except StaleAttempt as stale:
            end = stale.end
        held = (await started)[0]
        late = isinstance(held, Ended) and end is None and done is not None
        end = held if isinstance(held, Ended) else end
        if end is not None:  # ended before or during this attempt: report the journal's end
            if end.kind is None:
                return  # unknown to the journal: left to the supervisor, which asks it
            # ``late``: this attempt ended the workflow and its own ``started`` landed after
            # that end (a benign race of a short attempt), not news for an operator.
            (ctx.log.debug if late else ctx.log.info)("attempt_stale", ended=end.kind.value)
            done = report(end.kind, end.result, end.error)
        if done is not None:
            await self._report(done)

    async def _exec(self, cmd: Command, ctx: Context, compensations: list[Outcome], report: Reporting) -> Report:
        try:
            try:
                result = await cmd.exec(ctx)
            finally:
                await ctx.flush()
            self._boundary(ctx.workflow_id, False)
            self._check_payload(result, f"result of {ctx.workflow_id}")
        except (asyncio.CancelledError, JournalError):
            raise  # not the command's failure: the attempt is lost and dispatched again
        except Exception as exc:  # the attempt's one catch-all: classify, never crash the actor
            stop = self._stops.get(ctx.workflow_id)
            if stop is not None:  # an operator's cancel: compensate (unless terminated), end stopped
                ctx.log.info("attempt_stopped", stop=stop[0])
                if stop[0] == "terminate":
                    return await self._terminal(report, Stopped(ctx.workflow_id, stop[1], self._clock(), True))
                return await self._compensate(cmd, ctx, compensations, stop[1], exc, report)
            if isinstance(exc, Suspend):  # ctx.sleep, wait_for or child: parked until its time or signal
                return report(Kind(exc.wait), exc.request, reason=exc.name, wake_at=exc.due)
            if diverged(exc):  # the code no longer replays its journal: an operator decides
                ctx.log.error("attempt_diverged", error=repr(exc))
                return report(Kind.PAUSED, reason=reason(exc))
            kind = retry_kind(exc)
            if kind is not None and not type(cmd).retry.refuses(exc):
                ctx.log.info("attempt_parked", kind=kind.value, reason=str(exc))
                return report(kind, reason=reason(exc), retry=retry_wire(cmd))
            ctx.log.warning("command_failed", error=repr(exc))
            error = describe(exc)
            await self._journal(Compensating(ctx.workflow_id, error, self._clock()))
            return await self._compensate(cmd, ctx, compensations, error, exc, report)
        return await self._terminal(report, Completed(ctx.workflow_id, result, self._clock()))

    async def _compensate(self, cmd: Command, ctx: Context, compensations: list[Outcome],
                          error: Error, exc: BaseException | None, report: Reporting) -> Report:
        """Undo what the outcomes say was done; the end is journaled here: ``failed``
        when there is nothing to undo or ``compensate`` raised, else ``compensated``."""
        wid = ctx.workflow_id
        if not ctx.outcomes:
            return await self._terminal(report, self._end(wid, error, Failed))
        cctx = Context(wid, ctx.attempt, list(ctx.outcomes), self, self._gateway,
                       compensations=compensations, compensating=True, boundary=partial(self._boundary, wid, True))
        cause = exc or CommandFailed(wid, error["type"], error["message"], error.get("traceback", ""))
        try:
            await cmd.compensate(cctx, cause)
        except (asyncio.CancelledError, JournalError):
            raise
        except Exception as cexc:  # compensation failed: park if retryable, else the command fails
            if diverged(cexc):
                ctx.log.error("compensation_diverged", error=repr(cexc))
                return report(Kind.PAUSED, error=error, reason=reason(cexc))
            kind = retry_kind(cexc)
            if kind is not None:
                return report(kind, error=error, reason=reason(cexc))
            failed = error if isinstance(cexc, Cancelled) else dict(error, compensation_error=describe(cexc))
            return await self._terminal(report, self._end(wid, failed, Failed))
        return await self._terminal(report, self._end(wid, error, Compensated))

    def _end(self, wid: str, error: Error, end: type[Failed | Compensated]) -> Ending:
        """The end of a compensation: ``end``, or `Stopped` for a cancelled (terminated) workflow."""
        stop = self._stops.get(wid)
        if stop is None:
            return end(wid, error, self._clock())
        if "compensation_error" in error:
            return Stopped(wid, dict(stop[1], compensation_error=error["compensation_error"]), self._clock())
        return Stopped(wid, stop[1], self._clock(), stop[0] == "terminate")

    async def _terminal(self, report: Reporting, end: Ending) -> Report:
        """Journal the attempt's end; `StaleAttempt` if the journal holds another one."""
        await self._journal(end)
        return report(end.kind, getattr(end, "result", None), getattr(end, "error", None))
