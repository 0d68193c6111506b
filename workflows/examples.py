"""Example workflows, used by the demo and the tests.

- `BookTrip`: the saga of the contract: reserve a flight and a hotel together
  (`Context.gather`), charge the payment; on failure, cancel what was reserved, in
  reverse order. Its retries back off (`RetryPolicy`).
- `Echo`, `Sleep`, `Fail`: no services; they return a value, wait, or fail.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from workflows.command import Command
from workflows.context import Context
from workflows.policy import RetryPolicy

UNDO = {"flights": "cancel", "hotels": "cancel", "payments": "refund"}
"""The operation that undoes each service's step of `BookTrip`."""


@dataclass
class BookTrip(Command):
    """Book a flight and a hotel for ``trip_id`` and charge ``amount`` for them.

    The flight and the hotel are reserved at once, as steps 0 and 1 (their keys are
    reserved in that order, whichever answers first). A retry waits 0.1 s, then twice
    as long each time, at most 2 s; it is never given up: a trip is booked or undone.
    """

    trip_id: str
    amount: int
    retry: ClassVar[RetryPolicy] = RetryPolicy(initial_interval_s=0.1, backoff=2.0, max_interval_s=2.0)

    async def exec(self, ctx: Context) -> dict[str, Any]:
        flight, hotel = await ctx.gather(ctx.step("flights", ctx.gateway.flights.reserve, self.trip_id),
                                         ctx.step("hotels", ctx.gateway.hotels.reserve, self.trip_id))
        await ctx.step("payments", ctx.gateway.payments.charge, self.trip_id, self.amount)
        return {"flight": flight, "hotel": hotel}

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        """Undo, newest first, each step ``ctx.outcomes`` records; each undo is a step too.

        Replays deterministically: the outcomes, hence the undo steps, are the same
        on every attempt, so journaled undos are skipped and the rest are called.
        """
        for outcome in reversed(ctx.outcomes):
            op = UNDO.get(outcome.service)
            if op is None:
                continue
            service = getattr(ctx.gateway, outcome.service)
            await ctx.step(outcome.service, getattr(service, op), self.trip_id, _ref(outcome.value))


def _ref(value: Any) -> Any:
    """The reference a service gave for a step (its ``ref``), or the whole value."""
    return value.get("ref", value) if isinstance(value, dict) else value


@dataclass
class Echo(Command):
    """Return ``value``; calls no service."""

    value: Any

    async def exec(self, ctx: Context) -> Any:
        return self.value


@dataclass
class Sleep(Command):
    """Wait ``seconds``, then return them; calls no service."""

    seconds: float

    async def exec(self, ctx: Context) -> float:
        await asyncio.sleep(self.seconds)
        return self.seconds


@dataclass
class Fail(Command):
    """Raise ``ValueError(message)``: a non-retryable failure with nothing to undo."""

    message: str = "failed on purpose"

    async def exec(self, ctx: Context) -> Any:
        raise ValueError(self.message)
