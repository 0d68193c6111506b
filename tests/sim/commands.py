"""Commands of the simulation: importable by name, their results predictable.

A `Saga` calls its services in order and returns ``{"tag", "values"}``: given the
journaled outcomes, the model knows exactly what `exec` returned (`expected_result`).
Its compensation undoes each outcome, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workflows.command import Command
from workflows.context import Context


@dataclass
class Saga(Command):
    tag: str
    services: list[str]

    async def exec(self, ctx: Context) -> Any:
        values = []
        for i, service in enumerate(self.services):
            values.append(await ctx.step(service, ctx.gateway.call, service, "do", self.tag, i))
        return {"tag": self.tag, "values": values}

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        for outcome in reversed(ctx.outcomes):
            undo = f"undo-{outcome.service}"
            await ctx.step(undo, ctx.gateway.call, undo, "undo", self.tag, outcome.step)


@dataclass
class HastySaga(Saga):
    """A saga with a deadline: retried past it, it fails with `DeadlineExceeded`."""

    deadline_s: ClassVar[float | None] = 1.5


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
