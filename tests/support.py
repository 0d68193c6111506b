"""Helpers for tests on a real Ray instance: a coordinator per test, waiting on conditions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

import cluster
from cluster import Options

FAST = {"slow_retry_interval_s": 0.1, "fast_retry_interval_s": 0.0, "jitter_s": 0.02, "gateway": None,
        "admission_timeout_s": 5.0}


def wait_for(cond: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond`` until truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Coordinator:
    """A coordinator started for one test, stopped after it (its journal stays)."""

    def __init__(self, storage: Path | str, **kw: Any) -> None:
        self.options = Options(storage=str(storage), namespace=f"t-{uuid.uuid4().hex[:8]}", **{**FAST, **kw})
        self.sup = cluster.start(self.options)

    def actors(self) -> dict[str, list[Any]]:
        handles: dict[str, list[Any]] = ray.get(self.sup.actors.remote())
        return handles

    def restart(self) -> None:
        cluster.stop(self.options.namespace)
        self.sup = cluster.start(self.options)

    def stop(self) -> None:
        cluster.stop(self.options.namespace)


