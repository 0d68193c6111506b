"""The simulated world: one coordinator's generations on one store, crashes, calls.

A *generation* is one life of the coordinator: a `Journal` opened on the store, a
`SupervisorCore`, a pool of `Runner`s. Every task of a generation is tagged with its
number (a context variable read by the loop's task factory), so a crash can stop
them all at once, as the death of the process would: the generation's objects are
dropped without `close`, its disk refuses every further operation, the store's lock
is released and a new generation opens the same store.

Clients (the workload) live outside the generations. They reach the coordinator by
`World.call`, which runs the call as a task of the current generation: a call cut by
a crash ends in `Lost`, as a Ray call to a dead actor does.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from actors.batching import Batcher
from actors.records import Dispatch, Record, Report
from actors.runner import Runner
from tests.sim.compat import Journal, LocalJournal, Options, SupervisorCore, backends
from tests.sim.loop import InlineExecutor, SimLoop
from tests.sim.service import Services
from tests.sim.storage import History, SimBackend
from workflows.errors import CoordinatorError, JournalError, WorkerLost

GEN: contextvars.ContextVar[int] = contextvars.ContextVar("sim_generation", default=-1)


def tagged_task(tasks: dict[int, list[asyncio.Task[Any]]], loop: asyncio.AbstractEventLoop, coro: Any,
                context: contextvars.Context | None) -> asyncio.Task[Any]:
    """A task filed under the generation (`GEN`) it was started in, so a crash of that
    generation can cancel every task it left; finished ones are pruned as they pile up."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    tag = context.get(GEN, -1) if context is not None else GEN.get()
    bucket = tasks.setdefault(tag, [])
    if len(bucket) > 2000:
        bucket[:] = [t for t in bucket if not t.done()]
    bucket.append(task)
    return task
JOURNAL_TAKES_EXECUTOR = "executor" in inspect.signature(Journal.__init__).parameters


class Lost(Exception):
    """The coordinator died during the call, or is down (a Ray call to a dead actor)."""


class ActorDied(Exception):
    """A CommandActor call failed with an error other than `WorkerLost`."""


@dataclass
class PoolFaults:
    """Per dispatch batch: lost before running, lost mid-run, or another actor error."""

    p_lost: float = 0.0
    p_lost_mid: float = 0.0
    p_error: float = 0.0
    p_report_delay: float = 0.0
    p_report_dup: float = 0.0


class SimPool:
    """`PoolPort` over in-process runners, with the seed's actor faults."""

    def __init__(self, world: World, size: int) -> None:
        self.world = world
        self.size = size
        self.runners: list[Runner] = []

    async def run(self, worker: int, items: list[Dispatch]) -> None:
        w, f = self.world, self.world.pool_faults
        roll = w.rng_fault.random()
        runner = self.runners[worker]
        w.trace(f"dispatch {worker}: {[(i.workflow_id[:40], i.attempt, i.fresh) for i in items]}")
        if roll < f.p_lost:
            w.fault(f"worker {worker} lost before running {[i.workflow_id for i in items]}")
            raise WorkerLost(f"worker {worker} lost")
        roll -= f.p_lost
        if roll < f.p_error:
            w.fault(f"worker {worker} call failed (not WorkerLost) for {[i.workflow_id for i in items]}")
            raise ActorDied(f"worker {worker}: actor call failed")
        roll -= f.p_error
        if roll < f.p_lost_mid:
            task = asyncio.ensure_future(runner.run(items))
            await asyncio.wait([task], timeout=w.rng_fault.uniform(0, 0.05))
            if not task.done():
                w.fault(f"worker {worker} died mid-run ({[i.workflow_id for i in items]})")
                runner.cancel_all()
                raise WorkerLost(f"worker {worker} died")
            return
        await runner.run(items)

    async def reset(self, incarnation: str) -> None:
        for runner in self.runners:
            runner.cancel_all()

    async def stop(self, worker: int, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.runners[worker].stop(items)


class Port(LocalJournal):
    """The journal port, copying records as a Ray call would; notes what is acknowledged
    (every record up to the durable fold's last one, once an append is answered)."""

    def __init__(self, journal: Journal, history: History) -> None:
        super().__init__(journal)
        self.history = history

    async def append(self, records: list[Record]) -> list[Any]:
        answers: list[Any] = await self.journal.append(copy.deepcopy(records))
        self.history.ack(self.journal.table.last_seq)
        return answers


@dataclass
class Generation:
    n: int
    backend: SimBackend
    journal: Journal
    core: SupervisorCore
    pool: SimPool
    batchers: list[Batcher[Record]] = field(default_factory=list)
    up: bool = False
    fired: int = 0


class World:
    """One seed's coordinator, store, services and fault sources."""

    def __init__(self, seed: int, loop: SimLoop, options: Options, services: Services, pool_faults: PoolFaults,
                 trace: Callable[[str], None]) -> None:
        self.seed = seed
        self.loop = loop
        self.options = options
        self.services = services
        self.pool_faults = pool_faults
        self.trace = trace
        self.rng_fault = random.Random(f"fault-{seed}")
        self.rng_disk = random.Random(f"disk-{seed}")
        self.store = options.storage.removeprefix("mem://")
        self.violations: list[str] = []
        self.faults: list[str] = []
        self.history = History(self.violate, options.max_cmds, trace)
        services.run_of = self.history.run_of
        self.gen: Generation | None = None
        self.generations = 0
        self.booting = False
        self.tasks: dict[int, list[asyncio.Task[Any]]] = {}
        loop.set_task_factory(self._task_factory)
        self.world_ctx = contextvars.copy_context()
        self.world_ctx.run(GEN.set, -1)

    # --- bookkeeping ---------------------------------------------------------------

    def violate(self, what: str) -> None:
        self.trace(f"VIOLATION {what}")
        self.violations.append(what)

    def fault(self, what: str) -> None:
        self.trace(f"fault {what}")
        self.faults.append(f"t={self.loop.time():.3f} {what}")

    def _task_factory(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                      context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        return tagged_task(self.tasks, loop, coro, context)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of the world (a client, a fault timer): no crash stops it."""
        return self.loop.create_task(coro, context=self.world_ctx.copy())

    # --- calls into the coordinator -------------------------------------------------

    async def call(self, fn: Callable[[SupervisorCore], Awaitable[Any]]) -> Any:
        gen = self.gen
        if gen is None or not gen.up:
            raise Lost("the coordinator is down")
        ctx = contextvars.copy_context()
        ctx.run(GEN.set, gen.n)
        task = self.loop.create_task(_wrap(fn(gen.core)), context=ctx)
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled():
                raise Lost("the coordinator died during the call") from None
            raise

    # --- generations ----------------------------------------------------------------

    def _journal(self, backend: SimBackend) -> Journal:
        o = self.options
        extra: dict[str, Any] = {"executor": InlineExecutor()} if JOURNAL_TAKES_EXECUTOR else {}
        return Journal(backend, fsync=True, segment_bytes=o.segment_bytes, owner=f"sim/{self.generations}",
                       snapshot_records=o.snapshot_records, retention_s=o.retention_s, seal_idle_s=o.seal_idle_s,
                       clock=self.loop.clock, **extra)

    async def boot(self) -> bool:
        """Open the store and start a generation; False if the store refused (retry later)."""
        self.generations += 1
        n = self.generations
        backend = SimBackend(self.store, self.history, self.rng_disk)
        backend.on_death = lambda why: self.loop.call_soon(self._died, n, why)
        journal = self._journal(backend)
        try:
            journal.open()
        except (OSError, JournalError) as exc:
            self.trace(f"boot {n}: open failed: {exc!r}")
            backend.dead = backend.dead or "open failed"
            backend.unlock()
            return False
        self.history.ack(journal.next_seq - 1)
        pool = SimPool(self, self.options.command_actors)
        port = Port(journal, self.history)
        core = SupervisorCore(self.options, port, pool, clock=self.loop.clock)
        gen = Generation(n, backend, journal, core, pool, fired=sum(backend.faults.fired.values()))
        for _ in range(self.options.command_actors):
            batcher: Batcher[Record] = Batcher(port.append, max_in_flight=self.rng_fault.choice([1, 2]))
            gen.batchers.append(batcher)
            pool.runners.append(Runner(batcher.submit, port.live_steps, self._reporter(gen), self.services,
                                       self.options.max_payload_bytes, clock=self.loop.clock))
        self.gen = gen
        gen.up = True  # `start` is called through `call`, like the actor's constructor
        try:
            await self.call(lambda c: c.start())
        except (Lost, OSError, CoordinatorError) as exc:
            self.trace(f"boot {n}: start failed: {exc!r}")
            self.crash("start failed", tear=False, reboot=False)
            return False
        self.trace(f"boot {n}: up at seq {journal.next_seq}")
        return True

    def _reporter(self, gen: Generation) -> Callable[[Report], Awaitable[None]]:
        async def report(rep: Report) -> None:
            f = self.pool_faults
            if self.rng_fault.random() < f.p_report_dup:
                self.spawn(self._duplicate(copy.deepcopy(rep), self.rng_fault.uniform(0, 0.5)))
            if self.rng_fault.random() < f.p_report_delay:
                await asyncio.sleep(self.rng_fault.uniform(0, 0.05))
            self.trace(f"report {rep.workflow_id[:40]} attempt={rep.attempt} {rep.end.value}")
            await gen.core.report([rep])

        return report

    async def _duplicate(self, rep: Report, delay: float) -> None:
        await asyncio.sleep(delay)
        self.fault(f"duplicate report of {rep.workflow_id} attempt {rep.attempt} ({rep.end.value})")
        try:
            await self.call(lambda c: c.report([rep]))
        except (Lost, CoordinatorError, OSError) as exc:
            self.trace(f"duplicate report: {exc!r}")

    def _died(self, n: int, why: str) -> None:
        if self.gen is not None and self.gen.n == n:
            self.crash(f"disk died: {why}", tear=False)

    def crash(self, why: str, tear: bool, reboot: bool = True) -> None:
        """The coordinator's process dies: stop its tasks, drop its objects, free the store;
        with ``reboot``, a new generation opens the store after a seeded delay."""
        gen = self.gen
        if gen is None:
            return
        self.gen = None
        gen.up = False
        gen.backend.dead = gen.backend.dead or why
        self.fault(f"crash of generation {gen.n}: {why}")
        for task in self.tasks.pop(gen.n, []):
            task.cancel()
        if tear:
            torn = gen.backend.tear()
            if torn:
                self.fault(torn)
        gen.backend.faults.disarm()
        gen.backend.unlock()
        if reboot:
            self.spawn(self.ensure_up(self.rng_fault.choice([0.0, 0.05, 0.5, 2.0])))

    async def ensure_up(self, delay: float = 0.0) -> None:
        """Boot a generation (after ``delay``) unless one is up or booting."""
        if self.booting or (self.gen is not None and self.gen.up):
            return
        self.booting = True
        try:
            await asyncio.sleep(delay)
            while not await self.boot():
                await asyncio.sleep(0.2)
        finally:
            self.booting = False

    def close(self) -> None:
        for tasks in self.tasks.values():
            for task in tasks:
                task.cancel()
        backends.MemoryBackend.drop(self.store)


async def _wrap(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
