"""Commands of the simulation: importable by name, their results predictable.

A `Saga` calls its services two at a time (`Context.gather`: each pair's steps run
together and keep the indices of their call order) and returns ``{"tag", "values"}``:
given the journaled outcomes, the model knows exactly what `exec` returned
(`expected_result`). Its compensation undoes each outcome, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workflows.command import Command
from workflows.context import Context
from workflows.policy import RetryPolicy


@dataclass
class Saga(Command):
    tag: str
    services: list[str]

    async def exec(self, ctx: Context) -> Any:
        values: list[Any] = []
        for first in range(0, len(self.services), 2):
            pair = enumerate(self.services[first:first + 2], first)
            values += await ctx.gather(*(ctx.step(s, ctx.gateway.call, s, "do", self.tag, i) for i, s in pair))
        return {"tag": self.tag, "values": values}

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        for outcome in reversed(ctx.outcomes):
            undo = f"undo-{outcome.service}"
            await ctx.step(undo, ctx.gateway.call, undo, "undo", self.tag, outcome.step)


@dataclass
class HastySaga(Saga):
    """A saga with a deadline and a retry policy: retried with backoff, at most six
    attempts, it fails with `RetriesExhausted` or, past its deadline, `DeadlineExceeded`."""

    deadline_s: ClassVar[float | None] = 1.5
    retry: ClassVar[RetryPolicy] = RetryPolicy(0.05, 2.0, 0.4, max_attempts=6)


class SagaFailure(Exception):
    pass


@dataclass
class LoudSaga(Saga):
    """Does its steps, then fails with an error message of ``size`` characters."""

    size: int = 100

    async def exec(self, ctx: Context) -> Any:
        await super().exec(ctx)
        raise SagaFailure("x" * self.size)


def expected_result(fields: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    """What `Saga.exec` returns when its steps' outcomes are ``values``."""
    return {"tag": fields["tag"], "values": values}
