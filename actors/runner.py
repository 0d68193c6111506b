"""The step runner behind a CommandActor: runs workflow attempts, one per slot.

An attempt gets its outcome list from the dispatch (the supervisor's cache of the
journal), so it replays done steps and calls services only for new ones. Its
outcomes are appended through the actor's batched journal client; terminal records
(``completed``, ``compensating``, ``compensated``, ``failed``) are journaled here
before the supervisor hears of them, so a result is durable before it is reported.
The journal answers a record of a workflow it holds as ended with that end
(`Ended`): the attempt is stale, it stops and reports what the journal holds, never
what it computed (or nothing, when the journal does not know the workflow).
The gateway the steps call through is built here from ``Options.gateway``.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import structlog

from actors.journal.index import Ended
from actors.options import Options
from workflows.command import Command, decode_command
from workflows.context import Context, Outcome
from workflows.errors import Blocked, CommandFailed, Delayed, InvalidCommand, JournalError, PayloadTooLarge

log = structlog.get_logger("runner")

Report = dict[str, Any]
Append = Callable[[list[dict[str, Any]]], Awaitable[list[Any]]]


def retry_kind(exc: BaseException) -> str | None:
    """``delayed`` or ``blocked`` for those errors, their subclasses and errors raised from them."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, Blocked):
            return "blocked"
        if isinstance(cur, Delayed):
            return "delayed"
        seen.add(id(cur))
        cur = cur.__cause__
    return None


MAX_ERROR_TEXT = 64 << 10
"""Characters kept of an error's message and of its traceback: a failure is journaled,
and an error carrying megabytes must not make its record too big to be written."""


def describe(exc: BaseException) -> dict[str, Any]:
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
        super().__init__(f"the journal holds this workflow as ended ({end['k']})")
        self.end = end


def _steps(raw: list[Any]) -> list[Outcome]:
    return [Outcome(int(s), str(svc), v) for s, svc, v in raw]


def build_gateway(options: Options) -> Any:
    """Build the service gateway from ``options.gateway`` (``module:factory``), or None.

    Raises `ValueError` naming the option when the module does not import, has no
    such factory, or the factory raises.
    """
    if not options.gateway:
        return None
    module_name, _, name = options.gateway.partition(":")
    where = f"Options.gateway={options.gateway!r}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: module {module_name!r} cannot be imported ({exc})") from exc
    factory: Any = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"{where}: {module_name!r} has no {name!r}")
    if not callable(factory):
        raise ValueError(f"{where}: {name!r} is not callable")
    try:
        return factory(options)
    except Exception as exc:  # the factory is user code: whatever it raises is a bad option
        raise ValueError(f"{where}: the factory raised {exc!r}") from exc


class Runner:
    """Runs attempts; ``append`` journals records, ``report`` tells the supervisor."""

    def __init__(self, append: Append, report: Callable[[Report], Awaitable[Any]], gateway: Any,
                 max_payload_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._append = append
        self._report = report
        self._gateway = gateway
        self._max_payload = max_payload_bytes
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # Recorder protocol, for Context
    async def record(self, workflow_id: str, kind: str, step: int, service: str, value: Any) -> Any:
        self._check_payload(value, f"{kind} {step} of {workflow_id}")
        rec = {"k": kind, "w": workflow_id, "step": step, "service": service, "value": value}
        return await self._journal(rec)

    async def _journal(self, record: dict[str, Any]) -> Any:
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

    async def run(self, items: list[dict[str, Any]]) -> None:
        """Run a dispatch batch; returns once every attempt in it has been reported."""
        tasks = []
        for item in items:
            task = asyncio.get_running_loop().create_task(self._attempt(item))
            self._tasks[item["w"]] = task
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in items:
            if self._tasks.get(item["w"]) in tasks:
                del self._tasks[item["w"]]

    def cancel_all(self) -> int:
        for task in self._tasks.values():
            task.cancel()
        n = len(self._tasks)
        self._tasks.clear()
        return n

    async def _attempt(self, item: dict[str, Any]) -> None:
        wid, attempt = item["w"], item["attempt"]
        start = {"k": "started", "w": wid, "attempt": attempt, "t": self._clock()}
        started = asyncio.ensure_future(self._append([start]))
        outcomes, compensations = _steps(item["outcomes"]), _steps(item["compensations"])
        ctx = Context(wid, attempt, outcomes, self, self._gateway)
        report: Report = {"w": wid, "attempt": attempt, "inc": item["inc"]}
        end: Ended | None = None
        try:
            cmd = decode_command(item["type"], item["fields"])
            if item.get("error") is not None:
                report.update(await self._compensate(cmd, ctx, compensations, item["error"], None))
            else:
                report.update(await self._exec(cmd, ctx, compensations))
        except InvalidCommand as exc:  # the command cannot be rebuilt: fail it, nothing to undo
            try:
                report.update(await self._terminal(wid, "failed", error=describe(exc)))
            except StaleAttempt as stale:
                end = stale.end
        except StaleAttempt as stale:
            end = stale.end
        held = (await started)[0]
        end = held if isinstance(held, Ended) else end
        if end is not None:  # ended before or during this attempt: report the journal's end
            if end["k"] is None:
                return  # unknown to the journal: left to the supervisor, which asks it
            ctx.log.info("attempt_stale", ended=end["k"])
            report.update(kind=end["k"], result=end["result"], error=end["error"])
        report["outcomes"] = [list(o) for o in outcomes]
        report["compensations"] = [list(o) for o in compensations]
        await self._report(report)

    async def _exec(self, cmd: Command, ctx: Context, compensations: list[Outcome]) -> Report:
        try:
            result = await cmd.exec(ctx)
            self._check_payload(result, f"result of {ctx.workflow_id}")
        except (asyncio.CancelledError, JournalError):
            raise  # not the command's failure: the attempt is lost and dispatched again
        except Exception as exc:  # the attempt's one catch-all: classify, never crash the actor
            kind = retry_kind(exc)
            if kind is not None:
                ctx.log.info("attempt_parked", kind=kind, reason=str(exc))
                return {"kind": kind, "reason": str(exc)}
            ctx.log.warning("command_failed", error=repr(exc))
            error = describe(exc)
            await self._journal({"k": "compensating", "w": ctx.workflow_id, "error": error, "t": self._clock()})
            return await self._compensate(cmd, ctx, compensations, error, exc)
        return await self._terminal(ctx.workflow_id, "completed", result=result)

    async def _compensate(self, cmd: Command, ctx: Context, compensations: list[Outcome],
                          error: dict[str, Any], exc: BaseException | None) -> Report:
        wid = ctx.workflow_id
        if not ctx.outcomes:
            return await self._terminal(wid, "failed", error=error)
        cctx = Context(wid, ctx.attempt, list(ctx.outcomes), self, self._gateway,
                       compensations=compensations, compensating=True)
        cause = exc or CommandFailed(wid, error["type"], error["message"], error.get("traceback", ""))
        try:
            await cmd.compensate(cctx, cause)
        except (asyncio.CancelledError, JournalError):
            raise
        except Exception as cexc:  # compensation failed: park if retryable, else the command fails
            kind = retry_kind(cexc)
            if kind is not None:
                return {"kind": kind, "reason": str(cexc), "error": error}
            failed = dict(error, compensation_error=describe(cexc))
            return await self._terminal(wid, "failed", error=failed)
        return await self._terminal(wid, "compensated", error=error)

    async def _terminal(self, wid: str, kind: str, **fields: Any) -> Report:
        """Journal the attempt's end; `StaleAttempt` if the journal holds another one."""
        await self._journal({"k": kind, "w": wid, "t": self._clock(), **fields})
        return {"kind": kind, **fields}
