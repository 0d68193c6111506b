"""Messages between actors, never journaled: `Dispatch` (supervisor to CommandActor),
`Report` (runner to supervisor), `Ended` and `Known` (the journal's answers to a
writer). They cross a Ray call as these objects; `actors.records` re-exports them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from actors.kinds import Error, Kind
from workflows.context import Outcome


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Sent by the supervisor to a CommandActor: run one attempt. ``error`` is set for
    a compensation. ``fresh``: the first attempt of a workflow submitted to this
    supervisor, with no steps journaled; any other attempt gets its steps from the
    journal (one call per dispatch batch). ``stop``: ``"cancel"`` or ``"terminate"``
    once an operator asked for it (``error`` is then the `Cancelled` error). ``signals``:
    the workflow's journaled signals, by name, for ``ctx.wait_for``."""

    workflow_id: str
    type: str
    fields: dict[str, Any]
    attempt: int
    incarnation: str
    error: Error | None = None
    fresh: bool = False
    stop: str = ""
    signals: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Sent by the runner to the supervisor: how an attempt ended. ``end`` is a terminal
    kind (journaled by the runner before it reports) or ``delayed``/``blocked``/``paused``
    (the supervisor journals the `Parked` record), or ``event`` (``ctx.set_event``, journaled:
    ``reason`` is its key, ``result`` its value); ``error`` is set for a failed workflow
    and for a compensation that parked; ``reason`` for a parked attempt; ``retry``, for a
    parked attempt of ``exec``, its command's retry policy (`RetryPolicy.to_wire`) and
    ``deadline_s``, so the supervisor never imports the command's code. ``wake_at``: the
    due time of a ``sleeping`` or ``waiting`` attempt (``reason`` is then the signal's name)."""

    workflow_id: str
    attempt: int
    incarnation: str
    end: Kind
    result: Any = None
    error: Error | None = None
    reason: str = ""
    retry: dict[str, Any] | None = None
    wake_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Ended:
    """Written by the journal, to a writer of a record of a workflow it holds as ended:
    the terminal record it holds (``kind`` None when it does not know the workflow).
    A type of its own, so a writer tells it from a step's value."""

    kind: Kind | None
    result: Any = None
    error: Error | None = None


@dataclass(frozen=True, slots=True)
class Known:
    """Written by the journal, to a ``submitted`` of an id it holds: the command it
    holds, and its fold (``Workflow.to_dict``) once that ``submitted`` is durable."""

    type: str
    fields: dict[str, Any]
    workflow: dict[str, Any] | None


Steps = tuple[list[Outcome], list[Outcome]]
"""A live workflow's journaled outcomes and compensations."""


def pickled_as_call(cls: type) -> None:
    """Pickle ``cls`` as a call of it on its field values. Records and messages cross
    every Ray call; this is about three times faster than a slotted dataclass's default."""
    names: tuple[str, ...] = getattr(cls, "__slots__")  # noqa: B009  # mypy knows no __slots__ on a type
    get = operator.attrgetter(*names)

    def reduce(self: Any) -> tuple[type, tuple[Any, ...]]:
        values = get(self)
        return cls, values if len(names) > 1 else (values,)

    cls.__reduce__ = reduce  # type: ignore[method-assign,assignment]


for _cls in (Dispatch, Report, Ended, Known):
    pickled_as_call(_cls)
