"""`RetryPolicy`: how a command's parked attempts are retried, and when they stop.

A command names its policy as a class attribute, ``retry: ClassVar[RetryPolicy]``.
The runner, which has the command's class, sends the policy's fields (`to_wire`)
with its report of a parked attempt, so the supervisor applies it without importing
user code. The jitter of each retry stays derived from (workflow id, attempt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

ON_EXHAUSTED = ("fail", "pause")


@dataclass(frozen=True)
class RetryPolicy:
    """The retry schedule of a command's attempts that raise `Delayed` or `Blocked`.

    The wait before retry *n* (after attempt *n* parked) is
    ``min(initial_interval_s * backoff ** (n - 1), max_interval_s)`` plus the
    coordinator's jitter. Retries of ``compensate`` follow the schedule but are never
    exhausted: what was done is undone, however late.
    """

    initial_interval_s: float
    """Seconds before the first retry."""
    backoff: float
    """Factor (>= 1) by which each wait grows over the previous one."""
    max_interval_s: float
    """The longest wait, whatever the backoff (>= ``initial_interval_s``)."""
    max_attempts: int | None = None
    """Attempts in all (the first included) before the policy is exhausted; None: no limit."""
    non_retryable: tuple[str, ...] = ()
    """Error type names (``QualName`` or ``module.QualName``) that fail the workflow, and
    compensate it, even when raised from `Delayed` or `Blocked`."""
    on_exhausted: Literal["fail", "pause"] = "fail"
    """What happens when ``max_attempts`` or the command's ``deadline_s`` runs out:
    ``"fail"`` fails and compensates it; ``"pause"`` parks it, state ``paused``, until
    an operator's ``resume_workflow``."""

    def __post_init__(self) -> None:
        for name in ("initial_interval_s", "backoff", "max_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")
        if self.backoff < 1:
            raise ValueError(f"RetryPolicy.backoff must be >= 1, got {self.backoff!r}")
        if self.max_interval_s < self.initial_interval_s:
            raise ValueError(f"RetryPolicy.max_interval_s ({self.max_interval_s}) is below "
                             f"initial_interval_s ({self.initial_interval_s})")
        if self.max_attempts is not None and (
                isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise ValueError(f"RetryPolicy.max_attempts must be None or an int >= 1, got {self.max_attempts!r}")
        if isinstance(self.non_retryable, str) or not all(isinstance(n, str) and n for n in self.non_retryable):
            raise ValueError(f"RetryPolicy.non_retryable must be a tuple of type names, got {self.non_retryable!r}")
        object.__setattr__(self, "non_retryable", tuple(self.non_retryable))
        if self.on_exhausted not in ON_EXHAUSTED:
            raise ValueError(f"RetryPolicy.on_exhausted must be one of {ON_EXHAUSTED}, got {self.on_exhausted!r}")

    def to_wire(self) -> dict[str, Any]:
        """The fields the supervisor needs, as msgpack data."""
        return {"initial_interval_s": self.initial_interval_s, "backoff": self.backoff,
                "max_interval_s": self.max_interval_s, "max_attempts": self.max_attempts,
                "on_exhausted": self.on_exhausted}

    def refuses(self, exc: BaseException) -> bool:
        """Whether ``exc``, or an error it was raised from, is of a ``non_retryable`` type."""
        if not self.non_retryable:
            return False
        names = set(self.non_retryable)
        seen: set[int] = set()
        cur: BaseException | None = exc
        while cur is not None and id(cur) not in seen:
            for cls in type(cur).__mro__:
                if cls.__qualname__ in names or f"{cls.__module__}.{cls.__qualname__}" in names:
                    return True
            seen.add(id(cur))
            cur = cur.__cause__
        return False


COORDINATOR_SCHEDULE = RetryPolicy(0.0, 1.0, 0.0)
"""The default ``Command.retry``, told apart by identity: the coordinator's own
schedule (``Options.slow_retry_interval_s``, or ``fast_retry_interval_s`` in fast
mode), no attempt limit, failing when the command's ``deadline_s`` passes."""
