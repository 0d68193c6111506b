"""``python -m tests.sim --seeds N [--first F] [--steps K]`` or ``--seed S [--trace]``.

Runs seeds of the coordinator simulation and of the replicated journal's; prints each
failing seed with its fault schedule and broken invariants, and a summary. ``--seed``
replays one seed exactly (the trace digest is printed: a replay prints the same one).
String hashing is pinned (PYTHONHASHSEED=0), as set iteration order reaches scheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from tests.sim.replication import run_replica_seed
from tests.sim.sim import Result, run_seed


def _pin_hash_seed() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "tests.sim", *sys.argv[1:]])


def run(seed: int, steps: int, kind: str, trace: bool = False) -> Result:
    if kind == "replica":
        return run_replica_seed(seed, steps, keep_trace=trace)
    return run_seed(seed, steps, keep_trace=trace)


def show(result: Result, verbose: bool) -> None:
    status = "ok" if result.ok else "FAIL"
    print(f"{result.kind} seed {result.seed}: {status} digest {result.digest} {result.stats}")
    if result.trace:
        print("\n".join(result.trace))
    if not result.ok or verbose:
        print("  faults:")
        for f in result.faults[:60]:
            print(f"    {f}")
        if len(result.faults) > 60:
            print(f"    ... {len(result.faults) - 60} more")
        print("  violations:")
        for v in result.violations:
            print(f"    {v[:600]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim")
    p.add_argument("--seeds", type=int, default=0, help="run this many seeds")
    p.add_argument("--first", type=int, default=0, help="the first seed of --seeds")
    p.add_argument("--seed", type=int, action="append", help="replay this seed (repeatable)")
    p.add_argument("--steps", type=int, default=200, help="workload operations per seed")
    p.add_argument("--kind", choices=["coordinator", "replica", "both"], default="both")
    p.add_argument("--trace", action="store_true", help="print the whole trace of each seed")
    p.add_argument("--verbose", action="store_true", help="print faults of passing seeds too")
    p.add_argument("--json", action="store_true", help="one JSON line per seed, for tests")
    args = p.parse_args(argv)
    _pin_hash_seed()
    seeds = args.seed or list(range(args.first, args.first + args.seeds))
    kinds = ["coordinator", "replica"] if args.kind == "both" else [args.kind]
    failed, started = 0, time.perf_counter()
    for seed in seeds:
        for kind in kinds:
            result = run(seed, args.steps, kind, trace=args.trace)
            failed += not result.ok
            if args.json:
                print(json.dumps(asdict(result)), flush=True)
            elif not result.ok or args.trace or args.verbose or args.seed:
                show(result, args.verbose)
    if not args.json:
        print(f"{len(seeds)} seeds x {len(kinds)}: {failed} failed in {time.perf_counter() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
