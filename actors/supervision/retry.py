"""The retry schedule: deterministic jitter, backoff, and a timer heap.

The jitter of a retry is derived from (workflow id, attempt), so a replay of the
journal computes the same schedule and tests can predict it.
"""

from __future__ import annotations

import hashlib
import heapq
import random


def jitter(workflow_id: str, attempt: int, jitter_s: float) -> float:
    """A draw from U(-jitter_s, +jitter_s), the same for the same (workflow id, attempt)."""
    if jitter_s <= 0:
        return 0.0
    seed = int.from_bytes(hashlib.blake2b(f"{workflow_id}\x00{attempt}".encode(), digest_size=8).digest(), "big")
    return random.Random(seed).uniform(-jitter_s, jitter_s)


def retry_delay(interval_s: float, jitter_s: float, workflow_id: str, attempt: int) -> float:
    """Seconds to wait before the next attempt: interval plus jitter, clamped at 0."""
    return max(0.0, interval_s + jitter(workflow_id, attempt, jitter_s))


def backoff_interval(initial_s: float, backoff: float, max_s: float, attempt: int) -> float:
    """The wait after ``attempt`` parked: ``initial_s * backoff ** (attempt - 1)``, at most ``max_s``."""
    try:
        return min(initial_s * backoff ** max(attempt - 1, 0), max_s)
    except OverflowError:  # the backoff grew past any float: long past max_s
        return max_s


class TimerHeap:
    """Workflow ids keyed by due time; the latest push for an id wins."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._counter = 0

    def push(self, due: float, workflow_id: str) -> None:
        self._due[workflow_id] = due
        self._counter += 1
        heapq.heappush(self._heap, (due, self._counter, workflow_id))

    def discard(self, workflow_id: str) -> None:
        self._due.pop(workflow_id, None)

    def pop_due(self, now: float) -> list[str]:
        """Remove and return the ids due at or before ``now``, earliest first."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            due, _, wid = heapq.heappop(self._heap)
            if self._due.get(wid) == due:
                del self._due[wid]
                out.append(wid)
        return out

    def next_due(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._due)
