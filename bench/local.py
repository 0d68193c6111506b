"""Bare asyncio and DBOS runs, each in a process of its own.

The parent calls `run_local`, which starts ``python -m bench.local ...`` and reads
one JSON result row from its last line of output. A process of its own keeps each
system's CPU and memory apart from Ray's, and DBOS's process-wide state apart from
the next run's.

DBOS runs as two peers: ``dbos-sqlite`` (its default SQLite system database, a file
in the run's directory) and ``dbos-postgres`` (a fresh database of the bench's private
PostgreSQL server, whose URL and postmaster pid the parent passes in; the CPU and
memory of that server's processes count for the run, as Ray's do for the coordinator).

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

from bench import report
from bench.measure import Run, Sampler, closed_loop, cost_fields
from bench.sagas import Services, check, saga3_bare

WARMUP = 50
DBOS_PEERS = report.DBOS_PEERS
"""The DBOS peers by system name, with their labels."""


def row(system: str, workload: str, n: int, in_flight: int, run: Run, sampler: Sampler,
        checks: dict[str, int]) -> dict[str, Any]:
    """One result row: throughput and latency, then the extra costs and correctness counts."""
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


def _dbos_system(args: argparse.Namespace) -> str:
    return "dbos-postgres" if args.database_url else "dbos-sqlite"


def _roots(args: argparse.Namespace) -> list[int]:
    """This process, and the database server's if there is one."""
    return [os.getpid()] + ([args.db_pid] if args.db_pid else [])


async def _dbos(args: argparse.Namespace) -> dict[str, Any]:
    from bench import dbos_saga

    keylog = os.path.join(args.dir, "keys.log")
    dbos_saga.launch(args.dir, keylog, args.database_url)

    async def one(i: int, prefix: str = "wf") -> tuple[str, Any]:
        wid = f"{prefix}-{i}"
        return wid, await dbos_saga.run_one(wid, args.io_ms)

    await closed_loop(WARMUP, args.in_flight, lambda i: one(i, "warm"))
    sampler = Sampler(_roots(args))
    sampler.start()
    run = await closed_loop(args.n, args.in_flight, one)
    sampler.stop()
    dbos_saga.shutdown()
    return row(_dbos_system(args), args.workload, args.n, args.in_flight, run, sampler, check(run.results, keylog))


async def _dbos_hold(args: argparse.Namespace) -> None:
    from bench import dbos_saga

    keylog = os.path.join(args.dir, "keys.log")
    dbos_saga.launch(args.dir, keylog, args.database_url)
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
    sampler = Sampler(_roots(args))
    sampler.start()
    t0 = time.perf_counter()
    loop0 = asyncio.get_running_loop().time()
    dbos_saga.launch(args.dir, keylog, args.database_url)
    seen = await dbos_saga.wait_all(ids)
    run = Run(started_at=t0, elapsed_s=time.perf_counter() - t0)
    sampler.stop()
    run.latencies_s = [t - loop0 for t in seen.values()]
    run.results = await dbos_saga.results(ids)
    dbos_saga.shutdown()
    return row(_dbos_system(args), "recovery", args.n, args.n, run, sampler, check(run.results, keylog))


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
    p.add_argument("--database-url", default="", help="DBOS's system database (default: SQLite in --dir)")
    p.add_argument("--db-pid", type=int, default=0, help="the database server's pid, sampled with this process")
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


def _database(database_url: str, db_pid: int) -> list[str]:
    return ["--database-url", database_url, "--db-pid", str(db_pid)] if database_url else []


def run_local(system: str, workload: str, n: int, in_flight: int, io_ms: int, run_dir: str,
              database_url: str = "", db_pid: int = 0, timeout_s: float = 3600) -> dict[str, Any]:
    """Run one bare or DBOS workload in a fresh process and return its row.

    ``system``: ``bare``, ``dbos-sqlite``, or ``dbos-postgres`` with the ``database_url`` of
    the server whose postmaster is ``db_pid``.
    """
    kind = "dbos" if system in DBOS_PEERS else system
    if (system == "dbos-postgres") != bool(database_url):
        raise ValueError("dbos-postgres needs a database URL, and only it takes one")
    cmd = [sys.executable, "-m", "bench.local", "--system", kind, "--workload", workload, "--n", str(n),
           "--in-flight", str(in_flight), "--io-ms", str(io_ms), "--dir", run_dir,
           *_database(database_url, db_pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"{system} {workload} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_dbos_recovery(n: int, run_dir: str, database_url: str = "", db_pid: int = 0,
                      timeout_s: float = 1800) -> dict[str, Any]:
    """Park ``n`` DBOS workflows mid-saga, SIGKILL their process, time their recovery (on SQLite by default)."""
    hold = os.path.join(run_dir, "hold")
    open(hold, "w").close()
    base = [sys.executable, "-m", "bench.local", "--workload", "recovery", "--n", str(n), "--in-flight", str(n),
            "--dir", run_dir, "--hold", hold, *_database(database_url, db_pid)]
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
