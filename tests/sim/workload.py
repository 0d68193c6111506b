"""The clients of one seed: random operations against the coordinator, and faults.

Each operation runs as a client task; what a client was told (an id acknowledged,
a result answered, an error) goes to `Observed`, which the checks compare with the
journal's history at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tests.sim.commands import HastySaga, LoudSaga, Saga
from tests.sim.compat import codec
from tests.sim.harness import Lost, World
from workflows.command import Command, type_name
from workflows.errors import CommandFailed, CoordinatorError, InvalidCommand, UnknownWorkflow

SERVICES = ["flights", "hotels", "payments"]
STORAGE_OPS = ["append", "sync", "seal", "put_snapshot", "read", "delete", "open_active", "truncate", "segments"]
EXPECTED = (CoordinatorError, TimeoutError, Lost, OSError)


def encoded(cmd: Command) -> tuple[str, Any]:
    """A command as the journal holds it (fields through msgpack)."""
    fields = {f.name: getattr(cmd, f.name) for f in dataclasses.fields(cmd) if f.init}
    return type_name(type(cmd)), msgpack.unpackb(msgpack.packb(fields, use_bin_type=True), raw=False)


@dataclass
class Observed:
    """What clients were told."""

    acked: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    tried: dict[str, Command] = field(default_factory=dict)
    results: list[tuple[float, str, str, Any]] = field(default_factory=list)
    """(time, id, "value" or "failed", the value or the error type)."""
    pending: dict[int, tuple[float, str, str]] = field(default_factory=dict)
    """Calls in flight that must end: token -> (start, what, id)."""
    calls: int = 0


@dataclass
class Plan:
    """What a seed's workload does: weights of operations and which odd inputs it tries."""

    weights: dict[str, float]
    odd_inputs: bool
    loud_bytes: int

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        weights = {"submit": 30, "resubmit": 6, "submit_other": 3, "concurrent_same": 4, "concurrent_other": 3,
                   "submit_many": 4, "result": 10, "result_wait": 4, "wait": 3, "query": 4, "suspend": 1,
                   "crash": 1.5, "crash_at_record": 1.0, "storage_fault": 1.5}
        for name in rng.sample(sorted(weights), rng.randrange(0, 4)):
            if name != "submit":
                weights[name] = 0.0  # some seeds leave some operations out entirely
        odd = rng.random() < 0.25
        if odd:
            weights.update(odd_id=0.6, tuple_fields=0.6)
        loud = codec.MAX_RECORD_BYTES // 2 + 1 if odd and rng.random() < 0.05 else 200
        return cls(weights, odd, loud)


class Workload:
    def __init__(self, world: World, rng: random.Random, plan: Plan) -> None:
        self.w = world
        self.rng = rng
        self.plan = plan
        self.seen = Observed()
        self.ids: list[str] = []
        self.next_id = 0
        self.tokens = 0
        self.held_until = -1.0

    # --- helpers ---------------------------------------------------------------------

    def new_cmd(self) -> Command:
        services = [self.rng.choice(SERVICES) for _ in range(self.rng.randint(0, 4))]
        tag = f"t{self.rng.randrange(1000)}"
        roll = self.rng.random()
        if roll < 0.12:
            return HastySaga(tag, services)
        if roll < 0.2:
            return LoudSaga(tag, services, size=self.plan.loud_bytes if self.rng.random() < 0.2 else 200)
        return Saga(tag, services)

    def fresh_id(self) -> str:
        self.next_id += 1
        wid = f"w{self.next_id}"
        self.ids.append(wid)
        return wid

    def known_id(self) -> str | None:
        return self.rng.choice(self.ids) if self.ids else None

    def launch(self, what: str, wid: str, coro: Awaitable[Any]) -> None:
        self.tokens += 1
        token = self.tokens
        self.seen.pending[token] = (self.w.loop.time(), what, wid)

        async def run() -> None:
            try:
                await coro
            except EXPECTED as exc:
                self.w.trace(f"client {what} {wid[:40]}: {type(exc).__name__}")
            except Exception as exc:  # any other error reaching a client is a finding
                self.w.violate(f"{what} of {wid[:40]} raised {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                del self.seen.pending[token]

        self.w.spawn(run())

    # --- operations -----------------------------------------------------------------

    async def _submit(self, wid: str, cmd: Command) -> None:
        self.seen.tried.setdefault(wid, cmd)
        self.seen.calls += 1
        try:
            got = await self.w.call(lambda c: c.submit(cmd, wid))
        except InvalidCommand as exc:
            self._refused(wid, cmd, exc)
            return
        if got != wid:
            self.w.violate(f"submit of {wid[:40]} answered another id {str(got)[:40]}")
        self.w.trace(f"acked {wid[:40]} {type(cmd).__name__}")
        self.seen.acked.setdefault(wid, []).append(encoded(cmd))
        self._check_odd_id(wid)

    def _refused(self, wid: str, cmd: Command, exc: InvalidCommand) -> None:
        self.w.trace(f"client submit {wid[:40]}: InvalidCommand {str(exc)[:80]}")
        if encoded(cmd) in self.seen.acked.get(wid, []):
            self.w.violate(f"re-submit of {wid[:40]} with the command it was acknowledged for was refused: "
                           f"{str(exc)[:200]}")

    def _check_odd_id(self, wid: str) -> None:
        if len(wid.encode()) > 4096 or any(ord(ch) < 32 for ch in wid):
            self.w.violate(f"an id of {len(wid.encode())} bytes (control characters: "
                           f"{any(ord(ch) < 32 for ch in wid)}) was acknowledged")

    def op_submit(self) -> None:
        wid = self.fresh_id()
        self.launch("submit", wid, self._submit(wid, self.new_cmd()))

    def op_resubmit(self) -> None:
        wid = self.known_id()
        if wid is not None and wid in self.seen.tried:
            self.launch("resubmit", wid, self._submit(wid, self.seen.tried[wid]))

    def op_submit_other(self) -> None:
        wid = self.known_id()
        if wid is not None:
            self.launch("submit_other", wid, self._submit(wid, self.new_cmd()))

    def op_concurrent_same(self) -> None:
        wid, cmd = self.fresh_id(), self.new_cmd()
        for _ in range(self.rng.randint(2, 3)):
            self.launch("concurrent", wid, self._submit(wid, cmd))

    def op_concurrent_other(self) -> None:
        wid = self.fresh_id()
        for _ in range(2):
            self.launch("concurrent_other", wid, self._submit(wid, self.new_cmd()))

    def op_submit_many(self) -> None:
        wids = [self.fresh_id() for _ in range(self.rng.randint(1, 4))]
        cmds = [self.new_cmd() for _ in wids]
        if self.rng.random() < 0.3:
            wids.append(wids[0])
            cmds.append(cmds[0])
        self.launch("submit_many", wids[0], self._submit_many(wids, cmds))

    async def _submit_many(self, wids: list[str], cmds: list[Command]) -> None:
        for wid, cmd in zip(wids, cmds, strict=True):
            self.seen.tried.setdefault(wid, cmd)
        got = await self.w.call(lambda c: c.submit_many(list(cmds), list(wids)))
        if got != wids:
            self.w.violate(f"submit_many answered {got} for {wids}")
        for wid, cmd in zip(wids, cmds, strict=True):
            self.seen.acked.setdefault(wid, []).append(encoded(cmd))
        self.w.trace(f"acked batch {wids}")

    def op_odd_id(self) -> None:
        base = self.known_id() or "w0"
        wid = self.rng.choice([base + "/compensate", base + "/0", "x" * (1 << 20), "bad\nid", base + "\x00"])
        self.ids.append(wid)
        self.launch("odd_id", wid, self._submit(wid, self.new_cmd()))

    def op_tuple_fields(self) -> None:
        wid = self.fresh_id()
        cmd = Saga(f"t{self.rng.randrange(1000)}", tuple(self.rng.choice(SERVICES) for _ in range(2)))  # type: ignore[arg-type]
        self.launch("tuple_submit", wid, self._submit(wid, cmd))
        self.w.spawn(self._later(self.rng.uniform(0, 1.0), lambda: self.launch("tuple_resubmit", wid,
                                                                                self._submit(wid, cmd))))

    async def _later(self, delay: float, fn: Callable[[], None]) -> None:
        await asyncio.sleep(delay)
        fn()

    def op_result(self, wait: bool = False) -> None:
        wid = self.known_id()
        if wid is None:
            return
        timeout = None if wait else self.rng.choice([0.0, 0.01, 0.1, 1.0])
        self.launch("result", wid, self._result(wid, timeout))

    def op_result_wait(self) -> None:
        self.op_result(wait=True)

    async def _result(self, wid: str, timeout: float | None) -> None:
        self.seen.calls += 1
        try:
            value = await self.w.call(lambda c: c.result(wid, timeout))
        except CommandFailed as exc:
            self.seen.results.append((self.w.loop.clock(), wid, "failed", exc.error_type))
        except UnknownWorkflow:
            self.seen.results.append((self.w.loop.clock(), wid, "unknown", None))
        else:
            self.seen.results.append((self.w.loop.clock(), wid, "value", value))

    def op_wait(self) -> None:
        wids = list({self.known_id() or "w0" for _ in range(3)})
        self.launch("wait", wids[0], self.w.call(lambda c: c.wait(wids, self.rng.choice([0.0, 0.2]))))

    def op_query(self) -> None:
        wid = self.known_id() or "w0"
        which = self.rng.choice(["status", "stats", "list", "outcomes"])
        calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "status": lambda c: c.status(wid),
            "stats": lambda c: _ready(c.stats()),
            "list": lambda c: c.list(None, 10),
            "outcomes": lambda c: c.outcomes(self.rng.choice(SERVICES), 0, 100),
        }
        self.launch(which, wid, self.w.call(calls[which]))

    def op_suspend(self) -> None:
        hold = self.rng.uniform(0.1, 3.0)
        self.w.fault(f"operator suspends for {hold:.2f} s")
        self.held_until = max(self.held_until, self.w.loop.time() + hold)
        self.launch("suspend", "-", self.w.call(lambda c: c.suspend()))
        self.w.spawn(self._later(hold, self._resume))

    def _resume(self) -> None:
        if self.w.loop.time() >= self.held_until - 1e-9:
            self.launch("resume", "-", self.w.call(lambda c: c.resume()))

    def op_crash(self) -> None:
        self.w.crash("killed", tear=self.rng.random() < 0.6)

    def op_crash_at_record(self) -> None:
        gen = self.w.gen
        if gen is not None:
            n = self.rng.randint(1, 20)
            gen.backend.crash_after = n
            self.w.fault(f"disk dies at the {n}th append from now")

    def op_storage_fault(self) -> None:
        gen = self.w.gen
        if gen is not None:
            op, times = self.rng.choice(STORAGE_OPS), self.rng.choice([1, 1, 2, 5])
            gen.backend.faults.arm(op, times=times)
            self.w.fault(f"storage fault armed: {op} x{times}")


async def _ready(value: Any) -> Any:
    return value
