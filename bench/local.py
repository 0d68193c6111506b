"""Bare asyncio and DBOS runs, each in a process of its own.

The parent calls `run_local`, which starts ``python -m bench.local ...`` and reads
one JSON result row from its last line of output. A process of its own keeps each
system's CPU and memory apart from Ray's, and DBOS's process-wide state apart from
the next run's.

The DBOS `recovery` run takes two processes: ``hold`` starts the workflows, waits
until each is parked at its held step, then is killed with SIGKILL; ``recover``
launches DBOS on the same database and times until every workflow succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from bench.measure import Run, Sampler, closed_loop, cost_fields
from bench.sagas import Services, check, saga3_bare

WARMUP = 50


def row(system: str, workload: str, n: int, in_flight: int, run: Run, sampler: Sampler,
        checks: dict[str, int]) -> dict[str, Any]:
    """One result row: the issue's keys, then the extra costs and correctness counts."""
    return {"system": system, "workload": workload, "n": n, "in_flight": in_flight, **run.stats(),
            "ok": not any(checks.values()), **checks, "elapsed_s": run.elapsed_s,
            **cost_fields(sampler, n, in_flight)}


async def _bare(args: argparse.Namespace) -> dict[str, Any]:
    services = Services(os.path.join(args.dir, "keys.log"))

    async def one(i: int, prefix: str = "wf") -> tuple[str, Any]:
        wid = f"{prefix}-{i}"
        return wid, await saga3_bare(services, wid, args.io_ms)

    await closed_loop(WARMUP, args.in_flight, lambda i: one(i, "warm"))
    sampler = Sampler([os.getpid()])
    sampler.start()
    run = await closed_loop(args.n, args.in_flight, one)
    sampler.stop()
    return row("bare", args.workload, args.n, args.in_flight, run, sampler,
               check(run.results, os.path.join(args.dir, "keys.log")))


async def _dbos(args: argparse.Namespace) -> dict[str, Any]:
    from bench import dbos_saga

    keylog = os.path.join(args.dir, "keys.log")
    dbos_saga.launch(args.dir, keylog)

    async def one(i: int, prefix: str = "wf") -> tuple[str, Any]:
        wid = f"{prefix}-{i}"
        return wid, await dbos_saga.run_one(wid, args.io_ms)

    await closed_loop(WARMUP, args.in_flight, lambda i: one(i, "warm"))
    sampler = Sampler([os.getpid()])
    sampler.start()
    run = await closed_loop(args.n, args.in_flight, one)
    sampler.stop()
    dbos_saga.shutdown()
    return row("dbos", args.workload, args.n, args.in_flight, run, sampler, check(run.results, keylog))


async def _dbos_hold(args: argparse.Namespace) -> None:
    from bench import dbos_saga

    keylog = os.path.join(args.dir, "keys.log")
    dbos_saga.launch(args.dir, keylog)
    for i in range(args.n):
        await dbos_saga.start_held(f"wf-{i}", args.hold)
    while _lines(keylog) < args.n:  # every workflow has done step 0 and waits at step 1
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let the step-0 outcomes commit
    print("READY", flush=True)
    await asyncio.sleep(3600)


async def _dbos_recover(args: argparse.Namespace) -> dict[str, Any]:
    from bench import dbos_saga

    keylog = os.path.join(args.dir, "keys.log")
    ids = [f"wf-{i}" for i in range(args.n)]
    sampler = Sampler([os.getpid()])
    sampler.start()
    t0 = time.perf_counter()
    loop0 = asyncio.get_running_loop().time()
    dbos_saga.launch(args.dir, keylog)
    seen = await dbos_saga.wait_all(ids)
    run = Run(started_at=t0, elapsed_s=time.perf_counter() - t0)
    sampler.stop()
    run.latencies_s = [t - loop0 for t in seen.values()]
    run.results = await dbos_saga.results(ids)
    dbos_saga.shutdown()
    return row("dbos", "recovery", args.n, args.n, run, sampler, check(run.results, keylog))


def _lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.local")
    p.add_argument("--system", choices=["bare", "dbos", "dbos-hold", "dbos-recover"], required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--in-flight", type=int, required=True)
    p.add_argument("--io-ms", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--hold", default="")
    args = p.parse_args(argv)
    runners = {"bare": _bare, "dbos": _dbos, "dbos-recover": _dbos_recover}
    if args.system == "dbos-hold":
        asyncio.run(_dbos_hold(args))
        return
    result = asyncio.run(runners[args.system](args))
    print(json.dumps(result), flush=True)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": env.get("RAY_AUTH_MODE", "disabled"), "RAY_USAGE_STATS_ENABLED": "0"})
    return env


def run_local(system: str, workload: str, n: int, in_flight: int, io_ms: int, run_dir: str,
              timeout_s: float = 3600) -> dict[str, Any]:
    """Run one bare or DBOS workload in a fresh process and return its row."""
    cmd = [sys.executable, "-m", "bench.local", "--system", system, "--workload", workload, "--n", str(n),
           "--in-flight", str(in_flight), "--io-ms", str(io_ms), "--dir", run_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"{system} {workload} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_dbos_recovery(n: int, run_dir: str, timeout_s: float = 1800) -> dict[str, Any]:
    """Park ``n`` DBOS workflows mid-saga, SIGKILL their process, time their recovery."""
    hold = os.path.join(run_dir, "hold")
    open(hold, "w").close()
    base = [sys.executable, "-m", "bench.local", "--workload", "recovery", "--n", str(n), "--in-flight", str(n),
            "--dir", run_dir, "--hold", hold]
    holder = subprocess.Popen([*base, "--system", "dbos-hold"], stdout=subprocess.PIPE, text=True, env=_child_env())
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"DBOS hold process did not get ready: {line!r}")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    os.remove(hold)
    out = subprocess.run([*base, "--system", "dbos-recover"], capture_output=True, text=True, env=_child_env(),
                         timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"dbos recovery failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
