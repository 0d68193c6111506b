"""What a run costs: a closed-loop driver with latencies, and CPU and memory of processes.

`closed_loop` keeps ``in_flight`` workflows outstanding until ``n`` have finished,
timing each from the start of its submission to the arrival of its result.

`Sampler` watches a set of processes (roots and all their descendants, found again
every few samples so processes started mid-run count too) from a background thread:
CPU seconds consumed during the run, per process label and in total, and the peak
of their summed RSS above the level at the start.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import psutil  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # Ray ships psutil in its own third-party directory, on sys.path once ray is imported
    importlib.import_module("ray")
    import psutil  # type: ignore[import-untyped,unused-ignore]

__all__ = ["OneWorkflow", "Run", "Sampler", "closed_loop", "cost_fields", "label", "psutil"]


@dataclass
class Run:
    """A finished closed-loop run: results by workflow id, latencies and timings."""

    results: dict[str, Any] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    started_at: float = 0.0
    elapsed_s: float = 0.0

    def stats(self) -> dict[str, float]:
        lat = sorted(self.latencies_s)
        n = len(lat)
        if n == 0:
            return {"wf_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
        return {
            "wf_per_s": n / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            "p50_ms": 1000 * lat[min(n - 1, n // 2)],
            "p99_ms": 1000 * lat[min(n - 1, (99 * n) // 100)],
            "mean_ms": 1000 * sum(lat) / n,
        }

    def window_rates(self, fraction: float = 0.1) -> tuple[float, float]:
        """Workflows/s over the first and the last ``fraction`` of completions."""
        done = sorted(self.done_at)
        k = max(2, int(len(done) * fraction))
        if len(done) < 2 * k:
            return 0.0, 0.0
        first = (k - 1) / max(1e-9, done[k - 1] - self.started_at) if done[k - 1] > self.started_at else 0.0
        last = (k - 1) / max(1e-9, done[-1] - done[-k])
        return first, last


OneWorkflow = Callable[[int], Awaitable[tuple[str, Any]]]


async def closed_loop(n: int, in_flight: int, one: OneWorkflow) -> Run:
    """Run ``one(i)`` for i in 0..n-1 with ``in_flight`` outstanding at a time."""
    run = Run()
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            wid, result = await one(i)
            t1 = time.perf_counter()
            run.latencies_s.append(t1 - t0)
            run.done_at.append(t1)
            run.results[wid] = result

    run.started_at = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))
    run.elapsed_s = time.perf_counter() - run.started_at
    return run


def label(proc: psutil.Process) -> str:
    """A short name: ``ray::SupervisorActor`` (actor name and method stripped), ``raylet``, ``python``."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    head = str(cmd[0] if cmd else name)
    if head.startswith("ray::"):  # ray::[actor name:]Class.method
        return "ray::" + head.removeprefix("ray::").split()[0].split(".")[0].split(":")[-1]
    return str(name)


class Sampler:
    """CPU and RSS of ``roots`` and their descendants, sampled every ``interval_s``."""

    def __init__(self, roots: list[int], interval_s: float = 0.5, refresh_every: int = 4) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.refresh_every = refresh_every
        self._known: list[psutil.Process] = []
        self._samples = 0
        self._base_cpu: dict[tuple[int, float], float] = {}
        self._last_cpu: dict[tuple[int, float], float] = {}
        self._labels: dict[tuple[int, float], str] = {}
        self._last_rss: dict[tuple[int, float], int] = {}
        self.base_rss = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _procs(self) -> list[psutil.Process]:
        """The roots and their descendants, from one pass over the process table."""
        children: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc)
        found: dict[int, psutil.Process] = {}
        todo = [pid for pid in self.roots if psutil.pid_exists(pid)]
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            try:
                found[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            todo.extend(child.pid for child in children.get(pid, []))
        return list(found.values())

    def _sample(self, first: bool) -> None:
        if first or self._samples % self.refresh_every == 0:
            self._known = self._procs()
        self._samples += 1
        rss = 0
        for proc in self._known:
            try:
                if proc.name() == "py-spy":
                    continue
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    cpu = times.user + times.system
                    proc_rss = proc.memory_info().rss
                    rss += proc_rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if key not in self._labels:
                self._labels[key] = label(proc)
                self._base_cpu[key] = cpu if first else 0.0
            elif self._labels[key] in ("ray::IDLE", "?"):
                self._labels[key] = label(proc)  # an idle worker became an actor
            self._last_cpu[key] = cpu
            self._last_rss[key] = proc_rss
        if first:
            self.base_rss = rss
        self.peak_rss = max(self.peak_rss, rss)

    def start(self) -> None:
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(first=False)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(first=False)

    def cpu_by_label(self) -> dict[str, float]:
        """CPU seconds during the run by process label; profilers' own CPU left out."""
        out: dict[str, float] = {}
        for key, last in self._last_cpu.items():
            name = self._labels[key]
            if name == "py-spy":
                continue
            out[name] = out.get(name, 0.0) + max(0.0, last - self._base_cpu[key])
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def rss_by_label(self) -> dict[str, int]:
        """RSS at the last sample by process label (processes still alive then)."""
        out: dict[str, int] = {}
        for key, rss in self._last_rss.items():
            if psutil.pid_exists(key[0]):
                out[self._labels[key]] = out.get(self._labels[key], 0) + rss
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def cpu_total(self) -> float:
        return sum(self.cpu_by_label().values())

    def peak_rss_delta(self) -> int:
        return max(0, self.peak_rss - self.base_rss)

    def pids(self, name: str) -> list[int]:
        """Live pids whose label is ``name`` (e.g. ``ray::CommandActor``)."""
        return [pid for (pid, _), lab in self._labels.items() if lab == name and psutil.pid_exists(pid)]


def cost_fields(sampler: Sampler, n: int, in_flight: int) -> dict[str, Any]:
    """The per-workflow cost fields of a result row."""
    return {
        "cpu_s_per_wf": sampler.cpu_total() / n if n else 0.0,
        "peak_mem_per_inflight_bytes": sampler.peak_rss_delta() // max(1, in_flight),
        "cpu_by_process_s": {k: round(v, 3) for k, v in sampler.cpu_by_label().items() if v >= 0.005},
        "rss_end_by_process_mib": {k: round(v / 2**20, 1) for k, v in sampler.rss_by_label().items()},
    }
