"""py-spy on the coordinator's actors while a run goes on, and a summary of where they spend CPU.

`Profiler` starts one ``py-spy record --format raw --gil`` per actor process (non-blocking;
only the thread holding the GIL is sampled, so samples are Python CPU time) and stops them with SIGINT at the
end of the run. `hot_spots` folds the collapsed stacks into self and inclusive
sample counts per function, line numbers dropped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

RATE_HZ = 100
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^)]*?)(?::\d+)?\)$")


def _py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Profiler:
    """Records ``pids`` (by process label) with py-spy into ``out_dir``; a no-op when it is None."""

    def __init__(self, out_dir: str | None, pids: dict[str, list[int]], tag: str) -> None:
        self.out_dir = out_dir
        self.procs: list[tuple[str, int, str, subprocess.Popen[bytes]]] = []
        self.started = time.monotonic()
        self.seconds = 0.0
        exe = _py_spy()
        if out_dir is None:
            return
        if exe is None:
            print("profile: py-spy not found; pip install py-spy", file=sys.stderr)
            return
        os.makedirs(out_dir, exist_ok=True)
        for name, group in pids.items():
            for pid in group:
                path = os.path.join(out_dir, f"{tag}-{name.removeprefix('ray::')}-{pid}.txt")
                cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE_HZ),
                       "--gil", "--nonblocking", "--output", path]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.procs.append((name, pid, path, proc))

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started
        for _, _, _, proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for _, _, _, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def summary(self, top: int = 12) -> list[dict[str, Any]] | None:
        if not self.procs:
            return None
        out = []
        for name, pid, path, _ in self.procs:
            if not os.path.exists(path):
                continue
            total, self_top, incl_top, packages = hot_spots(path, top)
            out.append({"process": name, "pid": pid, "samples": total, "file": path,
                        "gil_share": round(total / max(1.0, RATE_HZ * self.seconds), 3),
                        "self": self_top, "inclusive": incl_top, "self_by_package": packages})
        return out


NATIVE = "<no Python frame: Ray's C++/Cython>"
_PLUMBING = ("Thread._bootstrap", "Thread.run", "BaseEventLoop.run_forever", "BaseEventLoop._run_once",
             "Handle._run", "<module>", "async_span_wrapper", "auto_init_wrapper", NATIVE)


def _frames(stack: str) -> list[tuple[str, str]]:
    """``(function (file), package)`` per frame, root first; package is the file's top directory."""
    frames = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        if m is None:
            frames.append((raw.strip() or NATIVE, "native"))
            continue
        path = m["file"]
        package = path.split("/")[0] if "/" in path else "stdlib"
        frames.append((f"{m['fn']} ({os.path.basename(path)})", package))
    return frames


def hot_spots(path: str, top: int = 12) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], dict[str, int]]:
    """Total samples, the ``top`` functions by self and by inclusive samples, self samples by package."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    by_package: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if m is None:
                continue
            count = int(m["count"])
            frames = _frames(m["stack"]) or [(NATIVE, "native")]
            total += count
            leaf, package = frames[-1]
            self_count[leaf] = self_count.get(leaf, 0) + count
            by_package[package] = by_package.get(package, 0) + count
            for fn in {fn for fn, _ in frames if not any(p in fn for p in _PLUMBING)}:
                incl_count[fn] = incl_count.get(fn, 0) + count
    by_self = sorted(self_count.items(), key=lambda kv: -kv[1])[:top]
    by_incl = sorted(incl_count.items(), key=lambda kv: -kv[1])[:top * 2]
    return total, by_self, by_incl, dict(sorted(by_package.items(), key=lambda kv: -kv[1]))


def print_summary(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        for prof in r.get("profile") or []:
            n = max(1, prof["samples"])
            print(f"\n== {r['workload']} [{r.get('config', '')}] {prof['process']} pid {prof['pid']}: "
                  f"{prof['samples']} GIL samples, GIL held ~{100 * prof['gil_share']:.0f}% of the run")
            print("  by package: " + "; ".join(f"{p} {100 * c / n:.0f}%" for p, c in prof["self_by_package"].items()))
            print("  self:       " + "; ".join(f"{fn} {100 * c / n:.0f}%" for fn, c in prof["self"][:8]))
            print("  inclusive:  " + "; ".join(f"{fn} {100 * c / n:.0f}%" for fn, c in prof["inclusive"][:12]))
