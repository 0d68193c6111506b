"""Workflow states and the fold that rebuilds them from journal records.

The journal is the truth: a workflow's state is a fold over its records, so the same
`WorkflowTable.apply` serves live updates and start-up recovery.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from actors.records import (
    Cancel,
    Compensated,
    Compensating,
    Completed,
    Deployed,
    Epoch,
    EventSet,
    Expired,
    Failed,
    Kind,
    ModeChanged,
    Parked,
    Record,
    Signalled,
    Started,
    Step,
    Stopped,
    Submitted,
    WorkflowRecord,
)
from workflows.context import Outcome
from workflows.errors import cancel_error


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DELAYED = "delayed"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def parked(self) -> bool:
        return self in (State.DELAYED, State.BLOCKED)

    @property
    def timed(self) -> bool:  # parked on ctx.sleep or ctx.wait_for: out of the backlog
        return self in (State.SLEEPING, State.WAITING)


FINISHED = frozenset({State.COMPLETED, State.FAILED, State.COMPENSATED, State.CANCELLED, State.TERMINATED})


class Event(enum.StrEnum):
    DISPATCH = "dispatch"
    DELAY = "delay"
    BLOCK = "block"
    RETRY_DUE = "retry_due"
    LOST = "lost"  # its CommandActor died, or the coordinator restarted
    COMPLETE = "complete"
    FAIL = "fail"
    COMPENSATE = "compensate"  # compensation finished with outcomes
    PAUSE = "pause"  # its retry policy ran out (on_exhausted="pause") or its replay diverged
    RESUME = "resume"  # an operator's resume_workflow
    SLEEP = "sleep"  # ctx.sleep: parked until its wake time
    WAIT = "wait"  # ctx.wait_for: parked until the signal or its timeout
    EXPIRE = "expire"  # its deadline passed: it goes back to run its compensation
    CANCEL = "cancel"  # a cancelled attempt ended (compensated or not)
    TERMINATE = "terminate"  # terminated: running, or by the supervisor while it waited


class IllegalTransition(ValueError):
    pass


_EDGES: dict[tuple[State, Event], State] = {
    (State.PENDING, Event.DISPATCH): State.RUNNING,
    (State.RUNNING, Event.DELAY): State.DELAYED,
    (State.RUNNING, Event.BLOCK): State.BLOCKED,
    (State.RUNNING, Event.COMPLETE): State.COMPLETED,
    (State.RUNNING, Event.FAIL): State.FAILED,
    (State.RUNNING, Event.COMPENSATE): State.COMPENSATED,
    (State.RUNNING, Event.LOST): State.PENDING,
    (State.RUNNING, Event.EXPIRE): State.PENDING,
    (State.DELAYED, Event.RETRY_DUE): State.PENDING,
    (State.BLOCKED, Event.RETRY_DUE): State.PENDING,
    (State.DELAYED, Event.LOST): State.PENDING,
    (State.BLOCKED, Event.LOST): State.PENDING,
    (State.PENDING, Event.LOST): State.PENDING,
    # Paused waits for an operator, across restarts too: recovery leaves it paused.
    (State.RUNNING, Event.PAUSE): State.PAUSED,
    (State.PAUSED, Event.RESUME): State.PENDING,
    (State.PAUSED, Event.LOST): State.PAUSED,
    (State.RUNNING, Event.SLEEP): State.SLEEPING,
    (State.RUNNING, Event.WAIT): State.WAITING,
    (State.SLEEPING, Event.RETRY_DUE): State.PENDING,
    (State.WAITING, Event.RETRY_DUE): State.PENDING,
    # A parked command can fail without running again: its deadline passed.
    (State.DELAYED, Event.FAIL): State.FAILED,
    (State.BLOCKED, Event.FAIL): State.FAILED,
    # An operator's cancel: a parked or paused one is pending again when the request is journaled.
    (State.RUNNING, Event.CANCEL): State.CANCELLED,
    (State.RUNNING, Event.TERMINATE): State.TERMINATED,
    (State.PENDING, Event.TERMINATE): State.TERMINATED,
}


def transition(state: State, event: Event) -> State:
    """The next state, or `IllegalTransition`: the workflow state machine as a value."""
    try:
        return _EDGES[(state, event)]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.value} on {event.value}") from None


@dataclass(slots=True)
class Workflow:
    """The supervisor's cached view of one workflow, rebuilt from its records."""

    id: str
    type: str
    fields: dict[str, Any]
    submitted_at: float
    state: State = State.PENDING
    attempts: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    compensations: list[Outcome] = field(default_factory=list)
    compensating: bool = False
    error: dict[str, Any] | None = None
    result: Any = None
    next_retry_at: float | None = None
    finished_at: float | None = None
    outcome_seqs: list[int] = field(default_factory=list)
    """The journal sequence number of each outcome (for replay after compaction)."""
    compensation_seqs: list[int] = field(default_factory=list)
    """The same for each compensation; empty in snapshots written before they were kept."""
    deployment: str = ""
    """The deployment it runs on, every attempt (``""``: the coordinator's own)."""
    reason: str = ""
    """Why the last attempt parked or paused (the error's type and message)."""
    stop: str = ""
    """``"cancel"`` or ``"terminate"`` once an operator's request is journaled."""
    signals: dict[str, Any] = field(default_factory=dict)  # journaled signals by name (the first payload)
    events: dict[str, Any] = field(default_factory=dict)  # the last value ctx.set_event journaled, by key

    def to_dict(self) -> dict[str, Any]:
        """Every field, msgpack-encodable: the snapshot form."""
        return {"id": self.id, "type": self.type, "fields": self.fields, "submitted_at": self.submitted_at,
                "state": self.state.value, "attempts": self.attempts, "outcomes": [list(o) for o in self.outcomes],
                "compensations": [list(o) for o in self.compensations], "compensating": self.compensating,
                "error": self.error, "result": self.result, "next_retry_at": self.next_retry_at,
                "finished_at": self.finished_at, "outcome_seqs": self.outcome_seqs,
                "compensation_seqs": self.compensation_seqs, "deployment": self.deployment, "reason": self.reason,
                "stop": self.stop, "signals": self.signals, "events": self.events}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workflow:
        """The inverse of `to_dict`. A snapshot that kept no compensation sequence
        numbers gets the last outcome's for each: they are replayed after every
        outcome of their workflow, which is where the journal had them."""
        wf = cls(d["id"], d["type"], d["fields"], d["submitted_at"], State(d["state"]), d["attempts"],
                 [Outcome(*o) for o in d["outcomes"]], [Outcome(*o) for o in d["compensations"]],
                 d["compensating"], d["error"], d["result"], d["next_retry_at"], d["finished_at"],
                 list(d.get("outcome_seqs", [])), list(d.get("compensation_seqs", [])), d.get("deployment", ""))
        wf.reason, wf.stop = d.get("reason", ""), d.get("stop", "")
        wf.signals, wf.events = dict(d.get("signals") or {}), dict(d.get("events") or {})
        missing = len(wf.compensations) - len(wf.compensation_seqs)
        if missing > 0:
            wf.compensation_seqs += [wf.outcome_seqs[-1] if wf.outcome_seqs else -1] * missing
        return wf

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state.value,
            "attempts": self.attempts,
            "outcomes": [list(o) for o in self.outcomes],
            "error": self.error,
            "next_retry_at": self.next_retry_at,
            "reason": self.reason,
            "wake_at": (self.next_retry_at or None) if self.state.timed else None,  # 0: a wait without a timeout
            "waiting_for": self.reason if self.state is State.WAITING else None,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
        }


class WorkflowTable:
    """All workflows by id, and the supervisor mode, folded from journal records.

    Each record kind has one writer (see `actors.records`), and the journal keeps one
    end per workflow and drops the records of an ended one, so ``apply`` takes each
    record as the fact it states: no record has to be reconciled with another
    writer's. Duplicate step indices are the only repeats it ignores.

    With a ``cache_size``, memory follows what is live: every unfinished workflow is
    held, and of the finished ones only the ``cache_size`` that finished last (their
    owner reads older ones back from the journal's storage).
    """

    def __init__(self, cache_size: int | None = None) -> None:
        self.workflows: dict[str, Workflow] = {}
        self.mode: str = "normal"
        self.held = False
        self.last_seq = -1
        self.deployments: dict[str, dict[str, Any]] = {}
        """Deployments not retired, by id: ``{"runtime_env", "t", "types", "packages"}`` (`Deployed` records)."""
        self.cache_size = cache_size
        self._cached: OrderedDict[str, None] = OrderedDict()  # finished ids held, oldest first

    def put(self, wf: Workflow) -> None:
        """Hold ``wf`` (read back from the journal); a finished one joins the cache."""
        self.workflows[wf.id] = wf
        if wf.state.finished:
            self.ended(wf.id)

    def ended(self, wid: str) -> None:
        """``wid`` finished: it stays held while it is among the last ``cache_size`` to finish."""
        if self.cache_size is None:
            return
        self._cached[wid] = None
        self._cached.move_to_end(wid)
        while len(self._cached) > self.cache_size:
            old, _ = self._cached.popitem(last=False)
            wf = self.workflows.get(old)
            if wf is not None and wf.state.finished:
                del self.workflows[old]

    def apply(self, r: Record, seq: int = -1) -> Workflow | None:
        """Fold ``r``, journaled at ``seq``; the workflow it changed, if any."""
        self.last_seq = max(self.last_seq, seq)
        if isinstance(r, ModeChanged):
            self.mode, self.held = r.mode, r.held
            return None
        if isinstance(r, Epoch):
            return None
        if isinstance(r, Deployed):
            if r.retired:
                self.deployments.pop(r.deployment, None)
            else:
                self.deployments[r.deployment] = {"runtime_env": r.runtime_env, "t": r.t, "types": list(r.types),
                                                  "packages": dict(r.packages)}
            return None
        if isinstance(r, Submitted):
            wf = Workflow(r.workflow_id, r.type, r.fields, r.t, deployment=r.deployment)
            if r.start_at > r.t:  # submitted with a start time: it sleeps until then
                wf.state, wf.next_retry_at = State.SLEEPING, r.start_at
            self.workflows.setdefault(wf.id, wf)
            return wf
        found = self.workflows.get(r.workflow_id)
        if found is not None:
            _fold(found, r, seq)
            if r.kind in _ENDS:
                self.ended(found.id)
        return found

    def unfinished(self) -> list[Workflow]:
        return [wf for wf in self.workflows.values() if not wf.state.finished]

    def forget(self, finished_before: float) -> list[str]:
        """Drop finished workflows that finished before ``finished_before``; their ids."""
        gone = [w for w, wf in self.workflows.items()
                if wf.state.finished and wf.finished_at is not None and wf.finished_at < finished_before]
        for w in gone:
            del self.workflows[w]
            self._cached.pop(w, None)
        return gone

    def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The fold of each finished workflow held among ``workflow_ids``."""
        return {w: wf.to_dict() for w in workflow_ids
                if (wf := self.workflows.get(w)) is not None and wf.state.finished}

    def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        """Up to ``limit`` folds of finished workflows held (in ``state``), the last to finish first."""
        skip, out = set(exclude), list[dict[str, Any]]()
        for wf in reversed(self.workflows.values()):
            if len(out) >= limit:
                break
            if wf.state.finished and (state is None or wf.state.value == state) and wf.id not in skip:
                out.append(wf.to_dict())
        return out

    def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]:
        """The journaled steps of ``service`` with sequence number >= ``since_seq``, in
        journal order: ``kind`` is ``"outcome"`` for a step of ``exec`` and
        ``"compensation"`` for one of ``compensate``, so a service rebuilt from them
        undoes what was undone."""
        found = []
        for wf in self.workflows.values():
            for kind, steps, seqs in (("outcome", wf.outcomes, wf.outcome_seqs),
                                      ("compensation", wf.compensations, wf.compensation_seqs)):
                found += [_replayed(wf, o, q, kind) for o, q in zip(steps, seqs, strict=False)
                          if q >= since_seq and o.service == service]
        found.sort(key=lambda d: (d["seq"], d["kind"] == "compensation", d["step"]))
        return found[:limit]


def _replayed(wf: Workflow, o: Outcome, seq: int, kind: str) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "workflow_id": wf.id, "step": o.step, "service": o.service, "value": o.value}


_ENDS = {Kind.COMPLETED: State.COMPLETED, Kind.FAILED: State.FAILED, Kind.COMPENSATED: State.COMPENSATED,
         Kind.CANCELLED: State.CANCELLED, Kind.TERMINATED: State.TERMINATED}


def _fold(wf: Workflow, r: WorkflowRecord | Signalled | EventSet, seq: int) -> None:
    if isinstance(r, Step):
        steps, seqs = (wf.compensations, wf.compensation_seqs) if r.compensation else (wf.outcomes, wf.outcome_seqs)
        if r.step == len(steps):
            steps.append(r.outcome)
            seqs.append(seq)
    elif isinstance(r, Started):
        wf.attempts = max(wf.attempts, r.attempt)  # a lost attempt's record may land after its successor's
    elif isinstance(r, Parked):
        wf.state = State(r.kind.value) if r.wait or r.paused else State.BLOCKED if r.blocked else State.DELAYED
        wf.next_retry_at, wf.reason = (None if r.paused else r.next_retry_at), r.reason
        wf.attempts = max(wf.attempts, r.attempt)
    elif isinstance(r, Compensating | Expired):
        wf.compensating, wf.error = True, r.error
        if isinstance(r, Expired):  # it runs again, to compensate
            wf.state, wf.next_retry_at = State.PENDING, None
    elif isinstance(r, Completed):
        wf.state, wf.finished_at, wf.next_retry_at, wf.result = State.COMPLETED, r.t, None, r.result
    elif isinstance(r, Cancel):  # a waiting one runs again, to compensate (or be ended, terminated)
        wf.stop, wf.error = "terminate" if r.terminate else "cancel", cancel_error(r.reason, r.terminate)
        wf.compensating = wf.compensating or not r.terminate
        if wf.state in (State.DELAYED, State.BLOCKED, State.PAUSED, State.SLEEPING, State.WAITING):
            wf.state, wf.next_retry_at = State.PENDING, None
    elif isinstance(r, Signalled | EventSet):
        r.note(wf.signals, wf.events)
    elif isinstance(r, Failed | Compensated | Stopped):
        wf.state, wf.finished_at, wf.next_retry_at, wf.error = _ENDS[r.kind], r.t, None, r.error
