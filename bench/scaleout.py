"""``python -m bench.scaleout [--quick] [--n N]``: one coordinator, then two side by side, on three Ray nodes.

A 3-node `ray.cluster_utils.Cluster` (a head and two workers, ``num_cpus`` each) runs
saga3 (three steps, in-process idempotent services, fsync on, the journal on local disk
under a temporary directory) through `cluster.client.Client`:

1. ONE coordinator (one namespace, one journal), driven alone;
2. TWO coordinators (two namespaces, each with its own journal directory), started fresh,
   each driven by a driver process of its own, both released at the same moment.

Each driver is a process of its own (``--drive``), connected to the cluster like any
other job, so the two loads share no Python interpreter. It runs a warm-up, says READY,
waits for GO on stdin, runs its ``n`` workflows ``in_flight`` at a time and prints one
JSON line: throughput, latency percentiles, its wall-clock start and end, and the
correctness counts of `bench.sagas.check`.

Placement: `Options` has no setting that pins a coordinator to a node, so Ray places
the supervisor and the journal leader (zero-CPU actors) and the coordinator spreads its
CommandActor pool over the alive nodes; where each actor landed is read back from the
GCS and printed.

CPU is that of every process of the cluster (GCS, raylets, actors, idle workers) and the
drivers, sampled with `bench.measure.Sampler` over the measured window only.

Every figure is printed; nothing is asserted about timings. All three nodes run on
this machine's cores: the ratio measured here is bounded by the CPU the nodes share,
not by the design (see `limits`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, cast

WARMUP = 200
QUICK_N = 3000
FULL_N = 20_000
IN_FLIGHT = 50
SLOTS = 128
COMMAND_ACTORS = 1
NODE_CPUS = 2


@dataclass(frozen=True)
class Leg:
    """One coordinator's load in one phase, as its driver measured it."""

    name: str
    n: int
    wf_per_s: float
    p50_ms: float
    p99_ms: float
    started: float
    """Wall-clock time (epoch s) its first measured submit went out."""
    ended: float
    """Wall-clock time its last measured result arrived."""
    errors: int = 0
    """Wrong results, keys served twice and keys never served (`bench.sagas.check`)."""


def summarize(one: Leg, pair: list[Leg], cpu_one_s: float | None = None,
              cpu_pair_s: float | None = None, cores: int = 2, host_busy_one: float | None = None,
              host_busy_pair: float | None = None) -> dict[str, Any]:
    """The scale-out figures from the measured legs (a pure function: no Ray, no clock).

    ``sum_wf_per_s`` adds the two coordinators' own rates (each over its own window);
    ``combined_wf_per_s`` is every workflow of the pair over the wall-clock span from the
    first start to the last end, and ``overlap`` the share of that span both ran at once,
    so a pair that did not really run together shows as such. ``busy_*`` is the CPU the
    phase used against what ``cores`` offer over its span; ``host_busy_*`` (given) is the
    whole machine's, other work on it included (near 1: the machine was full).
    """
    total = sum(leg.n for leg in pair)
    first = min(leg.started for leg in pair)
    last = max(leg.ended for leg in pair)
    span = max(1e-9, last - first)
    together = max(0.0, min(leg.ended for leg in pair) - max(leg.started for leg in pair))
    summed = sum(leg.wf_per_s for leg in pair)

    def per_wf(cpu: float | None, n: int) -> float | None:
        return cpu / n if cpu is not None and n > 0 else None

    def busy(cpu: float | None, seconds: float) -> float | None:
        return cpu / (seconds * cores) if cpu is not None and seconds > 0 and cores > 0 else None

    return {
        "one_wf_per_s": one.wf_per_s,
        "one_p50_ms": one.p50_ms,
        "one_p99_ms": one.p99_ms,
        "each_wf_per_s": [leg.wf_per_s for leg in pair],
        "each_p50_ms": [leg.p50_ms for leg in pair],
        "each_p99_ms": [leg.p99_ms for leg in pair],
        "sum_wf_per_s": summed,
        "combined_wf_per_s": total / span,
        "ratio": summed / one.wf_per_s if one.wf_per_s > 0 else 0.0,
        "overlap": together / span,
        "cpu_s_per_wf_one": per_wf(cpu_one_s, one.n),
        "cpu_s_per_wf_pair": per_wf(cpu_pair_s, total),
        "busy_one": busy(cpu_one_s, one.ended - one.started),
        "busy_pair": busy(cpu_pair_s, span),
        "host_busy_one": host_busy_one,
        "host_busy_pair": host_busy_pair,
        "errors": one.errors + sum(leg.errors for leg in pair),
    }


def limits(cores: int, nodes: int) -> str:
    """What this machine can and cannot show about scaling out."""
    return (f"All {nodes} Ray nodes of this run share the same {cores} CPU core(s): two coordinators "
            f"add supervisors and journals but no CPU, so the ratio above is bounded by the CPU the "
            f"nodes share, not by the design (two coordinators share nothing but the Ray cluster). "
            f"This run shows that two coordinators run side by side, each correct and durable, and what "
            f"a second one costs in CPU per workflow; it cannot show the gain of real nodes, where each "
            f"coordinator brings its own cores and disk.")


def report(summary: dict[str, Any], placement: dict[str, dict[str, str]] | None = None,
           cores: int = 2, nodes: int = 3, n: int | None = None) -> str:
    """The printed report of a run: the figures of `summarize`, the placement, the limits."""
    s = summary

    def cost(cpu_per_wf: float | None, busy: float | None, host: float | None) -> str:
        text = "CPU/wf n/a" if cpu_per_wf is None else f"CPU/wf {cpu_per_wf * 1e3:.2f} ms"
        use = ([f"this run {busy:.0%}"] if busy is not None else []) + \
              ([f"the machine {host:.0%}"] if host is not None else [])
        return f"{text} (CPU busy: {', '.join(use)} of {cores} cores)" if use else text

    head = "scale-out: saga3 through Client, fsync on, journal on local disk"
    if n is not None:
        head += f", {n:,} workflows per coordinator"
    lines = [head,
             f"  one coordinator:    {s['one_wf_per_s']:7,.0f} wf/s   p50 {s['one_p50_ms']:6.1f} ms   "
             f"p99 {s['one_p99_ms']:6.1f} ms   {cost(s['cpu_s_per_wf_one'], s['busy_one'], s['host_busy_one'])}"]
    rows = zip(s["each_wf_per_s"], s["each_p50_ms"], s["each_p99_ms"], strict=True)
    for i, (rate, p50, p99) in enumerate(rows):
        name = "ab"[i] if i < 2 else str(i)
        lines.append(f"  two, coordinator {name}: {rate:7,.0f} wf/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    pair_cost = cost(s["cpu_s_per_wf_pair"], s["busy_pair"], s["host_busy_pair"])
    lines += [f"  two, sum:           {s['sum_wf_per_s']:7,.0f} wf/s   {pair_cost}",
              f"  two, wall clock:    {s['combined_wf_per_s']:7,.0f} wf/s   (every workflow of the pair over its "
              f"span; both ran at once for {s['overlap']:.0%} of it)",
              f"  ratio sum/one:      {s['ratio']:7.2f}x",
              f"  correctness:        {'ok' if s['errors'] == 0 else str(s['errors']) + ' ERRORS'} "
              f"(wrong results, keys served twice or never)"]
    if placement:
        lines.append("  placement (where Ray put each coordinator's actors):")
        for coordinator, roles in placement.items():
            lines.append(f"    {coordinator}: " + ", ".join(f"{role} on {node}" for role, node in roles.items()))
    lines += textwrap.wrap(limits(cores, nodes), width=100, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)


# --- the driver process ---------------------------------------------------------------

def drive(args: argparse.Namespace) -> None:
    """``--drive``: one coordinator's load, released by GO on stdin; one JSON line out."""
    import ray

    import cluster
    from bench.coordinator import _drive
    from bench.sagas import check, keylog_path_for

    ray.init(address=args.address, namespace=f"drive-{args.namespace}", log_to_driver=False,
             configure_logging=False)
    sup = cluster.connect(args.namespace)
    asyncio.run(_drive(sup, WARMUP, args.in_flight, 0, "warm", "client"))
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return
    started = time.time()
    run = asyncio.run(_drive(sup, args.n, args.in_flight, 0, "wf", "client"))
    ended = time.time()
    stats = run.stats()
    checks = check(run.results, keylog_path_for(args.storage))
    leg = Leg(args.namespace, args.n, stats["wf_per_s"], stats["p50_ms"], stats["p99_ms"], started, ended,
              sum(checks.values()))
    print(json.dumps(asdict(leg)), flush=True)


# --- the parent -------------------------------------------------------------------------

class ScaleOut:
    """The 3-node cluster of a run and the coordinators started on it."""

    def __init__(self, root: str) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.root = root
        self.cluster: Any = cast(Any, Cluster)(initialize_head=True,
                                               head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
        self.workers: list[Any] = [self.cluster.add_node(num_cpus=NODE_CPUS) for _ in range(2)]
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, namespace="scaleout", log_to_driver=False, configure_logging=False)
        self.node_names = {self.cluster.head_node.node_id: "head"}
        self.node_names.update({node.node_id: f"worker-{i + 1}" for i, node in enumerate(self.workers)})

    def roots(self) -> list[int]:
        """This process (and so the drivers it starts) and every process of the cluster's nodes."""
        pids = [os.getpid()]
        for node in self.cluster.list_all_nodes():
            for infos in node.all_processes.values():
                pids += [info.process.pid for info in infos if info.process is not None]
        return pids

    def options(self, name: str, in_flight: int) -> Any:
        from bench.coordinator import CoordConfig, RayHost

        run_dir = os.path.join(self.root, name)
        os.makedirs(run_dir)
        return RayHost.options(f"scaleout-{name}-{uuid.uuid4().hex[:6]}", run_dir, CoordConfig(COMMAND_ACTORS, SLOTS),
                               max_cmds=max(100, 2 * in_flight))

    def placement(self, sup: Any) -> dict[str, str]:
        """The node of the coordinator's supervisor, journal leader and CommandActors, from the GCS."""
        import ray

        def node_of(handle: Any) -> str:
            try:
                info = ray._private.state.actors(handle._actor_id.hex())
                node = info.get("Address", {}).get("NodeID", "")
            except Exception:  # a debugging API: say unknown rather than fail the run
                return "unknown"
            return self.node_names.get(node, node[:8] or "unknown")

        actors = ray.get(sup.actors.remote())
        out = {"supervisor": node_of(sup), "journal": node_of(actors["log"][0])}
        commands = [node_of(h) for h in actors["command"]]
        out["CommandActors"] = "+".join(commands) if commands else "none"
        return out

    def start(self, options: Any) -> Any:
        import cluster

        return cluster.start(options)

    def stop(self, namespace: str) -> None:
        import cluster

        cluster.stop(namespace)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def _busy(before: Any, after: Any) -> float:
    """The share of the machine's CPU time between two `psutil.cpu_times` that was not idle."""
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    counted = [f for f in after._fields if f not in ("guest", "guest_nice")]  # already within user and nice
    total = sum(getattr(after, f) - getattr(before, f) for f in counted)
    return max(0.0, 1.0 - idle / total) if total > 0 else 0.0


def _spawn(address: str, namespace: str, storage: str, n: int, in_flight: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.scaleout", "--drive", namespace, "--address", address,
           "--storage", storage, "--n", str(n), "--in-flight", str(in_flight)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _await_line(proc: subprocess.Popen[str], want: str | None = None) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if want is None and line.startswith("{"):
            return line
        if want is not None and line == want:
            return line
    raise RuntimeError(f"driver {proc.args!r} ended (exit {proc.wait()}) before {want or 'its result'}")


def run_phase(host: ScaleOut, coordinators: list[tuple[str, Any]], n: int,
              in_flight: int) -> tuple[list[Leg], float, float]:
    """Drive ``coordinators`` (name, options) at once, a driver process each: their legs, the CPU
    seconds of the cluster and the drivers, and the whole machine's busy share over the phase."""
    from bench.measure import Sampler, psutil

    address = host.cluster.address
    procs = [_spawn(address, opts.namespace, opts.storage, n, in_flight) for _, opts in coordinators]
    try:
        for proc in procs:
            _await_line(proc, "READY")
        sampler = Sampler(host.roots())
        sampler.start()
        machine = psutil.cpu_times()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        legs = []
        for (name, _), proc in zip(coordinators, procs, strict=True):
            fields = json.loads(_await_line(proc))
            legs.append(Leg(**{**fields, "name": name}))
        after = psutil.cpu_times()
        sampler.stop()
        return legs, sampler.cpu_total(), _busy(machine, after)
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()  # a driver still waiting for GO reads EOF and ends
            try:
                proc.wait(timeout=30)  # a driver ends once it printed its line
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_N:,} workflows per coordinator (else {FULL_N:,})")
    p.add_argument("--n", type=int, help="workflows per coordinator and phase")
    p.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="workflows outstanding per driver")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--drive", metavar="NAMESPACE", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--storage", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.drive:
        args.namespace = args.drive
        drive(args)
        return
    n = args.n or (QUICK_N if args.quick else FULL_N)
    root = tempfile.mkdtemp(prefix="scaleout-")
    host: ScaleOut | None = None
    try:
        t0 = time.perf_counter()
        host = ScaleOut(root)
        print(f"3-node cluster up in {time.perf_counter() - t0:.1f} s", flush=True)

        solo = host.options("one", args.in_flight)
        sup = host.start(solo)
        placement = {"one": host.placement(sup)}
        (one,), cpu_one, host_one = run_phase(host, [("one", solo)], n, args.in_flight)
        print(f"one coordinator: {one.wf_per_s:,.0f} wf/s", flush=True)
        host.stop(solo.namespace)
        time.sleep(2.0)  # its processes end before the pair starts

        pair = [("a", host.options("a", args.in_flight)), ("b", host.options("b", args.in_flight))]
        for name, opts in pair:
            placement[name] = host.placement(host.start(opts))
        legs, cpu_pair, host_pair = run_phase(host, pair, n, args.in_flight)
        for _, opts in pair:
            host.stop(opts.namespace)

        cores = os.cpu_count() or 1
        summary = summarize(one, legs, cpu_one, cpu_pair, cores, host_one, host_pair)
        print(report(summary, placement, cores=cores, nodes=3, n=n))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"n": n, "in_flight": args.in_flight, "summary": summary, "placement": placement,
                           "legs": [asdict(leg) for leg in (one, *legs)]}, f, indent=2)
    finally:
        if host is not None:
            host.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
