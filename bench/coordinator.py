"""Runs on the coordinator: durable, fsync on, one Ray instance, a fresh namespace and journal per run.

The driver talks to the coordinator as a user does, ``in_flight`` workflows outstanding,
each timed from the start of its submit to the arrival of its result, in one of two ways
(`CoordConfig.driver`):

- ``calls``: a ``submit`` then a ``result`` Ray call per workflow, both awaited as ObjectRefs;
- ``client``: `cluster.client.Client` per workflow (``await client.execute(cmd)``), which
  sends the submits of one event-loop turn as one ``submit_many`` and the result waits as
  ``wait`` long-polls covering many workflows, on the supervisor's channel
  (`actors.channel`; the ray-floor's ``client`` driver makes the same calls as Ray calls).

CPU and
memory are those of every process of this Ray instance (GCS, raylet, the actors,
idle workers) plus the driver's own: a Ray call's cost is paid on both sides.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ray

import cluster
from bench.local import WARMUP, row
from bench.measure import Run, Sampler, closed_loop, psutil
from bench.profile import Profiler
from bench.sagas import Saga3, check, keylog_path_for
from cluster import Options
from cluster.client import Client

ACTOR_LABELS = ("ray::SupervisorActor", "ray::CommandActor", "ray::LogActor")
DRIVERS = ("calls", "client")
"""How the driver talks to the supervisor: a Ray call per submit and per result, or `Client`."""


@dataclass(frozen=True)
class CoordConfig:
    """The coordinator knobs a run is made with."""

    command_actors: int = 2
    slots_per_actor: int = 8
    fsync: bool = True
    driver: str = "calls"
    metrics: bool = True

    @property
    def name(self) -> str:
        name = f"a={self.command_actors} s={self.slots_per_actor} driver={self.driver}"
        name += "" if self.metrics else " metrics=off"
        return name if self.fsync else name + " NO-FSYNC(diagnosis only)"


class RayHost:
    """The one Ray instance of a bench run, started by this process."""

    def __init__(self, workdir: str) -> None:
        context: Any = ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="bench",
                                configure_logging=False)
        self.session_dir: str = context.address_info["session_dir"]
        self.workdir = workdir

    def roots(self) -> list[int]:
        """The driver and every process of this Ray session (their children are found by the sampler)."""
        pids = [os.getpid()]
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.pid != os.getpid() and any(self.session_dir in part for part in cmdline):
                pids.append(proc.pid)
        return pids

    def fresh(self, tag: str) -> tuple[str, str]:
        """A new namespace and run directory (the journal goes in ``<dir>/journal``)."""
        namespace = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
        run_dir = os.path.join(self.workdir, namespace)
        os.makedirs(run_dir)
        return namespace, run_dir

    @staticmethod
    def options(namespace: str, run_dir: str, cfg: CoordConfig, max_cmds: int) -> Options:
        return Options(namespace=namespace, storage=os.path.join(run_dir, "journal"),
                       gateway="bench.sagas:make_gateway", command_actors=cfg.command_actors,
                       slots_per_actor=cfg.slots_per_actor, fsync=cfg.fsync, max_cmds=max_cmds, metrics=cfg.metrics)

    def actor_pids(self) -> list[int]:
        sampler = Sampler(self.roots())
        sampler.start()
        sampler.stop()
        return [pid for name in ACTOR_LABELS for pid in sampler.pids(name)]

    def stop(self, namespace: str, pids: list[int], timeout_s: float = 30.0) -> None:
        """End a coordinator and wait until its processes are gone (they hold the journal lock)."""
        cluster.stop(namespace)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)


class EchoActor:
    """Answers at once: the Ray-call floor of the driver's protocol, with no work behind it.

    ``submit``/``result``: the per-call driver's two calls per workflow; ``submit_many``/``wait``:
    what `Client` sends (every waited-for workflow is already finished, its result its id).
    """

    async def submit(self, cmd: Any, workflow_id: str) -> str:
        return workflow_id

    async def result(self, workflow_id: str) -> Any:
        return workflow_id

    async def submit_many(self, cmds: list[Any], workflow_ids: list[str]) -> list[str]:
        return list(workflow_ids)

    async def wait(self, workflow_ids: list[str], timeout_s: float | None = None) -> dict[str, Any]:
        return {w: {"state": "completed", "result": w, "error": None} for w in workflow_ids}


RemoteEchoActor: Any = ray.remote(num_cpus=0)(EchoActor)


FLOOR_CONFIG = {"calls": "driver=calls (empty)", "client": "driver=client (empty)"}


def run_floor(host: RayHost, workload: str, n: int, in_flight: int, driver: str = "calls") -> dict[str, Any]:
    """The driver's loop against `EchoActor`: the driver's calls and no work behind them.

    Diagnostic: ``calls``: no design that pays a ``submit`` and a ``result`` call per
    workflow from the driver can beat this rate on the machine; ``client``: the same for
    `Client`'s batched ``submit_many`` + ``wait``, whatever happens behind the calls.
    """
    echo = RemoteEchoActor.remote()
    try:
        asyncio.run(_drive(echo, WARMUP, in_flight, 0, "warm", driver))
        sampler = Sampler(host.roots())
        sampler.start()
        run = asyncio.run(_drive(echo, n, in_flight, 0, "wf", driver))
        sampler.stop()
        result = row("ray-floor", workload, n, in_flight, run, sampler, {})
        result.update(config=FLOOR_CONFIG[driver], driver=driver, ok=True,
                      note="diagnostic: not a system, no work, no journal")
        return result
    finally:
        ray.kill(echo)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def _drive(sup: Any, n: int, in_flight: int, io_ms: int, prefix: str, driver: str = "calls") -> Run:
    """``n`` Saga3 workflows, ``in_flight`` at a time, each timed from submit to result."""
    if driver == "calls":
        async def one(i: int) -> tuple[str, Any]:
            wid: str = await sup.submit.remote(Saga3(io_ms=io_ms), f"{prefix}-{i}")
            return wid, await sup.result.remote(wid)

        return await closed_loop(n, in_flight, one)
    if driver != "client":
        raise ValueError(f"unknown driver {driver!r}: one of {', '.join(DRIVERS)}")
    client = Client(sup)

    async def one_client(i: int) -> tuple[str, Any]:
        wid = f"{prefix}-{i}"
        return wid, await client.execute(Saga3(io_ms=io_ms), wid)

    try:
        return await closed_loop(n, in_flight, one_client)
    finally:
        client.close()


def run_workload(host: RayHost, workload: str, n: int, in_flight: int, io_ms: int, cfg: CoordConfig,
                 profile_dir: str | None = None) -> dict[str, Any]:
    """One closed-loop run on a fresh coordinator; returns its result row."""
    namespace, run_dir = host.fresh(workload)
    options = host.options(namespace, run_dir, cfg, max_cmds=max(100, 2 * in_flight))
    sup = cluster.start(options)
    try:
        asyncio.run(_drive(sup, WARMUP, in_flight, io_ms, "warm", cfg.driver))
        sampler = Sampler(host.roots())
        sampler.start()
        pids = {name: sampler.pids(name) for name in ACTOR_LABELS} | {"driver": [os.getpid()]}
        tag = f"{workload}-a{cfg.command_actors}-s{cfg.slots_per_actor}-{cfg.driver}"
        profiler = Profiler(profile_dir, pids, tag=tag)
        try:
            run = asyncio.run(_drive(sup, n, in_flight, io_ms, "wf", cfg.driver))
        finally:
            profiler.stop()
            sampler.stop()
        checks = check(run.results, keylog_path_for(options.storage))
        result = row("coordinator", workload, n, in_flight, run, sampler, checks)
        first, last = run.window_rates()
        result.update(_config_fields(cfg), first_10pct_wf_per_s=first, last_10pct_wf_per_s=last,
                      profile=profiler.summary())
        return result
    finally:
        host.stop(namespace, host.actor_pids())
        shutil.rmtree(run_dir, ignore_errors=True)


def _config_fields(cfg: CoordConfig) -> dict[str, Any]:
    return {"config": cfg.name, "command_actors": cfg.command_actors, "slots_per_actor": cfg.slots_per_actor,
            "fsync": cfg.fsync, "driver": cfg.driver, "metrics": cfg.metrics}


def run_recovery(host: RayHost, n: int, cfg: CoordConfig, settle_s: float = 1.0) -> dict[str, Any]:
    """Leave ``n`` workflows unfinished in a journal, then time `cluster.start` until all completed.

    The first coordinator runs step 0 of as many workflows as it has slots and holds
    them at step 1 (a marker file); the rest stay submitted. It is stopped, the
    marker removed, and a second coordinator is started on the same storage (in a
    new namespace, so no name of the first is reused while it is being torn down).
    """
    namespace, run_dir = host.fresh("recovery")
    options = host.options(namespace, run_dir, cfg, max_cmds=max(100, n))
    hold = os.path.join(run_dir, "hold")
    open(hold, "w").close()
    ids = [f"wf-{i}" for i in range(n)]
    keylog = keylog_path_for(options.storage)
    sup = cluster.start(options)
    try:
        for k in range(0, n, 100):
            chunk = ids[k:k + 100]
            ray.get(sup.submit_many.remote([Saga3(hold=hold) for _ in chunk], chunk))
        _wait_lines(keylog, min(n, cfg.command_actors * cfg.slots_per_actor))
        time.sleep(settle_s)  # the step-0 outcomes reach the journal
        held = ray.get(sup.stats.remote())
    finally:
        host.stop(namespace, host.actor_pids())
    os.remove(hold)
    options = options.replace(namespace=namespace + "-r")
    sampler = Sampler(host.roots())
    sampler.start()
    t0 = time.perf_counter()
    sup = cluster.start(options)
    start_s = time.perf_counter() - t0
    try:
        run = asyncio.run(_collect(sup, ids, t0, cfg.driver))
    finally:
        sampler.stop()
    try:
        result = row("coordinator", "recovery", n, n, run, sampler, check(run.results, keylog))
        result.update(_config_fields(cfg), start_s=start_s, held_before_stop=held.get("counts"))
        return result
    finally:
        host.stop(options.namespace, host.actor_pids())
        shutil.rmtree(run_dir, ignore_errors=True)


async def _collect(sup: Any, ids: list[str], t0: float, driver: str = "calls") -> Run:
    """Every result of ``ids``, each timed from ``t0`` (a ``result`` call each, or `Client`'s ``wait``s)."""
    run = Run(started_at=t0)
    client = Client(sup) if driver == "client" else None

    async def one(wid: str) -> None:
        run.results[wid] = await (client.result(wid) if client is not None else sup.result.remote(wid))
        t = time.perf_counter()
        run.latencies_s.append(t - t0)
        run.done_at.append(t)

    try:
        await asyncio.gather(*(one(w) for w in ids))
    finally:
        if client is not None:
            client.close()
    run.elapsed_s = time.perf_counter() - t0
    return run


def _wait_lines(path: str, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                if sum(1 for _ in f) >= count:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"{count} step-0 calls did not arrive in {path} within {timeout_s} s")
