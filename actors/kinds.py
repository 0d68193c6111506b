"""The record kinds, and the shape of a journaled error: the vocabulary the records
(`actors.records`) and the messages between actors (`actors.messages`) share."""

from __future__ import annotations

import enum
from typing import Any

Error = dict[str, Any]
"""An error as journaled: ``{"type", "message", "traceback"}`` (and ``compensation_error``)."""


class Kind(enum.StrEnum):
    EPOCH = "epoch"
    SUBMITTED = "submitted"
    STARTED = "started"
    OUTCOME = "outcome"
    COMPENSATION = "compensation"
    COMPENSATING = "compensating"
    DELAYED = "delayed"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    SIGNAL = "signal"
    EVENT = "event"
    EXPIRED = "expired"
    CANCEL = "cancel"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    MODE = "mode"
    SNAPSHOT = "snapshot"
    DEPLOYED = "deployed"


KINDS = frozenset(k.value for k in Kind)
TERMINAL = frozenset({Kind.COMPLETED, Kind.FAILED, Kind.COMPENSATED, Kind.CANCELLED, Kind.TERMINATED})
PARKED = frozenset({Kind.DELAYED, Kind.BLOCKED, Kind.PAUSED, Kind.SLEEPING, Kind.WAITING})
