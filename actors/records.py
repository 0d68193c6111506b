"""The journal's records and the messages between actors: one typed class each.

A record kind has one writer, and the code keeps it so:

| kind | class | written by |
|---|---|---|
| ``epoch`` | `Epoch` | the journal, once per recovery |
| ``submitted`` | `Submitted` | the supervisor, at submit |
| ``started`` | `Started` | the runner, as an attempt begins |
| ``outcome`` / ``compensation`` | `Step` | the runner, per step of ``exec`` / ``compensate`` |
| ``compensating`` | `Compensating` | the runner, as ``exec`` raises |
| ``completed`` / ``failed`` / ``compensated`` | `Completed`, `Failed`, `Compensated` | the runner, at the end |
| ``delayed`` / ``blocked`` / ``paused`` | `Parked` | the supervisor, as it parks an attempt or resumes one |
| ``sleeping`` / ``waiting`` | `Parked` | the supervisor, as an attempt parks on ``ctx.sleep`` / ``ctx.wait_for`` |
| ``signal`` | `Signalled` | the supervisor, once per (workflow, name), as an operator signals a workflow |
| ``event`` | `EventSet` | the runner, at each ``ctx.set_event`` (a replay journals it again) |
| ``expired`` | `Expired` | the supervisor, as a parked command's deadline passes |
| ``cancel`` | `Cancel` | the supervisor, as an operator cancels or terminates a workflow |
| ``cancelled`` / ``terminated`` | `Stopped` | the runner, as a cancelled attempt ends (or the supervisor) |
| ``mode`` | `ModeChanged` | the supervisor, as its mode changes |
| ``deployed`` | `Deployed` | the supervisor, as it creates (or retires) a deployment |
| ``snapshot`` | (`actors.journal.recovery`) | the journal, for compaction |

Messages between actors, never journaled (`Dispatch`, `Report`, `Ended`, `Known`),
live in `actors.messages` and are re-exported here.

On storage a record is a msgpack map with a format version ``v``, a sequence number
``q`` (given by the journal), a kind ``k`` and the workflow id ``w`` where it has one.
`to_wire` and `from_wire` are the only conversion between the two; the codec
(``actors.journal.codec``) frames the map. The keys are those journals have always
held, so older journals read back into these classes.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from actors.kinds import KINDS as KINDS
from actors.kinds import PARKED as PARKED
from actors.kinds import TERMINAL as TERMINAL
from actors.kinds import Error as Error
from actors.kinds import Kind as Kind
from actors.messages import Dispatch as Dispatch
from actors.messages import Ended as Ended
from actors.messages import Known as Known
from actors.messages import Report as Report
from actors.messages import Steps as Steps
from actors.messages import pickled_as_call
from actors.side_records import Deployed as Deployed
from actors.side_records import Epoch as Epoch
from actors.side_records import EventSet as EventSet
from actors.side_records import ModeChanged as ModeChanged
from actors.side_records import Signalled as Signalled
from workflows.context import Outcome

VERSION = 1
"""The version of the record map; the frame format is told apart by the codec."""

MAX_RECORD_BYTES = 64 << 20
"""The largest record payload the journal writes or reads back."""



@dataclass(frozen=True, slots=True)
class Submitted:
    """Written by the supervisor at submit: the command as type name and msgpack fields,
    and the deployment it runs on (``""`` in journals written before deployments: the
    coordinator's own). ``start_at``: the time its first attempt may start (0: at once)."""

    workflow_id: str
    type: str
    fields: dict[str, Any]
    t: float
    deployment: str = ""
    start_at: float = 0.0
    kind: ClassVar[Kind] = Kind.SUBMITTED

    def to_wire(self) -> dict[str, Any]:
        wire = {"k": "submitted", "w": self.workflow_id, "type": self.type, "fields": self.fields, "t": self.t}
        if self.deployment:
            wire["deployment"] = self.deployment
        if self.start_at:
            wire["start_at"] = self.start_at
        return wire


@dataclass(frozen=True, slots=True)
class Started:
    """Written by the runner as an attempt begins."""

    workflow_id: str
    attempt: int
    t: float
    kind: ClassVar[Kind] = Kind.STARTED

    def to_wire(self) -> dict[str, Any]:
        return {"k": "started", "w": self.workflow_id, "attempt": self.attempt, "t": self.t}


@dataclass(frozen=True, slots=True)
class Step:
    """Written by the runner: one step's outcome, of ``exec`` or (``compensation``) of ``compensate``.
    ``t`` and ``attempt``: when, and by which attempt, it was recorded (None in records
    journaled before they were kept)."""

    workflow_id: str
    step: int
    service: str
    value: Any
    compensation: bool = False
    t: float | None = None
    attempt: int | None = None

    @property
    def kind(self) -> Kind:
        return Kind.COMPENSATION if self.compensation else Kind.OUTCOME

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.step, self.service, self.value)

    def to_wire(self) -> dict[str, Any]:
        wire = {"k": self.kind.value, "w": self.workflow_id, "step": self.step, "service": self.service,
                "value": self.value}
        if self.t is not None:
            wire["t"] = self.t
        if self.attempt is not None:
            wire["attempt"] = self.attempt
        return wire


@dataclass(frozen=True, slots=True)
class Compensating:
    """Written by the runner as ``exec`` raises an error that is not retried."""

    workflow_id: str
    error: Error
    t: float
    kind: ClassVar[Kind] = Kind.COMPENSATING

    def to_wire(self) -> dict[str, Any]:
        return {"k": "compensating", "w": self.workflow_id, "error": self.error, "t": self.t}


@dataclass(frozen=True, slots=True)
class Parked:
    """Written by the supervisor for an attempt that raised `Delayed` (or ``blocked``:
    `Blocked`): its retry time. ``reason`` is the error's message (empty in journals
    written before it was kept). ``paused``: the workflow waits, with no retry time,
    for an operator's ``resume_workflow`` (its retry policy ran out, or a replay met
    `NonDeterminism`); the resume is journaled as a ``delayed`` record due at once.
    ``wait``: ``"sleeping"`` (``ctx.sleep``, due at its wake time) or ``"waiting"``
    (``ctx.wait_for``; ``reason`` is the signal's name, due at its timeout or 0)."""

    workflow_id: str
    blocked: bool
    attempt: int
    next_retry_at: float
    t: float
    reason: str = ""
    paused: bool = False
    wait: str = ""

    @property
    def kind(self) -> Kind:
        if self.wait:
            return Kind(self.wait)
        return Kind.PAUSED if self.paused else Kind.BLOCKED if self.blocked else Kind.DELAYED

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.kind.value, "w": self.workflow_id, "attempt": self.attempt,
                "next_retry_at": self.next_retry_at, "t": self.t, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Expired:
    """Written by the supervisor as a parked command's deadline passes: the workflow is
    compensating with ``error`` (`DeadlineExceeded`); the runner writes its end."""

    workflow_id: str
    error: Error
    t: float
    kind: ClassVar[Kind] = Kind.EXPIRED

    def to_wire(self) -> dict[str, Any]:
        return {"k": "expired", "w": self.workflow_id, "error": self.error, "t": self.t}


@dataclass(frozen=True, slots=True)
class Cancel:
    """Written by the supervisor: an operator cancels (``terminate``: without compensating) a workflow."""

    workflow_id: str
    terminate: bool
    reason: str
    t: float
    kind: ClassVar[Kind] = Kind.CANCEL

    def to_wire(self) -> dict[str, Any]:
        return {"k": "cancel", "w": self.workflow_id, "terminate": self.terminate, "reason": self.reason, "t": self.t}


@dataclass(frozen=True, slots=True)
class Stopped:
    """The end of a cancelled (``terminated``: not compensated) workflow; its error `Cancelled` (`cancel_error`)."""

    workflow_id: str
    error: Error
    t: float
    terminated: bool = False

    @property
    def kind(self) -> Kind:
        return Kind.TERMINATED if self.terminated else Kind.CANCELLED

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.kind.value, "w": self.workflow_id, "t": self.t, "error": self.error}


@dataclass(frozen=True, slots=True)
class Completed:
    """Written by the runner as ``exec`` returns: the end of the workflow."""

    workflow_id: str
    result: Any
    t: float
    kind: ClassVar[Kind] = Kind.COMPLETED

    def to_wire(self) -> dict[str, Any]:
        return {"k": "completed", "w": self.workflow_id, "t": self.t, "result": self.result}


@dataclass(frozen=True, slots=True)
class Failed:
    """Written by the runner: the workflow failed with nothing undone (no outcomes, or
    ``compensate`` raised: ``error["compensation_error"]``)."""

    workflow_id: str
    error: Error
    t: float
    kind: ClassVar[Kind] = Kind.FAILED

    def to_wire(self) -> dict[str, Any]:
        return {"k": "failed", "w": self.workflow_id, "t": self.t, "error": self.error}


@dataclass(frozen=True, slots=True)
class Compensated:
    """Written by the runner as ``compensate`` returns: the workflow failed with ``error``, undone."""

    workflow_id: str
    error: Error
    t: float
    kind: ClassVar[Kind] = Kind.COMPENSATED

    def to_wire(self) -> dict[str, Any]:
        return {"k": "compensated", "w": self.workflow_id, "t": self.t, "error": self.error}


Ending = Completed | Failed | Compensated | Stopped
WorkflowRecord = Submitted | Started | Step | Compensating | Parked | Expired | Cancel | Ending
Record = WorkflowRecord | Signalled | EventSet | Epoch | ModeChanged | Deployed
RECORD_TYPES: tuple[type, ...] = typing.get_args(Record)
"""Every record class, for an ``isinstance`` check."""


def to_wire(record: Record, seq: int) -> dict[str, Any]:
    """The map the codec frames: the record's fields, its version and sequence number."""
    wire = record.to_wire()
    wire["v"], wire["q"] = VERSION, seq
    return wire


def from_wire(d: dict[str, Any]) -> Record:
    """The typed record of a map read back (any version-1 journal). `KeyError` or
    `ValueError` for a map that is not one; snapshots are read by their own reader."""
    record: Record = _READERS[d["k"]](d)
    return record


def _parked(d: dict[str, Any], blocked: bool) -> Parked:
    t, due = d.get("t", 0.0), d.get("next_retry_at") or 0.0
    return Parked(d["w"], blocked, d.get("attempt", 0), due, t, d.get("reason", ""))


_READERS: dict[str, Any] = {
    "epoch": lambda d: Epoch(d["epoch"], d.get("owner", "")),
    "submitted": lambda d: Submitted(d["w"], d["type"], d["fields"], d["t"], d.get("deployment", ""),
                                     d.get("start_at", 0.0)),
    "started": lambda d: Started(d["w"], d["attempt"], d.get("t", 0.0)),
    "outcome": lambda d: Step(d["w"], d["step"], d["service"], d["value"], t=d.get("t"), attempt=d.get("attempt")),
    "compensation": lambda d: Step(d["w"], d["step"], d["service"], d["value"], compensation=True, t=d.get("t"),
                                   attempt=d.get("attempt")),
    "compensating": lambda d: Compensating(d["w"], d["error"], d.get("t", 0.0)),
    "delayed": lambda d: _parked(d, False),
    "blocked": lambda d: _parked(d, True),
    "paused": lambda d: Parked(d["w"], False, d.get("attempt", 0), 0.0, d.get("t", 0.0), d.get("reason", ""),
                               paused=True),
    "sleeping": lambda d: Parked(d["w"], False, d.get("attempt", 0), d.get("next_retry_at") or 0.0, d["t"],
                                 d.get("reason", ""), wait="sleeping"),
    "waiting": lambda d: Parked(d["w"], False, d.get("attempt", 0), d.get("next_retry_at") or 0.0, d["t"],
                                d.get("reason", ""), wait="waiting"),
    "signal": lambda d: Signalled(d["w"], d["name"], d.get("payload"), d["t"]),
    "event": lambda d: EventSet(d["w"], d["key"], d.get("value"), d["t"]),
    "expired": lambda d: Expired(d["w"], d["error"], d["t"]),
    "cancel": lambda d: Cancel(d["w"], bool(d["terminate"]), d.get("reason", ""), d["t"]),
    "cancelled": lambda d: Stopped(d["w"], d.get("error") or {}, d.get("t", 0.0)),
    "terminated": lambda d: Stopped(d["w"], d.get("error") or {}, d.get("t", 0.0), terminated=True),
    "completed": lambda d: Completed(d["w"], d.get("result"), d.get("t", 0.0)),
    "failed": lambda d: Failed(d["w"], d.get("error") or {}, d.get("t", 0.0)),
    "compensated": lambda d: Compensated(d["w"], d.get("error") or {}, d.get("t", 0.0)),
    "mode": lambda d: ModeChanged(d["mode"], bool(d.get("held", False)), d.get("t", 0.0)),
    "deployed": lambda d: Deployed(d["deployment"], d.get("runtime_env"), d.get("t", 0.0), bool(d.get("retired")),
                                   tuple(d.get("types", ())), tuple(dict(d.get("packages") or {}).items())),
}


for _cls in (Epoch, Submitted, Started, Step, Compensating, Parked, Expired, Cancel, Stopped, Completed, Failed,
             Compensated, ModeChanged, Deployed, Signalled, EventSet):
    pickled_as_call(_cls)
