"""Shared fixtures: one real Ray instance for the session; a namespace and storage per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # A Ray instance of its own, never one already running on the host (a `ray start`
    # head, another test run): "local" starts a new one whatever RAY_ADDRESS says.
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="tests", log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture
def coordinator(ray_session: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from tests.support import Coordinator

    made: list[Coordinator] = []

    def make(**kw: Any) -> Coordinator:
        c = Coordinator(tmp_path / f"journal-{len(made)}", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
