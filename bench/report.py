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
SAGA3_VS_DBOS = 6.0
SAGA3_P99_MS = 100.0
IO_VS_BARE = 1 / 3
SCALE_DRIFT = 0.20


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


COLUMNS = [("system", 13), ("workload", 13), ("n", 7), ("infl", 5), ("config", 26), ("wf/s", 10), ("p50 ms", 9),
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
    out = ["", "targets (fsync on):"]
    coord = _find(rows, "coordinator", "saga3")
    for system, label in DBOS_PEERS.items():
        dbos = _find(rows, system, "saga3")
        if coord is not None and dbos is not None:
            ratio = coord["wf_per_s"] / max(1e-9, dbos["wf_per_s"])
            out.append(f"  saga3 >= {SAGA3_VS_DBOS:g}x {label}: {ratio:.2f}x -> {_verdict(ratio >= SAGA3_VS_DBOS)}")
    if coord is not None:
        out.append(f"  saga3 p99 < {SAGA3_P99_MS:g} ms: {coord['p99_ms']:.1f} ms "
                   f"-> {_verdict(coord['p99_ms'] < SAGA3_P99_MS)}")
    coord, bare = _find(rows, "coordinator", "saga3-io"), _find(rows, "bare", "saga3-io")
    if coord is not None and bare is not None:
        ratio = coord["wf_per_s"] / max(1e-9, bare["wf_per_s"])
        out.append(f"  saga3-io >= 1/3 of bare: {ratio:.3f} of bare -> {_verdict(ratio >= IO_VS_BARE)}")
    out.extend(_scale_target(rows))
    rec = _find(rows, "coordinator", "recovery")
    if rec is not None:
        line = f"  recovery (no target): {rec['n']:,} unfinished -> all completed {rec['elapsed_s']:.2f} s after " \
               f"cluster.start (start itself {rec.get('start_s', 0):.2f} s)"
        for system, label in DBOS_PEERS.items():
            dbos = _find(rows, system, "recovery")
            if dbos is not None:
                line += f"; {label} {dbos['elapsed_s']:.2f} s after launch"
        out.append(line)
    return out


def _scale_target(rows: list[dict[str, Any]]) -> list[str]:
    ns = sorted(r["n"] for r in rows if r["system"] == "coordinator" and r["workload"] == "scale")
    if len(ns) < 2:
        return []
    small, big = _find(rows, "coordinator", "scale", ns[0]), _find(rows, "coordinator", "scale", ns[-1])
    assert small is not None and big is not None
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
