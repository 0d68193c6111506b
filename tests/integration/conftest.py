"""One real Ray instance for the integration layer; a namespace and storage per test."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import cluster
from cluster import Options

FAST = {"slow_retry_interval_s": 0.1, "fast_retry_interval_s": 0.0, "jitter_s": 0.02, "gateway": None,
        "admission_timeout_s": 5.0}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ctx = ray.init(num_cpus=2, include_dashboard=False, namespace="tests", log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


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


@pytest.fixture
def coordinator(ray_session: str, tmp_path: Path) -> Iterator[Callable[..., Coordinator]]:
    made: list[Coordinator] = []

    def make(**kw: Any) -> Coordinator:
        c = Coordinator(tmp_path / f"journal-{len(made)}", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
