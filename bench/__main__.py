"""``python -m bench``: the coordinator against bare asyncio and DBOS, in one run.

Workloads: ``saga3`` (N=2,000, 50 in flight), ``saga3-single`` (saga3 with one
workflow in flight, N=300: its latency alone, on the coordinator's default configuration
with each driver, and bare asyncio), ``saga3-io`` (10 ms per step, N=1,000, 100 in
flight), ``saga3-metrics`` (saga3 on the coordinator with its metrics on and off,
alternated, and the on/off ratio), ``scale`` (saga3 at N=1k, 10k, 100k), ``recovery``
(1,000 unfinished workflows: time from `cluster.start` to all completed), and, only
when named, ``soak`` (1,000,000 saga3 through one coordinator: throughput per tenth,
RSS per process over time, disk use, old results' latency; `bench.soak`). ``--quick`` runs
smaller sizes. Prints a table, the ratios and the targets (each MET or NOT MET, its figure
beside the figure it is measured against, both from this run; the thresholds are
`bench.report`'s constants), and writes
``bench-results.json`` (after every run, so a long run leaves partial results).

The coordinator runs durable with fsync on, on one local Ray (2 CPUs), a fresh
namespace and journal per run; ``saga3`` and ``saga3-io`` sweep ``command_actors``,
``slots_per_actor`` and the driver (``calls``: a ``submit`` and a ``result`` Ray call per
workflow; ``client``: `cluster.client.Client`, batching them) and compare the best
configuration, and separately its best per-call (``calls``) configuration, against each
DBOS peer; ``scale`` and ``recovery`` use saga3's best. The ``ray-floor`` diagnostic
runs each driver against an actor that answers at once.

DBOS (3.4, the same saga as ``@DBOS.workflow`` over ``@DBOS.step``) runs as two peers:
``dbos-sqlite`` on its default SQLite system database, and ``dbos-postgres`` on a
private PostgreSQL server the bench starts for the run (`bench.postgres`: initdb into a
temporary directory, fsync on, 127.0.0.1 on a free port) and stops at the end. Without
PostgreSQL (not installed, and not installable), the run says so and goes on without
the ``dbos-postgres`` rows.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import report
from bench.local import DBOS_PEERS
from bench.profile import print_summary

WORKLOADS = ("saga3", "saga3-single", "saga3-io", "saga3-metrics", "scale", "recovery", "soak")
DEFAULT_WORKLOADS = WORKLOADS[:-1]
"""Run when none is named: all but ``soak`` (an hour at full size)."""
SYSTEMS = ("bare", *DBOS_PEERS, "coordinator", "ray-floor")
ALIASES = {"dbos": tuple(DBOS_PEERS)}
"""``--system dbos``: both DBOS peers."""
# workload -> [(n, in_flight, io_ms)]
FULL: dict[str, list[tuple[int, int, int]]] = {
    "saga3": [(2000, 50, 0)], "saga3-single": [(300, 1, 0)], "saga3-io": [(1000, 100, 10)],
    "saga3-metrics": [(2000, 50, 0)],
    "scale": [(1000, 50, 0), (10_000, 50, 0), (100_000, 50, 0)], "recovery": [(1000, 1000, 0)],
    "soak": [(1_000_000, 100, 0)],
}
QUICK: dict[str, list[tuple[int, int, int]]] = {
    "saga3": [(500, 50, 0)], "saga3-single": [(100, 1, 0)], "saga3-io": [(300, 100, 10)],
    "saga3-metrics": [(500, 50, 0)],
    "scale": [(1000, 50, 0), (10_000, 50, 0)], "recovery": [(200, 200, 0)],
    "soak": [(100_000, 100, 0)],
}
SWEPT = ("saga3", "saga3-io")
METRICS_ORDER = (True, False, False, True)
"""``saga3-metrics``: metrics on, off, off, on (the pairs' order cancels a drift of the host's speed)."""
DRIVERS = ("calls", "client")
DEFAULT_SWEEP = [(1, 64, "calls"), (1, 64, "client"), (1, 128, "client"), (2, 64, "client")]
"""(command_actors, slots_per_actor, driver) swept when no knob is given."""
SINGLE = "saga3-single"
"""One workflow in flight: the default configuration (`SINGLE_CONFIG`) with each driver, and bare asyncio only."""
SINGLE_CONFIG = (1, 64)
"""(command_actors, slots_per_actor) of ``saga3-single``: the coordinator's defaults."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes; scale at 1k and 10k only")
    p.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default: all")
    p.add_argument("--system", action="append", choices=[*SYSTEMS, *ALIASES],
                   help="repeatable; dbos = dbos-sqlite and dbos-postgres; default: all")
    p.add_argument("--n", type=int, help="override N of every selected workload (scale: the largest N)")
    p.add_argument("--command-actors", type=int, action="append",
                   help="repeatable; CommandActor pool sizes saga3/saga3-io sweep (every combination with "
                        "--slots-per-actor and --driver; none of the three given: "
                        + ", ".join(f"{a}x{s} {d}" for a, s, d in DEFAULT_SWEEP) + ")")
    p.add_argument("--slots-per-actor", type=int, action="append",
                   help="repeatable; slots per CommandActor saga3/saga3-io sweep")
    p.add_argument("--driver", action="append", choices=DRIVERS,
                   help="repeatable; calls: a submit and a result Ray call per workflow; client: "
                        "cluster.client.Client (submit_many + wait long-polls); default client")
    p.add_argument("--no-fsync", action="store_true",
                   help="DIAGNOSIS ONLY: journal without fsync; such rows are labelled and never compared")
    p.add_argument("--dbos-scale-max", type=int,
                   help="largest scale N each DBOS peer runs (default 10,000; 1,000 with --quick): at ~30-60 wf/s, "
                        "100k would take most of an hour")
    p.add_argument("--profile", metavar="DIR", help="py-spy record the coordinator's actors into DIR")
    p.add_argument("--out", default="bench-results.json")
    p.add_argument("--report", metavar="JSON", help="run nothing: print the table and targets of an earlier run")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.workdir = tempfile.mkdtemp(prefix="ray-coordinator-bench-")
        self.systems = [s for name in args.system or SYSTEMS for s in ALIASES.get(name, (name,))]
        if args.command_actors is None and args.slots_per_actor is None and args.driver is None:
            self.sweep = DEFAULT_SWEEP
        else:
            self.sweep = [(a, s, d) for a in args.command_actors or [1] for s in args.slots_per_actor or [64]
                          for d in args.driver or ["client"]]
        self.host: Any = None
        self.pg: Any = None
        self.notes: list[str] = []
        self.best: tuple[int, int, str] | None = None
        self.dbos_scale_max = args.dbos_scale_max or (1000 if args.quick else 10_000)

    def sizes(self, workload: str) -> list[tuple[int, int, int]]:
        sizes = (QUICK if self.args.quick else FULL)[workload]
        if self.args.n is None:
            return sizes
        if workload == "scale":
            return [s for s in sizes if s[0] < self.args.n] + [(self.args.n, sizes[0][1], 0)]
        return [(self.args.n, min(in_flight, self.args.n), io) for _, in_flight, io in sizes]

    def record(self, what: str, fn: Callable[[], dict[str, Any]], fallback: dict[str, Any]) -> None:
        print(f"-- {what} ...", flush=True)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            row = fn()
        except Exception as exc:  # one failed run is reported, the others still run
            traceback.print_exc()
            row = {**fallback, "wf_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "ok": False,
                   "cpu_s_per_wf": 0.0, "error": f"{type(exc).__name__}: {exc}"}
        row["loadavg_1m_before"] = load
        print(f"   {row['wf_per_s']:,.1f} wf/s  p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  "
              f"ok={row['ok']}  ({time.perf_counter() - t0:.0f} s, load before {load:.1f})", flush=True)
        self.rows.append(row)
        report.derive(self.rows)
        report.write(self.rows, self.args.out)

    def coordinator(self) -> Any:
        if self.host is None:
            from bench.coordinator import RayHost

            self.host = RayHost(self.workdir)
        return self.host

    def postgres(self) -> Any:
        """The private PostgreSQL server, started on first use; None (and a note) if it cannot be."""
        if "dbos-postgres" not in self.systems:
            return None
        if self.pg is None:
            from bench.postgres import PrivateCluster, Unavailable

            self.pg = PrivateCluster()
            try:
                self.pg.start()
            except (Unavailable, RuntimeError, OSError) as exc:
                self.pg.stop()
                note = f"PostgreSQL unavailable, no DBOS(PostgreSQL) rows in this run: {exc}"
                print(f"-- {note}", flush=True)
                self.notes.append(note)
                self.systems.remove("dbos-postgres")
                return None
            print(f"-- private PostgreSQL {self.pg.version} (fsync=on) on 127.0.0.1:{self.pg.port}, "
                  f"pid {self.pg.pid}, in {self.pg.root}", flush=True)
        return self.pg

    def database(self, system: str) -> dict[str, Any] | None:
        """`run_local`'s database arguments for ``system``; None if it cannot run."""
        if system != "dbos-postgres":
            return {}
        pg = self.postgres()
        return {"database_url": pg.url(), "db_pid": pg.pid} if pg is not None else None

    def run_dir(self, tag: str) -> str:
        return tempfile.mkdtemp(prefix=tag + "-", dir=self.workdir)

    def configs(self, workload: str) -> list[Any]:
        from bench.coordinator import CoordConfig

        fsync = not self.args.no_fsync
        if workload in SWEPT:
            return [CoordConfig(a, s, fsync, d) for a, s, d in self.sweep]
        if workload == SINGLE:
            actors, slots = SINGLE_CONFIG
            return [CoordConfig(actors, slots, fsync, d) for d in self.args.driver or DRIVERS]
        if workload == "saga3-metrics":
            clients = [c for c in self.sweep if c[2] == "client"]
            actors, slots, driver = self.best or (clients or self.sweep)[0]
            return [CoordConfig(actors, slots, fsync, driver, metrics=on) for on in METRICS_ORDER]
        actors, slots, driver = self.best if self.best is not None else self.sweep[-1]
        return [CoordConfig(actors, slots, fsync, driver)]

    def run_workload(self, workload: str) -> None:
        for n, in_flight, io_ms in self.sizes(workload):
            base = {"workload": workload, "n": n, "in_flight": in_flight}
            if workload == "recovery":
                self.run_recovery(n, base)
                continue
            if workload == "soak":
                self.run_soak(n, in_flight, base)
                continue
            from bench.local import run_local

            for system in ("bare", *DBOS_PEERS):
                if workload == "saga3-metrics":
                    break  # the coordinator against itself only
                if system not in self.systems or (system in DBOS_PEERS and (
                        workload == SINGLE or (workload == "scale" and n > self.dbos_scale_max))):
                    continue
                db = self.database(system)
                if db is None:
                    continue
                run = functools.partial(run_local, system, workload, n, in_flight, io_ms, self.run_dir(system), **db)
                self.record(f"{system} {workload} n={n}", run, {"system": system, **base})
            if "coordinator" in self.systems:
                self.run_coordinator(workload, n, in_flight, io_ms, base)
            if "ray-floor" in self.systems and workload == "saga3":
                from bench.coordinator import run_floor

                for driver in sorted({d for _, _, d in self.sweep}):
                    floor = functools.partial(run_floor, self.coordinator(), workload, n, in_flight, driver)
                    self.record(f"ray-floor {workload} n={n} driver={driver} (diagnostic)", floor,
                                {"system": "ray-floor", "driver": driver, **base})

    def run_coordinator(self, workload: str, n: int, in_flight: int, io_ms: int, base: dict[str, Any]) -> None:
        from bench.coordinator import run_workload

        host = self.coordinator()
        profile = self.args.profile if workload != "scale" else None
        for cfg in self.configs(workload):
            run = functools.partial(run_workload, host, workload, n, in_flight, io_ms, cfg, profile)
            self.record(f"coordinator {workload} n={n} [{cfg.name}]", run,
                        {"system": "coordinator", "config": cfg.name, **base})
        if workload == "saga3-metrics":
            print("   " + "\n   ".join(report.metrics_cost(self.rows)), flush=True)
        if workload == "saga3":
            best = report._find(self.rows, "coordinator", "saga3", n)
            if best is not None and best["wf_per_s"] > 0:
                self.best = int(best["command_actors"]), int(best["slots_per_actor"]), str(best["driver"])

    def run_soak(self, n: int, in_flight: int, base: dict[str, Any]) -> None:
        from bench.coordinator import CoordConfig
        from bench.soak import run_soak, table

        cfg = CoordConfig(1, 64, not self.args.no_fsync, "client")
        self.record(f"coordinator soak n={n} [{cfg.name}]",
                    functools.partial(run_soak, self.coordinator(), n, in_flight, cfg),
                    {"system": "coordinator", "config": cfg.name, **base})
        if "samples" in self.rows[-1]:
            print(table(self.rows[-1]), flush=True)

    def run_recovery(self, n: int, base: dict[str, Any]) -> None:
        from bench.local import run_dbos_recovery

        for system in DBOS_PEERS:
            if system not in self.systems:
                continue
            db = self.database(system)
            if db is None:
                continue
            self.record(f"{system} recovery n={n}",
                        functools.partial(run_dbos_recovery, n, self.run_dir(system), **db), {"system": system, **base})
        if "coordinator" in self.systems:
            from bench.coordinator import run_recovery

            host = self.coordinator()
            for cfg in self.configs("recovery"):
                self.record(f"coordinator recovery n={n} [{cfg.name}]", functools.partial(run_recovery, host, n, cfg),
                            {"system": "coordinator", "config": cfg.name, **base})

    def close(self) -> None:
        try:
            if self.pg is not None:
                self.pg.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self.host is not None:
                import ray

                ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    args = parse(argv)
    notes: list[str] = []
    if args.report:
        rows = report.read(args.report)
        report.derive(rows)
    else:
        bench = Bench(args)
        # SIGTERM ends the run as Ctrl-C does: `close` stops the PostgreSQL server and Ray
        signal.signal(signal.SIGTERM, _terminate)
        try:
            for workload in args.workload or list(DEFAULT_WORKLOADS):
                bench.run_workload(workload)
        finally:
            bench.close()
        rows, notes = bench.rows, bench.notes
    print()
    print(report.table(rows))
    print()
    print("\n".join(report.ratios(rows)))
    for note in notes:
        print(f"NOTE: {note}")
    print_summary(rows)
    if not args.report:
        print(f"\nwrote {os.path.abspath(args.out)}")
    return 0 if all(r["ok"] for r in rows) else 1


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
