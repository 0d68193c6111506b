"""One seed of the replicated journal: a leader `Journal`, a `Replicator`, followers.

Followers are in-process `Replica`s behind a seeded network: each message is delayed,
and may be dropped before it arrives or after it was applied (the answer lost). One
follower may lag far behind. Faults: a follower's disk dies mid-batch (a torn write;
it restarts later from its store), the leader crashes (its tasks stop, its unacknowledged
tail may be torn) and restarts, recovering the longest tail among a majority.

Invariants: every acknowledged record is in the leader's log at its sequence number
after every restart, with the content written; each writer's acknowledged records are
in the order it wrote them; below the acknowledged point no two replicas hold
different records under one sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import random
import time
import traceback
from dataclasses import dataclass
from typing import Any

from actors.records import from_wire
from tests.sim.compat import Journal, codec, replica
from tests.sim.harness import GEN, JOURNAL_TAKES_EXECUTOR, tagged_task
from tests.sim.loop import InlineExecutor, Livelock, SimLoop, Stalled, new_loop
from tests.sim.sim import Result, quiet_logs
from tests.sim.storage import History, SimBackend
from workflows.errors import CoordinatorError

Replica, Replicator = replica.Replica, replica.Replicator


class Unreachable(ConnectionError):
    pass


@dataclass
class Net:
    delay_s: float
    p_drop: float
    lag_s: float = 0.0


class NetFollower:
    """A follower seen through the seeded network; ``replica`` is None while it is down."""

    def __init__(self, sim: ReplicaSim, i: int, net: Net) -> None:
        self.sim = sim
        self.i = i
        self.net = net
        self.replica: Any = None
        self.backend: SimBackend | None = None

    async def _hop(self) -> Any:
        rng = self.sim.rng_net
        await asyncio.sleep(rng.uniform(0, self.net.delay_s) + self.net.lag_s * rng.random())
        if self.replica is None:
            raise Unreachable(f"replica {self.i} is down")
        if rng.random() < self.net.p_drop:
            raise Unreachable(f"message to replica {self.i} dropped")
        return self.replica

    async def _answer(self, value: Any) -> Any:
        if self.sim.rng_net.random() < self.net.p_drop:
            raise Unreachable(f"answer of replica {self.i} dropped")
        await asyncio.sleep(self.sim.rng_net.uniform(0, self.net.delay_s))
        return value

    async def accept(self, epoch: int, epoch_seq: int, first_seq: int, data: bytes, count: int,
                     sealed_upto: int) -> int:
        replica = await self._hop()
        try:
            end = replica.accept(epoch, epoch_seq, first_seq, data, count, sealed_upto)
        except OSError as exc:
            self.sim.note(f"replica {self.i}: accept failed {exc!r}")
            raise
        return int(await self._answer(end))

    async def read(self, from_seq: int) -> tuple[int, bytes]:
        replica = await self._hop()
        got: tuple[int, bytes] = await self._answer(replica.read(from_seq))
        return got

    async def end(self) -> int:
        replica = await self._hop()
        return int(await self._answer(replica.next_seq))


class ReplicaSim:
    def __init__(self, seed: int, steps: int) -> None:
        self.seed = seed
        self.steps = steps
        self.trace: list[str] = []
        self.loop: SimLoop = new_loop(seed)
        rng = random.Random(f"replica-plan-{seed}")
        self.rng = random.Random(f"replica-work-{seed}")
        self.rng_net = random.Random(f"replica-net-{seed}")
        self.rng_disk = random.Random(f"replica-disk-{seed}")
        self.n_followers = rng.choice([2, 2, 4])
        self.segment_bytes = rng.choice([600, 2000, 1 << 20])
        self.timeout_s = rng.choice([0.3, 1.0])
        self.nets = [Net(rng.choice([0.001, 0.01, 0.05]), rng.choice([0.0, 0.02, 0.1])) for _ in
                     range(self.n_followers)]
        if rng.random() < 0.5:
            self.nets[rng.randrange(self.n_followers)].lag_s = rng.choice([0.5, 3.0])
        base = f"rsim-{seed}-{rng.getrandbits(32):08x}"
        self.names = [f"{base}-leader"] + [f"{base}-f{i}" for i in range(self.n_followers)]
        self.violations: list[str] = []
        self.faults: list[str] = []
        leader = History(self.violate)
        self.histories = [leader] + [History(self.violate, authority=leader.records.get)
                                     for _ in self.names[1:]]
        self.followers = [NetFollower(self, i + 1, net) for i, net in enumerate(self.nets)]
        self.journal: Journal | None = None
        self.leader_backend: SimBackend | None = None
        self.tasks: dict[int, list[asyncio.Task[Any]]] = {}
        self.loop.set_task_factory(self._task_factory)
        self.acked: dict[int, dict[str, Any]] = {}
        self.by_writer: dict[int, list[int]] = {}
        self.generation = 0
        self.serial = 0

    def note(self, what: str) -> None:
        self.trace.append(f"{self.loop.time():10.4f} {what}")

    def violate(self, what: str) -> None:
        self.note(f"VIOLATION {what}")
        self.violations.append(what)

    def fault(self, what: str) -> None:
        self.note(f"fault {what}")
        self.faults.append(f"t={self.loop.time():.3f} {what}")

    # --- replicas ---------------------------------------------------------------------

    def start_follower(self, f: NetFollower) -> None:
        backend = SimBackend(self.names[f.i], self.histories[f.i], self.rng_disk)
        replica = Replica(backend, segment_bytes=self.segment_bytes, owner=f"replica-{f.i}")
        try:
            replica.open()
        except (OSError, CoordinatorError) as exc:
            self.violate(f"replica {f.i} cannot reopen its store: {exc!r}")
            backend.unlock()
            return
        f.replica, f.backend = replica, backend
        backend.on_death = lambda why: self.loop.call_soon(self.follower_died, f, backend, why)
        self.note(f"replica {f.i} up at {replica.next_seq}, epoch {replica.epoch}")

    def follower_died(self, f: NetFollower, backend: SimBackend, why: str) -> None:
        if f.backend is not backend:
            return
        self.fault(f"replica {f.i} died: {why}")
        f.replica, f.backend = None, None
        backend.unlock()
        self.loop.call_later(self.rng.choice([0.1, 1.0, 5.0]), self.start_follower, f)

    async def start_leader(self) -> bool:
        self.generation += 1
        backend = SimBackend(self.names[0], self.histories[0], self.rng_disk)
        extra: dict[str, Any] = {"executor": InlineExecutor()} if JOURNAL_TAKES_EXECUTOR else {}
        journal = Journal(backend, segment_bytes=self.segment_bytes, owner=f"leader-{self.generation}",
                          clock=self.loop.clock, **extra)
        self.leader_backend = backend
        replicator = Replicator(list(self.followers), timeout_s=self.timeout_s)  # type: ignore[arg-type]
        opening = self.leader_task(journal.open_replicated(replicator))
        try:
            await opening
        except asyncio.CancelledError:
            if not opening.cancelled():
                raise
            return False
        except (OSError, CoordinatorError) as exc:
            self.note(f"leader {self.generation}: open failed {exc!r}")
            backend.dead = "open failed"
            backend.unlock()
            return False
        self.journal = journal
        self.ack_all(journal.next_seq - 1)
        self.note(f"leader {self.generation} up at {journal.next_seq}")
        self.check_leader_log()
        return True

    def ack_all(self, q: int) -> None:
        for h in self.histories:
            h.ack(q)

    def crash_leader(self) -> None:
        journal, backend = self.journal, self.leader_backend
        if journal is None or backend is None:
            return
        self.journal = None
        backend.dead = backend.dead or "crashed"
        for task in self.tasks.pop(self.generation, []):
            task.cancel()
        torn = backend.tear() if self.rng.random() < 0.6 else None
        self.fault(f"leader {self.generation} crashed{'; ' + torn if torn else ''}")
        backend.unlock()

    # --- clients ----------------------------------------------------------------------

    def _task_factory(self, loop: asyncio.AbstractEventLoop, coro: Any,
                      context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        return tagged_task(self.tasks, loop, coro, context)

    def leader_task(self, coro: Any) -> asyncio.Task[Any]:
        """A task of the current leader: its crash stops it and all it started."""
        ctx = contextvars.copy_context()
        ctx.run(GEN.set, self.generation)
        return self.loop.create_task(coro, context=ctx)

    async def write(self, writer: int, record: dict[str, Any]) -> None:
        journal = self.journal
        if journal is None:
            return
        task = self.leader_task(self._append(journal, writer, record))
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except (OSError, CoordinatorError) as exc:
            self.note(f"writer {writer}: {type(exc).__name__}")

    async def _append(self, journal: Journal, writer: int, record: dict[str, Any]) -> None:
        """Runs as the leader's task: the acknowledgement is noted the moment it is given."""
        q = journal.next_seq  # the append gives the record this number before it first waits
        (answer,) = await journal.append([from_wire(record)])
        if answer is not None:
            return  # not journaled (a duplicate)
        record = {**record, "v": codec.VERSION, "q": q}
        self.acked[q] = dict(record)
        self.by_writer.setdefault(writer, []).append(q)
        self.ack_all(q)
        self.note(f"acked {q} {record['k']} {record.get('w')}")

    async def writer(self, writer: int) -> None:
        for _ in range(self.steps // 10):
            self.serial += 1
            wid = f"r{writer}-{self.serial}"
            await self.write(writer, {"k": "submitted", "w": wid, "type": "x:Y", "fields": {"n": self.serial},
                                      "t": self.loop.clock()})
            await asyncio.sleep(self.rng.expovariate(1 / 0.02))
            await self.write(writer, {"k": "started", "w": wid, "attempt": 1, "t": self.loop.clock()})

    async def chaos(self) -> None:
        for _ in range(self.steps // 10):
            await asyncio.sleep(self.rng.expovariate(1 / 0.3))
            roll = self.rng.random()
            if roll < 0.25:
                self.crash_leader()
                while not await self.start_leader():
                    await asyncio.sleep(0.5)
            elif roll < 0.6:
                f = self.rng.choice(self.followers)
                if f.backend is not None:
                    f.backend.crash_after = self.rng.randint(1, 4)
                    self.fault(f"replica {f.i} dies at its {f.backend.crash_after}th append from now")

    # --- checks -----------------------------------------------------------------------

    def check_leader_log(self) -> None:
        journal = self.journal
        assert journal is not None
        held = {r["q"]: r for r in journal.records(0)}
        for q, r in self.acked.items():
            if q in held and held[q] != r:
                self.violate(f"acknowledged record {q} ({r['k']} {r.get('w')}) is now {held[q]['k']} "
                             f"{held[q].get('w')} in the leader's log")
            elif q not in held:
                self.violate(f"acknowledged record {q} ({r['k']} {r.get('w')}) is gone from the leader's log")

    def check_end(self) -> None:
        for writer, qs in self.by_writer.items():
            if qs != sorted(qs):
                self.violate(f"writer {writer}'s acknowledged records are out of order: {qs[:20]}")
        top = max(self.acked, default=-1)
        logs: list[dict[int, dict[str, Any]]] = []
        for f in self.followers:
            if f.replica is None:
                continue
            _first, data = f.replica.read(0)
            records, _ = codec.scan(data, f"replica {f.i}")
            logs.append({r["q"]: r for r in records})
        assert self.journal is not None
        logs.append({r["q"]: r for r in self.journal.records(0)})
        for q in range(top + 1):
            held = {codec.pack(log[q]) for log in logs if q in log}
            if len(held) > 1:
                self.violate(f"replicas hold different records under sequence number {q}")
                return

    async def main(self) -> None:
        for f in self.followers:
            self.start_follower(f)
        while not await self.start_leader():
            await asyncio.sleep(0.5)
        chaos = self.loop.create_task(self.chaos())
        await asyncio.gather(*[self.writer(i) for i in range(3)])
        await chaos
        self.note("quiesce")
        for f in self.followers:
            if f.replica is None:
                self.start_follower(f)
            if f.backend is not None:
                f.backend.crash_after = None
            f.net = Net(0.001, 0.0)
        self.crash_leader()
        while not await self.start_leader():
            await asyncio.sleep(0.5)
        await self.write(-1, {"k": "submitted", "w": "last", "type": "x:Y", "fields": {}, "t": self.loop.clock()})
        await asyncio.sleep(self.timeout_s * 3)
        self.check_end()


def run_replica_seed(seed: int, steps: int = 200, keep_trace: bool = False) -> Result:
    quiet_logs()
    sim = ReplicaSim(seed, steps)
    started = time.perf_counter()
    try:
        sim.loop.run_until_complete(sim.main())
    except (Livelock, Stalled) as exc:
        sim.violate(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # anything escaping the run is a finding, reported like a violation
        where = traceback.format_exception(exc)[-2].strip().replace("\n", " | ")
        sim.violate(f"the run raised {type(exc).__name__}: {str(exc)[:300]} ({where[:300]})")
    finally:
        for task in asyncio.all_tasks(sim.loop):
            task.cancel()
        with contextlib.suppress(Livelock, Stalled):
            sim.loop.run_until_complete(asyncio.sleep(0))
        sim.loop.close()
        for name in sim.names:
            SimBackend.drop(name)
    digest = hashlib.sha256("\n".join(sim.trace).encode()).hexdigest()[:16]
    stats = {"wall_s": round(time.perf_counter() - started, 3), "virtual_s": round(sim.loop.time(), 3),
             "acked": len(sim.acked), "leaders": sim.generation, "followers": sim.n_followers}
    return Result(seed, "replica", list(dict.fromkeys(sim.violations)), sim.faults, digest, stats,
                  sim.trace if keep_trace else [])
