"""Placeholder: the replicated journal simulation."""
from __future__ import annotations

from tests.sim.sim import Result


def run_replica_seed(seed: int, steps: int, keep_trace: bool = False) -> Result:
    return Result(seed, "replica", [], [], "")
