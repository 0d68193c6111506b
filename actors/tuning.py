"""Tuning of the actors' processes for the hot path: `hot` marks an actor method that
every workflow calls, `tune_gc` sets the garbage collector's thresholds.

Ray records a task event per call (for its dashboard and state API); on the hot path
that costs CPU on both sides and GCS memory that grows with every workflow run.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar, cast

import ray

F = TypeVar("F", bound=Callable[..., Any])


def hot(method: F) -> F:
    return cast(F, cast(Any, ray.method)(enable_task_events=False)(method))


def tune_gc() -> None:
    """Collect young objects less often: an actor allocates many short-lived ones per
    call, and the default thresholds run a collection every few hundred calls."""
    gc.set_threshold(50_000, 20, 100)
