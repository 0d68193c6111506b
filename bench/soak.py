"""``python -m bench --workload soak``: one coordinator, a long steady load, memory and disk over time.

N saga3 workflows (1,000,000; 100,000 with ``--quick``) run through one coordinator with
the ``client`` driver, ``in_flight`` outstanding, in ten equal parts. After each part it
samples the RSS of each coordinator process (SupervisorActor, LogActor, CommandActors;
psutil) and the journal's disk use; at the end it times ``result`` of workflows that
finished in the first part (long out of the result cache) and prints the targets:

- end RSS of all coordinator processes together <= 1.15x their RSS at 10% of the run
  (each process's own growth is printed beside it);
- the last tenth's throughput >= 0.9x the first tenth's;
- old-result p99 < 5 ms.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from typing import Any

import cluster
from bench.coordinator import ACTOR_LABELS, CoordConfig, RayHost, _drive
from bench.measure import Sampler, psutil

OLD_RESULTS = 1000
"""How many long-finished workflows' results are timed."""


def _rss(pids: dict[str, list[int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, group in pids.items():
        for i, pid in enumerate(group):
            try:
                out[f"{name.removeprefix('ray::')}{'' if len(group) == 1 else f'-{i}'}"] = \
                    psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
    return out


def _disk(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                continue
    return total


async def _old_results(sup: Any, ids: list[str]) -> list[float]:
    latencies = []
    for wid in ids:
        t0 = time.perf_counter()
        await sup.result.remote(wid)
        latencies.append(time.perf_counter() - t0)
    return latencies


def run_soak(host: RayHost, n: int, in_flight: int, cfg: CoordConfig) -> dict[str, Any]:
    """The soak run on a fresh coordinator; returns its row (with the per-tenth samples)."""
    namespace, run_dir = host.fresh("soak")
    options = host.options(namespace, run_dir, cfg, max_cmds=max(100, 2 * in_flight))
    journal = os.path.join(run_dir, "journal")
    sup = cluster.start(options)
    try:
        asyncio.run(_drive(sup, 200, in_flight, 0, "warm", cfg.driver))
        sampler = Sampler(host.roots())
        sampler.start()
        sampler.stop()
        pids = {name: sampler.pids(name) for name in ACTOR_LABELS}
        tenth = n // 10
        samples: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        for k in range(10):
            run = asyncio.run(_drive(sup, tenth, in_flight, 0, f"t{k}", cfg.driver))
            samples.append({"part": k + 1, "done": (k + 1) * tenth, "elapsed_s": time.perf_counter() - t_start,
                            "wf_per_s": tenth / run.elapsed_s, "rss": _rss(pids), "disk_bytes": _disk(journal)})
            print(f"   {samples[-1]['done']:>9,}  {samples[-1]['wf_per_s']:8,.0f} wf/s  "
                  f"rss {sum(samples[-1]['rss'].values()) / 2**20:7.1f} MiB  "
                  f"disk {samples[-1]['disk_bytes'] / 2**20:8.1f} MiB", flush=True)
        old = [f"t0-{i}" for i in range(0, tenth, max(1, tenth // OLD_RESULTS))][:OLD_RESULTS]
        latencies = sorted(asyncio.run(_old_results(sup, old)))
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3
        return {"workload": "soak", "n": n, "in_flight": in_flight, "config": cfg.name, "samples": samples,
                "old_result_p50_ms": p50, "old_result_p99_ms": p99, "ok": True,
                "wf_per_s": n / samples[-1]["elapsed_s"], "p50_ms": p50, "p99_ms": p99, "mean_ms": 0.0,
                "cpu_s_per_wf": 0.0, "system": "coordinator"}
    finally:
        host.stop(namespace, host.actor_pids())
        shutil.rmtree(run_dir, ignore_errors=True)


def table(row: dict[str, Any]) -> str:
    """The per-tenth table and the targets, MET or NOT MET."""
    samples = row["samples"]
    names = sorted({name for s in samples for name in s["rss"]})
    head = f"{'done':>9} {'wf/s':>7} {'disk MiB':>9} " + " ".join(f"{n[:14]:>14}" for n in names)
    lines = [f"soak: {row['n']:,} saga3 workflows, {row['in_flight']} in flight [{row['config']}] (RSS in MiB)",
             head]
    for s in samples:
        lines.append(f"{s['done']:>9,} {s['wf_per_s']:>7,.0f} {s['disk_bytes'] / 2**20:>9.1f} "
                     + " ".join(f"{s['rss'].get(n, 0) / 2**20:>14.1f}" for n in names))
    first, last = samples[0], samples[-1]
    lines.append(f"old-result latency (first tenth, out of the cache): p50 {row['old_result_p50_ms']:.2f} ms, "
                 f"p99 {row['old_result_p99_ms']:.2f} ms")
    per_wf = (last["disk_bytes"]) / max(1, last["done"])
    lines.append(f"journal disk: {last['disk_bytes'] / 2**20:.1f} MiB, {per_wf:,.0f} bytes per workflow kept")
    growth = {n: last["rss"].get(n, 0) / max(1, first["rss"].get(n, 1)) for n in names}
    total = sum(last["rss"].values()) / max(1, sum(first["rss"].values()))
    lines.append("RSS at the end against at 10%: " + ", ".join(f"{n} {g:.2f}x" for n, g in growth.items())
                 + f"; all {total:.2f}x")
    targets = [
        (f"end RSS of all coordinator processes <= 1.15x RSS at 10% ({total:.2f}x)", total <= 1.15),
        (f"last tenth >= 0.9x first tenth's throughput ({last['wf_per_s']:,.0f} vs {first['wf_per_s']:,.0f} wf/s)",
         last["wf_per_s"] >= 0.9 * first["wf_per_s"]),
        (f"old-result p99 < 5 ms ({row['old_result_p99_ms']:.2f} ms)", row["old_result_p99_ms"] < 5.0),
    ]
    lines += [f"  {'MET    ' if ok else 'NOT MET'} {text}" for text, ok in targets]
    return "\n".join(lines)
