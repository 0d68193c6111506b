"""The deterministic simulation as part of the test suite: a bounded set of seeds.

Seeds run in two subprocesses (string hashing pinned, as ``python -m tests.sim`` pins
it, so a seed here is the same run as its replay there). A seed whose failure is a
defect already reported and not yet fixed is listed in `KNOWN` with the reason; it is
expected to fail (strict: once fixed, it passes and its entry must go).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR_SEEDS = 300
REPLICA_SEEDS = 200
STEPS = 200

KNOWN: dict[tuple[str, int], str] = {}
"""Seeds that fail for a defect still being fixed, each with its reason: strict xfails."""

REGRESSIONS: tuple[tuple[str, int], ...] = (
    ("coordinator", 322), ("coordinator", 536), ("coordinator", 678), ("coordinator", 965), ("coordinator", 966),
    ("coordinator", 1006), ("coordinator", 1402), ("coordinator", 1541), ("coordinator", 1954),
    ("replica", 367), ("replica", 719), ("replica", 786), ("replica", 1113), ("replica", 1604),
)
"""Seeds beyond the ranges run that once showed a defect since fixed: run on every CI."""


def _run(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONHASHSEED="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen([sys.executable, "-m", "tests.sim", "--json", "--steps", str(STEPS), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, int], dict[str, Any]]:
    half = COORDINATOR_SEEDS // 2
    procs = [_run(["--kind", "coordinator", "--seeds", str(half)]),
             _run(["--kind", "coordinator", "--first", str(half), "--seeds", str(COORDINATOR_SEEDS - half)]),
             ]
    replica = _run(["--kind", "replica", "--seeds", str(REPLICA_SEEDS)])
    extra = [_run(["--kind", kind, "--seed", str(seed)]) for kind, seed in _extra()]
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for proc in [*procs, replica, *extra]:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode in (0, 1) and stdout, f"the simulation crashed:\n{stderr[-3000:]}"
        for line in stdout.splitlines():
            r = json.loads(line)
            out[(r["kind"], r["seed"])] = r
    return out


def _extra() -> list[tuple[str, int]]:
    """Known and regression seeds beyond the ranges run: each shows a defect the ranges do not reach."""
    n = {"coordinator": COORDINATOR_SEEDS, "replica": REPLICA_SEEDS}
    return sorted({k for k in [*KNOWN, *REGRESSIONS] if k[1] >= n[k[0]]})


def _cases() -> list[Any]:
    cases = []
    for kind, n in (("coordinator", COORDINATOR_SEEDS), ("replica", REPLICA_SEEDS)):
        for seed in [*range(n), *(s for k, s in _extra() if k == kind)]:
            reason = KNOWN.get((kind, seed))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(kind, seed, marks=marks, id=f"{kind}-{seed}"))
    return cases


@pytest.mark.parametrize(("kind", "seed"), _cases())
def test_seed(results: dict[tuple[str, int], dict[str, Any]], kind: str, seed: int) -> None:
    r = results[(kind, seed)]
    faults = "\n".join(f"  {f}" for f in r["faults"][:40])
    broken = "\n".join(f"  {v[:500]}" for v in r["violations"])
    assert not r["violations"], (f"{kind} seed {seed} broke invariants (replay: python -m tests.sim --kind {kind} "
                                 f"--seed {seed} --trace)\nfaults:\n{faults}\nviolations:\n{broken}")


def test_a_seed_replays_exactly() -> None:
    proc = _run(["--seed", "3", "--seed", "3", "--seed", "185", "--seed", "185", "--steps", "120"])
    stdout, stderr = proc.communicate(timeout=120)
    digests: dict[tuple[str, int], set[str]] = {}
    for line in stdout.splitlines():
        r = json.loads(line)
        digests.setdefault((r["kind"], r["seed"]), set()).add(r["digest"])
    assert len(digests) == 4, stderr[-2000:]
    assert all(len(d) == 1 for d in digests.values()), digests
