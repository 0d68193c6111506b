"""One seed of the coordinator simulation, from options to verdict.

Phases: the workload (random operations, faults armed at random), the drain (faults
off, services answer, every workflow must finish), the live checks (mode back to
`normal`, no leaked result waiters), a last crash and restart, then the final checks
of what the restarted coordinator answers and of the journal's whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from tests.sim import checks
from tests.sim.compat import Options
from tests.sim.harness import Lost, PoolFaults, World
from tests.sim.loop import Livelock, Stalled, new_loop
from tests.sim.service import Profile, Services
from tests.sim.workload import EXPECTED, Plan, Workload
from workflows.errors import CommandFailed, CoordinatorError, UnknownWorkflow

DRAIN_S = 300.0
HANG_S = 15.0


@dataclass
class Result:
    seed: int
    kind: str
    violations: list[str]
    faults: list[str]
    digest: str
    stats: dict[str, Any] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
                        cache_logger_on_first_use=False)


def draw_options(rng: random.Random, seed: int) -> Options:
    small = rng.random() < 0.5
    return Options(
        storage=f"mem://sim-{seed}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
        max_cmds=rng.choice([2, 4, 8, 20]),
        slow_retry_interval_s=rng.choice([0.05, 0.2, 0.5]),
        fast_retry_interval_s=rng.choice([0.0, 0.01]),
        jitter_s=rng.choice([0.0, 0.02, 0.1]),
        admission_timeout_s=rng.choice([0.2, 1.0, 5.0]),
        command_actors=rng.randint(1, 3),
        slots_per_actor=rng.choice([1, 2, 8]),
        retention_s=rng.choice([2.0, 10.0]) if small else 7 * 24 * 3600.0,
        snapshot_records=rng.choice([15, 40, 200]) if small else 100_000,
        segment_bytes=rng.choice([1500, 8000]) if rng.random() < 0.5 else 64 << 20,
        seal_idle_s=rng.choice([0.5, 5.0, 60.0]),
        gateway=None,
    )


def draw_pool_faults(rng: random.Random) -> PoolFaults:
    if rng.random() < 0.3:
        return PoolFaults()
    return PoolFaults(p_lost=rng.choice([0.0, 0.02, 0.05]), p_lost_mid=rng.choice([0.0, 0.02, 0.05]),
                      p_error=0.02 if rng.random() < 0.15 else 0.0,
                      p_report_delay=rng.choice([0.0, 0.2, 0.5]), p_report_dup=rng.choice([0.0, 0.1, 0.3]))


class Sim:
    def __init__(self, seed: int, steps: int) -> None:
        self.seed = seed
        self.steps = steps
        self.trace: list[str] = []
        self.loop = new_loop(seed)
        rng = random.Random(f"plan-{seed}")
        self.options = draw_options(rng, seed)
        self.services = Services(random.Random(f"service-{seed}"), Profile.draw(rng))
        self.world = World(seed, self.loop, self.options, self.services, draw_pool_faults(rng), self.note)
        self.plan = Plan.draw(rng)
        self.work = Workload(self.world, random.Random(f"work-{seed}"), self.plan)
        self.hung: set[int] = set()

    def note(self, what: str) -> None:
        self.trace.append(f"{self.loop.time():10.4f} {what}")

    # --- phases ----------------------------------------------------------------------

    async def main(self) -> None:
        w = self.world
        self.note(f"options {self.options}")
        self.note(f"plan {self.plan.weights} services {self.services.profile} pool {w.pool_faults}")
        await w.ensure_up()
        monitor = w.spawn(self.monitor())
        ops, weights = zip(*sorted(self.plan.weights.items()), strict=True)
        for _ in range(self.steps):
            await asyncio.sleep(self.work.rng.expovariate(1 / 0.03))
            op = self.work.rng.choices(ops, weights)[0]
            self.note(f"op {op}")
            getattr(self.work, f"op_{op}")()
        await self.drain()
        monitor.cancel()
        await self.live_checks()
        await self.final_checks()

    async def monitor(self) -> None:
        """Restart a coordinator whose storage failed; flag client calls that hang."""
        w = self.world
        while True:
            await asyncio.sleep(0.25)
            gen = w.gen
            if gen is not None and gen.up:
                fired = sum(gen.backend.faults.fired.values())
                if fired > gen.fired:
                    gen.fired = fired
                    delay = w.rng_fault.choice([0.1, 1.0]) if w.rng_fault.random() < 0.7 else 20.0
                    w.spawn(self._restart_later(gen.n, delay))
            elif not w.booting:
                w.spawn(w.ensure_up())
            self.check_hangs()

    async def _restart_later(self, n: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.world.gen is not None and self.world.gen.n == n:
            self.world.crash(f"restarted {delay} s after a storage error", tear=False)

    def check_hangs(self) -> None:
        now = self.loop.time()
        limit = self.options.admission_timeout_s + HANG_S
        for token, (start, what, wid) in list(self.work.seen.pending.items()):
            if what.startswith(("submit", "concurrent", "resubmit", "tuple")) and now - start > limit \
                    and token not in self.hung:
                self.hung.add(token)
                self.world.violate(f"{what} of {wid[:40]} has not returned after {now - start:.1f} s")

    async def drain(self) -> None:
        w = self.world
        self.note("drain")
        self.services.quiet = True
        w.pool_faults = PoolFaults()
        if w.gen is not None:
            w.gen.backend.crash_after = None
            w.gen.backend.faults.disarm()
        self.work.held_until = -1.0
        deadline = self.loop.time() + DRAIN_S
        while self.loop.time() < deadline:
            await w.ensure_up()
            gen = w.gen
            if gen is not None and gen.core.held:
                await self._quietly(lambda c: c.resume())
            runs = checks.runs_of(w.history.ordered())
            if all(r.end is not None for rs in runs.values() for r in rs) and not self.work.seen.pending:
                break
            await asyncio.sleep(0.5)
            self.check_hangs()
        self.note(f"drained at t={self.loop.time():.3f}")

    async def _quietly(self, fn: Any) -> Any:
        try:
            return await self.world.call(fn)
        except EXPECTED as exc:
            self.note(f"call failed: {exc!r}")
            return None

    async def live_checks(self) -> None:
        gen = self.world.gen
        if gen is None:
            return
        await asyncio.sleep(1.0)
        core = gen.core
        if core.mode.value != "normal" and not core.held:
            self.world.violate(f"mode is {core.mode.value} after the drain (nothing parked: "
                               f"{core.stats().get('parked')}, held: {core.held})")
        waiters = getattr(core, "waiters", {})
        leaked = sum(1 for fs in waiters.values() for f in fs if f.done())
        if leaked:
            self.world.violate(f"{leaked} result waiters left behind after their calls returned")

    async def final_checks(self) -> None:
        w = self.world
        w.crash("final restart", tear=False, reboot=False)
        await w.ensure_up()
        runs = checks.runs_of(w.history.ordered())
        for run_list in runs.values():
            for number, run in enumerate(run_list, 1):
                checks.check_run(run, number, self.services, w.violate)
        checks.check_finished(runs, w.violate)
        checks.check_acked(self.work.seen, runs, w.violate)
        checks.check_answers(self.work.seen, runs, w.violate)
        for v in self.services.violations:
            w.violate(v)
        gen = w.gen
        if gen is not None:
            if gen.core.mode.value != "normal":
                w.violate(f"mode is {gen.core.mode.value} after a restart of the drained coordinator")
            await self.final_results(runs)
            self.compare_storage()

    async def final_results(self, runs: dict[str, list[checks.Run]]) -> None:
        now = self.loop.clock()
        for wid in sorted(self.work.seen.acked):
            last = runs.get(wid, [None])[-1]
            if last is None or last.end is None:
                continue
            try:
                value = await self.world.call(lambda c, wid=wid: c.result(wid, 1.0))
                got: tuple[str, Any] = ("completed", value)
            except CommandFailed as exc:
                got = ("failed", exc.error_type)
            except UnknownWorkflow:
                if last.end["t"] + self.options.retention_s > now - 1.0:
                    w = self.world
                    w.violate(f"{wid[:40]}: unknown after a restart, finished {now - last.end['t']:.2f} s ago "
                              f"(retention {self.options.retention_s} s)")
                continue
            except (Lost, CoordinatorError, TimeoutError, OSError) as exc:
                self.world.violate(f"{wid[:40]}: result after a restart raised {exc!r}")
                continue
            want = ("completed", last.end.get("result")) if last.end["k"] == "completed" else \
                ("failed", (last.end.get("error") or {}).get("type"))
            if got != want:
                self.world.violate(f"{wid[:40]}: result after a restart is {str(got)[:200]}, the journal "
                                   f"ended it {str(want)[:200]}")

    def compare_storage(self) -> None:
        """What the store holds now is what the history says was written there."""
        gen = self.world.gen
        assert gen is not None
        try:
            stored = gen.journal.read(0, 10**9)
        except OSError as exc:
            self.note(f"read failed: {exc!r}")
            return
        for r in stored:
            want = self.world.history.records.get(r["q"])
            if want != r:
                self.world.violate(f"record {r['q']} in the store differs from what was written: "
                                   f"{str(r)[:120]} vs {str(want)[:120]}")
                return


def run_seed(seed: int, steps: int = 200, keep_trace: bool = False) -> Result:
    quiet_logs()
    sim = Sim(seed, steps)
    started = time.perf_counter()
    try:
        sim.loop.run_until_complete(sim.main())
    except (Livelock, Stalled) as exc:
        sim.world.violate(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # anything escaping the run is a finding, reported like a violation
        where = traceback.format_exception(exc)[-2].strip().replace("\n", " | ")
        sim.world.violate(f"the run raised {type(exc).__name__}: {str(exc)[:300]} ({where[:300]})")
    finally:
        sim.world.close()
        with contextlib.suppress(Livelock, Stalled):
            sim.loop.run_until_complete(asyncio.sleep(0))
        sim.loop.close()
    digest = hashlib.sha256("\n".join(sim.trace).encode()).hexdigest()[:16]
    stats = {"wall_s": round(time.perf_counter() - started, 3), "virtual_s": round(sim.loop.time(), 3),
             "callbacks": sim.loop.callbacks, "generations": sim.world.generations,
             "acked": len(sim.work.seen.acked), "calls": sim.work.seen.calls,
             "records": len(sim.world.history.records)}
    return Result(seed, "coordinator", list(dict.fromkeys(sim.world.violations)), sim.world.faults, digest, stats,
                  sim.trace if keep_trace else [])
