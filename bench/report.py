"""The results table, the derived overheads, the ratios, and the targets.

Per-step overhead against bare asyncio, two ways, both per step of the 3-step saga:

- ``step_overhead_ms``: latency, ``(mean_ms - bare mean_ms) / 3`` at the same N and
  in-flight count: the end-to-end time each step adds under that load.
- ``step_cpu_overhead_ms``: CPU, ``(cpu_s_per_wf - bare cpu_s_per_wf) * 1000 / 3``:
  the CPU each step costs beyond the saga's own work, summed over every process.

The coordinator rows compared for a workload are its best fsync-on configuration
(highest workflows/s) and its best with the per-call driver (``driver=calls``: one
``submit`` and one ``result`` Ray call per workflow), each against every DBOS peer
(DBOS on SQLite, DBOS on PostgreSQL), bare asyncio, and the ray-floor of its driver;
rows run with ``--no-fsync`` are for diagnosis and never compared.
"""

from __future__ import annotations

import json
from typing import Any

STEPS = 3
DBOS_PEERS = {"dbos-sqlite": "DBOS(SQLite)", "dbos-postgres": "DBOS(PostgreSQL)"}
OLD_NAMES = {"dbos": "dbos-sqlite"}
"""System names of earlier result files: DBOS ran on SQLite only."""
# The targets `python -m bench` (and `python -m bench.journal`) print MET / NOT MET.
SAGA3_VS_DBOS = 6.0
"""saga3: the coordinator's best configuration >= 6x each DBOS peer's workflows/s."""
SAGA3_P99_MS = 100.0
"""saga3: the best configuration's p99 below this."""
CLIENT_VS_FLOOR = 0.50
"""saga3, driver=client (its best configuration): >= this fraction of the ray-floor with driver=client."""
CLIENT_P99_MS = 25.0
"""saga3, driver=client (its best configuration): p99 below this."""
CALLS_VS_FLOOR = 0.80
"""saga3, driver=calls (its best configuration): >= this fraction of the ray-floor with driver=calls."""
SAGA3_CPU_MS_PER_WF = 0.15
"""saga3: CPU per workflow summed over every process (the best configuration's), below this."""
SINGLE_P50_MS = 5.0
"""saga3-single (one workflow in flight): p50 of the better driver below this."""
IO_VS_BARE = 1 / 3
"""saga3-io: the coordinator's best >= this fraction of bare asyncio's workflows/s (the floor)..."""
IO_VS_BARE_GOAL = 0.8
"""... and the goal."""
SCALE_DRIFT = 0.20
"""scale: CPU and wall time per workflow at the largest n at most this much above the smallest n's."""
LOGACTOR_VS_BATCHED = {1: 0.30, 3: 0.20}
"""`bench.journal`: LogActor appends/s with 1 and 3 replicas, as fractions of the disk's batched fsync limit."""


def _find(rows: list[dict[str, Any]], system: str, workload: str, n: int | None = None,
          driver: str | None = None) -> dict[str, Any] | None:
    found = [r for r in rows if r["system"] == system and r["workload"] == workload
             and (n is None or r["n"] == n) and r.get("fsync", True) and "error" not in r
             and (driver is None or r.get("driver") == driver)]
    return max(found, key=lambda r: r["wf_per_s"]) if found else None


def derive(rows: list[dict[str, Any]]) -> None:
    """Add the per-step overheads and mark each workload's best coordinator configuration."""
    for r in rows:
        bare = _find(rows, "bare", r["workload"], r["n"])
        if r["system"] != "bare" and bare is not None and "error" not in r:
            r["step_overhead_ms"] = (r["mean_ms"] - bare["mean_ms"]) / STEPS
            r["step_cpu_overhead_ms"] = (r["cpu_s_per_wf"] - bare["cpu_s_per_wf"]) * 1000 / STEPS
        if r["system"] == "coordinator":
            best = _find(rows, "coordinator", r["workload"], r["n"]) is r
            r["best_config"] = best and r["workload"] != "saga3-metrics"  # that one compares on against off


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


COLUMNS = [("system", 13), ("workload", 13), ("n", 9), ("infl", 5), ("config", 26), ("wf/s", 10), ("p50 ms", 9),
           ("p99 ms", 9), ("cpu ms/wf", 9), ("KiB/infl", 9), ("step ms", 8), ("step cpu", 8), ("ok", 4)]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [" ".join(name.rjust(w) for name, w in COLUMNS)]
    for r in rows:
        mem = r.get("peak_mem_per_inflight_bytes")
        config = (r.get("config") or "") + (" *" if r.get("best_config") else "")
        cells = [r["system"], r["workload"], f"{r['n']:,}", str(r["in_flight"]), config,
                 _fmt(r["wf_per_s"]), _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(1000 * r["cpu_s_per_wf"], 2),
                 _fmt(mem / 1024 if mem is not None else None), _fmt(r.get("step_overhead_ms"), 2),
                 _fmt(r.get("step_cpu_overhead_ms"), 2), "yes" if r["ok"] else ("ERR" if "error" in r else "NO")]
        lines.append(" ".join(c[-w:].rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    lines.append("(* = the coordinator configuration compared below; step ms = latency added per step, "
                 "step cpu = CPU ms added per step, both against bare asyncio; ray-floor = the driver's loop "
                 "against an actor answering at once (driver=calls: submit+result per workflow; driver=client: "
                 "Client's submit_many+wait), a diagnostic bound, not a system; dbos-sqlite / dbos-postgres = "
                 "DBOS on its SQLite file / on the bench's private PostgreSQL server, fsync on, whose processes' "
                 "CPU and memory count for the row)")
    busy = sorted({round(r["loadavg_1m_before"], 1) for r in rows if r.get("loadavg_1m_before", 0) > 2.5})
    if busy:
        lines.append(f"WARNING: the host was busy during some runs (1-min load average before a run up to "
                     f"{busy[-1]} on 2 cores): other processes shared the CPU, rates are low and noisy")
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def _against(rows: list[dict[str, Any]], coord: dict[str, Any]) -> str:
    """``X wf/s = Nx DBOS(SQLite), Mx DBOS(PostgreSQL), ...``: ``coord`` over each peer at its N."""
    workload, n = coord["workload"], coord["n"]
    peers = [(label, _find(rows, system, workload, n)) for system, label in DBOS_PEERS.items()]
    peers.append(("bare", _find(rows, "bare", workload, n)))
    driver = coord.get("driver", "calls")
    peers.append((f"ray-floor({driver})", _find(rows, "ray-floor", workload, n, driver)))
    parts = [f"{coord['wf_per_s'] / r['wf_per_s']:.3g}x {label}" for label, r in peers
             if r is not None and r["wf_per_s"] > 0]
    return f"{coord['wf_per_s']:,.1f} wf/s" + (" = " + ", ".join(parts) if parts else "")


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """The coordinator's best and its best per-call configuration against each peer, and the targets."""
    out: list[str] = []
    for workload in ("saga3", "saga3-io", "scale"):
        for n in sorted({r["n"] for r in rows if r["workload"] == workload}):
            best = _find(rows, "coordinator", workload, n)
            if best is None:
                continue
            line = f"{workload} n={n:,}: coordinator best [{best.get('config')}] {_against(rows, best)}"
            calls = _find(rows, "coordinator", workload, n, "calls")
            if calls is not None:
                line += f"; per-call driver [{calls.get('config')}] {_against(rows, calls)}"
            out.append(line)
    missing = [label for system, label in DBOS_PEERS.items() if not any(r["system"] == system for r in rows)]
    if missing and out:
        out.append(f"(no {' or '.join(missing)} rows in this run)")
    out.extend(metrics_cost(rows))
    out.extend(_targets(rows))
    return out


def metrics_cost(rows: list[dict[str, Any]]) -> list[str]:
    """``saga3-metrics``: the coordinator with metrics on against off, means over each side's runs."""
    out = []
    for n in sorted({r["n"] for r in rows if r["workload"] == "saga3-metrics"}):
        runs = [r for r in rows if r["workload"] == "saga3-metrics" and r["n"] == n and "error" not in r
                and r["system"] == "coordinator"]
        on = [r for r in runs if r.get("metrics", True)]
        off = [r for r in runs if not r.get("metrics", True)]
        if not on or not off:
            continue
        mean = {k: (sum(r[k] for r in on) / len(on), sum(r[k] for r in off) / len(off))
                for k in ("wf_per_s", "p50_ms", "p99_ms", "cpu_s_per_wf")}
        ratio = {k: a / b if b > 0 else float("nan") for k, (a, b) in mean.items()}
        out.append(f"saga3 n={n:,} metrics on vs off ({len(on)}+{len(off)} runs, [{on[0].get('config')}]): "
                   f"{mean['wf_per_s'][0]:,.1f} vs {mean['wf_per_s'][1]:,.1f} wf/s = {ratio['wf_per_s']:.3f}x; "
                   f"p50 {ratio['p50_ms']:.3f}x, p99 {ratio['p99_ms']:.3f}x, CPU per workflow "
                   f"{1000 * mean['cpu_s_per_wf'][0]:.2f} vs {1000 * mean['cpu_s_per_wf'][1]:.2f} ms = "
                   f"{ratio['cpu_s_per_wf']:.3f}x")
    return out


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["", "targets (fsync on; each figure against rows of this run):"]
    missing: list[str] = []
    for name, lines in (("saga3 vs DBOS", _dbos_target(rows)), ("saga3 p99", _p99_target(rows)),
                        ("saga3 vs ray-floor", _floor_targets(rows)),
                        ("saga3 CPU per workflow", _cpu_target(rows)), ("saga3-single p50", _single_target(rows)),
                        ("saga3-io vs bare", _io_target(rows)), ("scale", _scale_target(rows))):
        out.extend(lines)
        if not lines:
            missing.append(name)
    rec = _find(rows, "coordinator", "recovery")
    if rec is not None:
        line = f"  recovery (no target): {rec['n']:,} unfinished -> all completed {rec['elapsed_s']:.2f} s after " \
               f"cluster.start (start itself {rec.get('start_s', 0):.2f} s)"
        for system, label in DBOS_PEERS.items():
            dbos = _find(rows, system, "recovery")
            if dbos is not None:
                line += f"; {label} {dbos['elapsed_s']:.2f} s after launch"
        out.append(line)
    if missing:
        out.append(f"  not measured in this run (rows missing): {', '.join(missing)}")
    return out


def _rate_vs(what: str, row: dict[str, Any], base: dict[str, Any], base_label: str, threshold: float) -> str:
    """``what >= 50% of base_label: X vs Y wf/s = Z% -> MET``."""
    ratio = row["wf_per_s"] / max(1e-9, base["wf_per_s"])
    return (f"  {what} >= {threshold:.0%} of {base_label}: {row['wf_per_s']:,.1f} vs {base['wf_per_s']:,.1f} wf/s "
            f"= {ratio:.1%} -> {_verdict(ratio >= threshold)}")


def _dbos_target(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    coord = _find(rows, "coordinator", "saga3")
    for system, label in DBOS_PEERS.items():
        dbos = _find(rows, system, "saga3")
        if coord is not None and dbos is not None:
            ratio = coord["wf_per_s"] / max(1e-9, dbos["wf_per_s"])
            out.append(f"  saga3 >= {SAGA3_VS_DBOS:g}x {label}: {coord['wf_per_s']:,.1f} vs {dbos['wf_per_s']:,.1f} "
                       f"wf/s = {ratio:.2f}x -> {_verdict(ratio >= SAGA3_VS_DBOS)}")
    return out


def _p99_target(rows: list[dict[str, Any]]) -> list[str]:
    coord = _find(rows, "coordinator", "saga3")
    out = []
    if coord is not None:
        out.append(f"  saga3 p99 < {SAGA3_P99_MS:g} ms (best [{coord.get('config')}]): {coord['p99_ms']:.1f} ms "
                   f"-> {_verdict(coord['p99_ms'] < SAGA3_P99_MS)}")
    return out


def _floor_targets(rows: list[dict[str, Any]]) -> list[str]:
    """saga3 through each driver's best configuration against that driver's ray-floor at the same n."""
    out = []
    for n in sorted({r["n"] for r in rows if r["workload"] == "saga3" and r["system"] == "coordinator"}):
        for driver, threshold in (("client", CLIENT_VS_FLOOR), ("calls", CALLS_VS_FLOOR)):
            coord = _find(rows, "coordinator", "saga3", n, driver)
            floor = _find(rows, "ray-floor", "saga3", n, driver)
            if coord is None:
                continue
            what = f"saga3 n={n:,} driver={driver} [{coord.get('config')}]"
            if floor is not None and floor["wf_per_s"] > 0:
                out.append(_rate_vs(what, coord, floor, f"ray-floor(driver={driver})", threshold))
            else:
                out.append(f"  {what} >= {threshold:.0%} of ray-floor(driver={driver}): not measured (no ray-floor "
                           f"driver={driver} row at n={n:,} in this run)")
            if driver == "client":
                out.append(f"  saga3 n={n:,} driver=client p99 < {CLIENT_P99_MS:g} ms [{coord.get('config')}]: "
                           f"{coord['p99_ms']:.1f} ms -> {_verdict(coord['p99_ms'] < CLIENT_P99_MS)}")
    return out


def _cpu_target(rows: list[dict[str, Any]]) -> list[str]:
    coord = _find(rows, "coordinator", "saga3")
    if coord is None or not coord.get("cpu_s_per_wf"):
        return []
    cpu_ms = 1000 * coord["cpu_s_per_wf"]
    return [f"  saga3 CPU per workflow, all processes, < {SAGA3_CPU_MS_PER_WF:g} ms (best [{coord.get('config')}]): "
            f"{cpu_ms:.3f} ms -> {_verdict(cpu_ms < SAGA3_CPU_MS_PER_WF)}"]


def _single_target(rows: list[dict[str, Any]]) -> list[str]:
    """saga3-single: each driver's p50 with one workflow in flight; the target on the lower."""
    out = []
    for n in sorted({r["n"] for r in rows if r["workload"] == "saga3-single" and r["system"] == "coordinator"}):
        found = [(d, _find(rows, "coordinator", "saga3-single", n, d)) for d in ("calls", "client")]
        drivers = [(d, r) for d, r in found if r is not None]
        if not drivers:
            continue
        best_driver, best = min(drivers, key=lambda dr: dr[1]["p50_ms"])
        bare = _find(rows, "bare", "saga3-single", n)
        figures = ", ".join(f"driver={d} {r['p50_ms']:.2f} ms" for d, r in drivers)
        ref = f" (bare asyncio {bare['p50_ms']:.2f} ms)" if bare is not None else ""
        out.append(f"  saga3-single p50 < {SINGLE_P50_MS:g} ms (1 in flight, n={n:,}): {figures}{ref}; best "
                   f"driver={best_driver} {best['p50_ms']:.2f} ms -> {_verdict(best['p50_ms'] < SINGLE_P50_MS)}")
    return out


def _io_target(rows: list[dict[str, Any]]) -> list[str]:
    coord, bare = _find(rows, "coordinator", "saga3-io"), _find(rows, "bare", "saga3-io")
    if coord is None or bare is None:
        return []
    ratio = coord["wf_per_s"] / max(1e-9, bare["wf_per_s"])
    return [f"  saga3-io vs bare asyncio: {coord['wf_per_s']:,.1f} vs {bare['wf_per_s']:,.1f} wf/s = {ratio:.3f} of "
            f"bare; >= 1/3 -> {_verdict(ratio >= IO_VS_BARE)}; >= {IO_VS_BARE_GOAL:g} -> "
            f"{_verdict(ratio >= IO_VS_BARE_GOAL)}"]


def journal_targets(single_limit: float, batched_limit: float, logactor: dict[int, float]) -> list[str]:
    """`bench.journal`: LogActor appends/s by replica count as fractions of the disk's batched fsync limit.

    ``single_limit``: fsynced appends/s with one fsync each (shown beside it); ``batched_limit``:
    fsynced records/s with each fsync covering a batch; ``logactor``: appends/s by replicas.
    """
    out = ["targets (LogActor appends/s against the disk's batched fsync limit, this run):"]
    for replicas, threshold in LOGACTOR_VS_BATCHED.items():
        rate = logactor.get(replicas)
        if rate is None or batched_limit <= 0:
            out.append(f"  LogActor, {replicas} replica(s) >= {threshold:.0%}: not measured in this run")
            continue
        ratio = rate / batched_limit
        out.append(f"  LogActor, {replicas} replica(s) >= {threshold:.0%} of the batched limit: {rate:,.0f} vs "
                   f"{batched_limit:,.0f} records/s = {ratio:.1%} (single-append limit {single_limit:,.0f}/s: "
                   f"{rate / max(1e-9, single_limit):.1f}x) -> {_verdict(ratio >= threshold)}")
    return out


def _scale_target(rows: list[dict[str, Any]]) -> list[str]:
    ns = sorted({r["n"] for r in rows if r["system"] == "coordinator" and r["workload"] == "scale"
                 and _find(rows, "coordinator", "scale", r["n"]) is not None})
    if len(ns) < 2:
        return []
    small, big = _find(rows, "coordinator", "scale", ns[0]), _find(rows, "coordinator", "scale", ns[-1])
    if small is None or big is None:
        return []
    cpu = big["cpu_s_per_wf"] / max(1e-12, small["cpu_s_per_wf"])
    wall = small["wf_per_s"] / max(1e-9, big["wf_per_s"])
    note = "" if ns[-1] >= 100_000 else f" (target is at 100,000; this run's largest n is {ns[-1]:,})"
    lines = [f"  scale, cost per workflow at n={ns[-1]:,} at most {SCALE_DRIFT:.0%} above n={ns[0]:,}{note}:",
             f"    CPU s/wf {cpu:.2f}x -> {_verdict(cpu <= 1 + SCALE_DRIFT)}; "
             f"wall s/wf {wall:.2f}x -> {_verdict(wall <= 1 + SCALE_DRIFT)}"]
    first, last = big.get("first_10pct_wf_per_s"), big.get("last_10pct_wf_per_s")
    if first and last:
        lines.append(f"    within the n={ns[-1]:,} run: first 10% at {first:,.1f} wf/s, last 10% at {last:,.1f} wf/s")
    return lines


def read(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        rows: list[dict[str, Any]] = json.load(f)
    for r in rows:
        r["system"] = OLD_NAMES.get(r["system"], r["system"])
    return rows


def write(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w") as f:
        json.dump(rows, f, indent=1, default=str)
