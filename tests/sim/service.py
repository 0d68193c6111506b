"""An in-memory fake of the services workflows call, with an idempotency ledger.

Every call carries its step's idempotency key (`Context.key`). The first call of a
key decides its effect, drawn from the seed: a value, or a rejection (a permanent
error). Any later call of the key answers the same effect, as an idempotent service
does. Before or after applying, a call may also fail as `Delayed` (no answer, the
effect may or may not have happened) or `Blocked` (the circuit breaker is open).

The ledger keeps each key's (service, op, args): a key used again with other
arguments is two different effects under one key, which `violations` reports. A
key's window ends when its workflow id is submitted again (after its retention):
keys are ``"{workflow_id}/{step}"``, so a service that remembered them longer would
answer the new run with the old one's effects.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workflows.errors import Blocked, Delayed


class Rejected(Exception):
    """A service refused the request for good (a 4xx): the workflow fails."""


@dataclass
class Effect:
    service: str
    op: str
    args: tuple[Any, ...]
    value: Any
    rejected: bool
    run: int
    calls: int = 1


@dataclass
class Profile:
    """How a seed's services behave."""

    p_delay_before: float = 0.05
    p_delay_after: float = 0.05
    p_block: float = 0.02
    p_reject: float = 0.03
    latency_s: float = 0.01

    @classmethod
    def draw(cls, rng: random.Random) -> Profile:
        calm = rng.random() < 0.2
        return cls(p_delay_before=0.0 if calm else rng.choice([0.02, 0.08, 0.2]),
                   p_delay_after=0.0 if calm else rng.choice([0.02, 0.08]),
                   p_block=0.0 if calm else rng.choice([0.0, 0.01, 0.05]),
                   p_reject=rng.choice([0.0, 0.03, 0.1]),
                   latency_s=rng.choice([0.001, 0.01, 0.05]))


@dataclass
class Services:
    rng: random.Random
    profile: Profile
    ledger: dict[str, Effect] = field(default_factory=dict)
    past: dict[tuple[str, int], Effect] = field(default_factory=dict)
    """Every key's effect per run of its id."""
    violations: list[str] = field(default_factory=list)
    quiet: bool = False
    """Once quiet, no call is delayed or blocked any more (the end of a run)."""
    run_of: Callable[[str], int] = lambda _wid: 0
    """How many times an id was submitted: a key's window ends when its id is used again."""

    def bind(self, ctx: Any) -> Gateway:
        return Gateway(self, ctx)

    def _flaky(self, p: float) -> bool:
        return not self.quiet and self.rng.random() < p

    async def call(self, wid: str, key: str, service: str, op: str, args: tuple[Any, ...]) -> Any:
        await asyncio.sleep(self.rng.uniform(0, self.profile.latency_s))
        if self._flaky(self.profile.p_block):
            raise Blocked(f"{service}: circuit breaker open")
        if self._flaky(self.profile.p_delay_before):
            raise Delayed(f"{service}: no answer")
        effect = self._apply(wid, key, service, op, args)
        if self._flaky(self.profile.p_delay_after):
            raise Delayed(f"{service}: answer lost after the effect")
        if effect.rejected:
            raise Rejected(f"{service} rejected {op} {key}")
        return effect.value

    def _apply(self, wid: str, key: str, service: str, op: str, args: tuple[Any, ...]) -> Effect:
        effect = self.ledger.get(key)
        run = self.run_of(wid)
        if effect is None or effect.run != run:
            rejected = op == "do" and self.rng.random() < self.profile.p_reject
            value = f"{service}:{key}#{self.rng.randrange(10**6)}"
            effect = Effect(service, op, args, None if rejected else value,
                            rejected, run)
            self.ledger[key] = self.past[(key, run)] = effect
            return effect
        effect.calls += 1
        if (effect.service, effect.op, effect.args) != (service, op, args):
            self.violations.append(
                f"idempotency key {key!r} applied twice with different effects: "
                f"{effect.service}.{effect.op}{effect.args!r} then {service}.{op}{args!r}")
        return effect


class Gateway:
    """`ctx.gateway` of a running step: its calls carry the step's idempotency key."""

    def __init__(self, services: Services, ctx: Any) -> None:
        self._services = services
        self._ctx = ctx

    async def call(self, service: str, op: str, *args: Any) -> Any:
        return await self._services.call(self._ctx.workflow_id, self._ctx.key(), service, op, tuple(args))
