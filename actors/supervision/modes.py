"""The supervisor's suspension state machine.

``normal`` takes new commands. A `Blocked` command (a service's circuit breaker is
open) sends it to ``suspended_slow``: intake closes and parked commands retry at the
slow interval. The first retry that succeeds moves it to ``suspended_fast`` (retries
at the fast interval drain the backlog); a new `Blocked` there goes back to slow.
When no parked command is left it returns to ``normal`` and intake reopens. An
operator's ``suspend`` holds it suspended until ``resume``.
"""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    NORMAL = "normal"
    SUSPENDED_SLOW = "suspended_slow"
    SUSPENDED_FAST = "suspended_fast"


class Signal(enum.StrEnum):
    BLOCKED = "blocked"
    RETRY_SUCCEEDED = "retry_succeeded"
    DRAINED = "drained"  # no parked command is left
    SUSPEND = "suspend"
    RESUME = "resume"


def next_mode(mode: Mode, signal: Signal, *, held: bool = False) -> Mode:
    """The mode after ``signal``; a held (operator-suspended) coordinator stays suspended."""
    if signal is Signal.BLOCKED or signal is Signal.SUSPEND:
        return Mode.SUSPENDED_SLOW
    if signal is Signal.RESUME:
        return Mode.NORMAL
    if signal is Signal.RETRY_SUCCEEDED:
        return Mode.SUSPENDED_FAST if mode is Mode.SUSPENDED_SLOW else mode
    if signal is Signal.DRAINED:
        return mode if held else Mode.NORMAL
    raise ValueError(f"unknown signal {signal!r}")
