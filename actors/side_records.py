"""Records besides those of a workflow's attempts, re-exported by `actors.records`:
signals and events (``signal``, ``event``), ``epoch``, ``mode`` and ``deployed``.

A signal is journaled by the supervisor once per (workflow, name): the first payload
wins. An event is journaled by the runner at each ``ctx.set_event``: the last value wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Signalled:
    """Written by the supervisor: an operator's signal ``name`` to a workflow, with its payload."""

    workflow_id: str
    name: str
    payload: Any
    t: float
    kind: ClassVar[str] = "signal"

    def to_wire(self) -> dict[str, Any]:
        return {"k": "signal", "w": self.workflow_id, "name": self.name, "payload": self.payload, "t": self.t}

    def note(self, signals: dict[str, Any], events: dict[str, Any]) -> None:
        signals.setdefault(self.name, self.payload)  # the first payload wins


@dataclass(frozen=True, slots=True)
class EventSet:
    """Written by the runner: ``ctx.set_event(key, value)`` of a workflow."""

    workflow_id: str
    key: str
    value: Any
    t: float
    kind: ClassVar[str] = "event"

    def to_wire(self) -> dict[str, Any]:
        return {"k": "event", "w": self.workflow_id, "key": self.key, "value": self.value, "t": self.t}

    def note(self, signals: dict[str, Any], events: dict[str, Any]) -> None:
        events[self.key] = self.value  # the last value wins


@dataclass(frozen=True, slots=True)
class Epoch:  # written by the journal as it opens: a new writer's epoch

    epoch: int
    owner: str = ""
    kind: ClassVar[str] = "epoch"

    def to_wire(self) -> dict[str, Any]:
        return {"k": "epoch", "epoch": self.epoch, "owner": self.owner}


@dataclass(frozen=True, slots=True)
class ModeChanged:
    """Written by the supervisor: its suspension mode, and whether an operator holds it."""

    mode: str
    held: bool
    t: float
    kind: ClassVar[str] = "mode"

    def to_wire(self) -> dict[str, Any]:
        return {"k": "mode", "mode": self.mode, "held": self.held, "t": self.t}


@dataclass(frozen=True, slots=True)
class Deployed:
    """Written by the supervisor: a deployment (a CommandActor pool with one runtime_env)
    it created, or (``retired``) drained; a restart recreates the pools of those not retired.
    Written again when it serves a new type; the last record of a deployment wins."""

    deployment: str
    runtime_env: dict[str, Any] | None
    t: float
    retired: bool = False
    types: tuple[str, ...] = ()
    """The command types it has been given workflows of."""
    packages: tuple[tuple[str, str], ...] = ()
    """Its code packages kept in the journal's storage: (``gcs://`` URI, blob name)."""
    kind: ClassVar[str] = "deployed"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"k": "deployed", "deployment": self.deployment, "runtime_env": self.runtime_env,
                                "t": self.t, "retired": self.retired}
        if self.types:
            wire["types"] = list(self.types)
        if self.packages:
            wire["packages"] = {uri: blob for uri, blob in self.packages}
        return wire
