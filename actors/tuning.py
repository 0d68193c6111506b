"""Tuning of the actors' processes for the hot path: `hot` marks an actor method that
every workflow calls, `tune_gc` sets the garbage collector's thresholds,
`release_memory` gives freed heap back to the system.

Ray records a task event per call (for its dashboard and state API); on the hot path
that costs CPU on both sides and GCS memory that grows with every workflow run.
"""

from __future__ import annotations

import ctypes
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


def release_memory() -> None:
    """Give the heap memory freed since the last call back to the system (glibc's
    ``malloc_trim``; nothing elsewhere). The journal's large, short-lived buffers
    (segments sealed, indexes and snapshots encoded) would otherwise hold its resident
    size at the peak they reached, growing it with every segment."""
    if _trim is not None:
        _trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return cast(Callable[[int], int], ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()
