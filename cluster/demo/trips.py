"""The demo's held trips, and the check that a cancelled trip left nothing booked.

A `HeldTrip` reserves like `BookTrip`, then waits for its customer's ``confirm``
signal before it charges. The demo's customers confirm some and cancel others
(``supervisor.cancel``): a cancelled trip compensates, cancelling its hotel and
flight, and ends ``cancelled``; `undone` checks the services' ledgers for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows.context import Context
from workflows.examples import BookTrip

CONFIRM = "confirm"
"""The signal a held trip waits for before it charges."""


@dataclass
class HeldTrip(BookTrip):
    """`BookTrip` that holds its reservations until the customer confirms (the signal ``confirm``)."""

    async def exec(self, ctx: Context) -> dict[str, Any]:
        flight, hotel = await ctx.gather(ctx.step("flights", ctx.gateway.flights.reserve, self.trip_id),
                                         ctx.step("hotels", ctx.gateway.hotels.reserve, self.trip_id))
        await ctx.wait_for(CONFIRM)
        await ctx.step("payments", ctx.gateway.payments.charge, self.trip_id, self.amount)
        return {"flight": flight, "hotel": hotel}


def undone(ledger: Callable[[str], dict[str, Any]], workflow_id: str) -> bool:
    """Whether the services hold nothing of ``workflow_id`` but undone reservations: as many
    ``cancel`` answers as ``reserve`` ones at flights and at hotels, and no charge."""
    def ops(service: str) -> list[str]:
        return [entry.get("op", "") for key, entry in ledger(service).items()
                if key.startswith(f"{workflow_id}/") and isinstance(entry, dict)]

    booked = all(ops(s).count("reserve") == ops(s).count("cancel") for s in ("flights", "hotels"))
    return booked and "charge" not in ops("payments")
