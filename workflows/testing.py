"""Small workflows and an in-process pool for tests and tools.

The commands here are importable by name in every process (they ship with the
package), so tests on a real Ray cluster can run them on any CommandActor.
Cross-process facts (which service calls happened) go to files under ``dir``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from workflows.command import Command
from workflows.context import Context
from workflows.errors import Blocked, Delayed
from workflows.policy import RetryPolicy


def log_call(directory: str, key: str) -> None:
    """Append one line per service call; O_APPEND keeps lines whole across processes."""
    fd = os.open(os.path.join(directory, "calls.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (key + "\n").encode())
    finally:
        os.close(fd)


def read_calls(directory: str) -> list[str]:
    path = os.path.join(directory, "calls.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


@dataclass
class Echo(Command):
    """Two steps, then returns its value."""

    value: Any
    steps: int = 2

    async def exec(self, ctx: Context) -> Any:
        for i in range(self.steps):
            await ctx.step("echo", lambda i=i: {"i": i, "value": self.value})
        return self.value


@dataclass
class Flaky(Command):
    """One step, then raises ``kind`` (delayed or blocked) until attempt ``failures + 1``."""

    failures: int = 1
    kind: str = "delayed"

    async def exec(self, ctx: Context) -> Any:
        first = await ctx.step("flaky", lambda: ctx.attempt)
        if ctx.attempt <= self.failures:
            raise (Blocked if self.kind == "blocked" else Delayed)(f"attempt {ctx.attempt}: service out")
        return {"first_attempt": first, "attempts": ctx.attempt}


@dataclass
class Impatient(Command):
    """Always delayed, with a deadline: it ends as a failure (`DeadlineExceeded`)."""

    deadline_s: ClassVar[float | None] = 0.3

    async def exec(self, ctx: Context) -> Any:
        raise Delayed(f"attempt {ctx.attempt}: still no answer")


class ServiceTimeout(Exception):
    pass


@dataclass
class RaisesFrom(Command):
    """Raises an ordinary error ``from`` Delayed once: it counts as Delayed."""

    async def exec(self, ctx: Context) -> Any:
        if ctx.attempt == 1:
            try:
                raise Delayed("socket timeout")
            except Delayed as exc:
                raise ServiceTimeout("payments did not answer") from exc
        return ctx.attempt


@dataclass
class Fails(Command):
    """Does ``steps`` steps, then fails; its compensation undoes them in reverse."""

    steps: int = 2
    compensation_fails: bool = False

    async def exec(self, ctx: Context) -> Any:
        for i in range(self.steps):
            await ctx.step(f"svc{i}", lambda i=i: f"done-{i}")
        raise ValueError(f"step {self.steps} rejected the request")

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        for outcome in reversed(ctx.outcomes):
            if self.compensation_fails:
                raise RuntimeError("undo failed")
            await ctx.step(f"undo-{outcome.service}", lambda o=outcome: f"undone-{o.value}")


@dataclass
class Tracked(Command):
    """``steps`` steps, each logging its call (idempotency key) to ``dir`` and sleeping."""

    dir: str
    steps: int = 3
    sleep_s: float = 0.0

    async def exec(self, ctx: Context) -> Any:
        values = []
        for i in range(self.steps):
            values.append(await ctx.step(f"svc{i}", self._call, ctx.key(), i))
        return values

    async def _call(self, key: str, i: int) -> str:
        log_call(self.dir, key)
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        return f"{key}:{i}"


@dataclass
class Returns(Command):
    """Returns what it is given (to test results that cannot be journaled)."""

    kind: str = "set"

    async def exec(self, ctx: Context) -> Any:
        return {1, 2} if self.kind == "set" else "x" * (2 << 20)


@dataclass
class Stalls(Command):
    """Runs ``steps`` steps together (`Context.gather`), then is Delayed on its first
    attempt; its policy allows one attempt, then pauses it until `resume_workflow`.
    Returns each step's idempotency key, read inside the step."""

    steps: int = 3
    retry: ClassVar[RetryPolicy] = RetryPolicy(0.0, 1.0, 0.0, max_attempts=1, on_exhausted="pause")

    async def exec(self, ctx: Context) -> Any:
        keys = await ctx.gather(*(ctx.step(f"svc{i}", self._key, ctx, i) for i in range(self.steps)))
        if ctx.attempt == 1:
            raise Delayed("no answer on the first attempt")
        return keys

    async def _key(self, ctx: Context, i: int) -> str:
        await asyncio.sleep(0.01 * (self.steps - i))  # the last step finishes first
        return ctx.key()


@dataclass
class AwaitsSignal(Command):
    """Sleeps ``sleep_s`` (a durable timer), then waits for the signal ``name`` and returns
    its payload; its event ``phase`` tells where it is."""

    name: str = "go"
    sleep_s: float = 0.1

    async def exec(self, ctx: Context) -> Any:
        await ctx.sleep(self.sleep_s)
        ctx.set_event("phase", "waiting")
        payload = await ctx.wait_for(self.name)
        ctx.set_event("phase", "signalled")
        return payload


@dataclass
class Undoes(Command):
    """``steps`` steps, each logging its key to ``dir`` and taking ``sleep_s``; its
    compensation undoes each, newest first, with a step that logs its key and takes
    ``undo_sleep_s``. Returns the keys."""

    dir: str
    steps: int = 3
    sleep_s: float = 0.0
    undo_sleep_s: float = 0.0

    async def exec(self, ctx: Context) -> Any:
        return [await ctx.step(f"svc{i}", self._call, ctx.key(), self.sleep_s) for i in range(self.steps)]

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        for outcome in reversed(ctx.outcomes):
            await ctx.step(f"undo-{outcome.service}", self._call, ctx.key(), self.undo_sleep_s)

    async def _call(self, key: str, sleep_s: float) -> str:
        log_call(self.dir, key)
        if sleep_s:
            await asyncio.sleep(sleep_s)
        return key


@dataclass
class Phases(Command):
    """``steps`` steps (run together with `Context.gather` if ``together``: step *i* takes
    ``step_s * (steps - i)``, so the last finishes first), then a durable sleep of
    ``sleep_s`` (if any), a wait for the signal ``go`` (if ``wait``), and a last step.
    Each step logs its key to ``dir`` as it starts and ``done:<key>`` as it ends."""

    dir: str
    steps: int = 2
    together: bool = False
    step_s: float = 0.0
    sleep_s: float = 0.0
    wait: bool = False

    async def exec(self, ctx: Context) -> Any:
        if self.together:
            values = await ctx.gather(*(ctx.step(f"svc{i}", self._call, ctx, i) for i in range(self.steps)))
        else:
            values = [await ctx.step(f"svc{i}", self._call, ctx, i) for i in range(self.steps)]
        if self.sleep_s:
            await ctx.sleep(self.sleep_s)
        signal = await ctx.wait_for("go") if self.wait else None
        last = await ctx.step("last", self._call, ctx, self.steps)
        return {"steps": values, "signal": signal, "last": last}

    async def _call(self, ctx: Context, i: int) -> str:
        key = ctx.key()
        log_call(self.dir, key)
        await asyncio.sleep(self.step_s * (self.steps - i))
        log_call(self.dir, f"done:{key}")
        return key


@dataclass
class HasChild(Command):
    """A step, the child ``Phases(dir, steps=1, wait=child_waits)`` (its id ``child_id``
    if given), a step; returns the child's result."""

    dir: str
    child_waits: bool = True
    child_id: str | None = None

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("before", self._call, ctx.key())
        got = await ctx.child(Phases(self.dir, steps=1, wait=self.child_waits), self.child_id)
        await ctx.step("after", self._call, ctx.key())
        return {"child": got}

    def _call(self, key: str) -> str:
        log_call(self.dir, key)
        return key
