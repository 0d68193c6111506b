"""What the journal knows of each workflow id, and the admission rules built on it.

- One outcome per step index: a duplicate (a retried append) is dropped and answered
  with the value the journal holds; a step that skips one is refused.
- One terminal record per workflow: later ones are dropped.
- A record of a workflow the journal holds as ended (an outcome, a compensation, a
  second terminal record, ``started``, a parked or ``compensating`` record) is dropped
  and answered with `Ended`: the terminal record the journal holds, so a late writer
  reports what is durable rather than what it computed. An outcome or compensation
  of a workflow it does not know is answered ``Ended(k=None)``. `Ended` is never a
  step's value: values are msgpack data, and it is a type of its own.
- One ``submitted`` per id while the journal knows the id (unfinished, or finished and
  not yet compacted away): a duplicate is dropped and answered with what the journal
  holds for it (`Index.submitted_answer`), so the writer can tell a retry of the same
  command from another command reusing the id.

`admit` changes the index at once (appends of one batch see each other) and pushes
the reversal of each change on an undo list: a batch that is never written is
rolled back, in reverse order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.journal import codec
from actors.workflow_state import WorkflowTable
from workflows.context import Outcome

TERMINAL = frozenset({"completed", "failed", "compensated"})
STEP_KINDS = {"outcome": 0, "compensation": 1}
LATE_KINDS = frozenset({"started", "delayed", "blocked", "compensating"})
"""Other records of an attempt: dropped once the workflow has ended."""


class Ended(dict[str, Any]):
    """The journal's answer to a record of an ended workflow: ``{"k", "result", "error"}``
    of the terminal record it holds (``k`` None when it does not know the workflow).

    A dict, so it crosses a Ray call or a msgpack-free copy as one; a type of its
    own, so a writer tells it from a step's value."""

    def __init__(self, k: str | None, result: Any = None, error: dict[str, Any] | None = None) -> None:
        super().__init__(k=k, result=result, error=error)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ended, (self["k"], self["result"], self["error"]))

Steps = tuple[list[Outcome], list[Outcome]]
Undo = list[Callable[[], object]]


class Index:
    """Steps of live workflows and the ids of finished ones, over the durable fold ``table``."""

    def __init__(self, table: WorkflowTable) -> None:
        self.table = table
        self.live: dict[str, Steps] = {}
        self.finished: set[str] = set()
        # ``submitted`` records admitted but not yet durable, by id.
        self.unwritten: dict[str, codec.Record] = {}
        # Terminal records admitted but not yet durable, by id.
        self.ending: dict[str, codec.Record] = {}

    def knows(self, wid: str) -> bool:
        return wid in self.live or wid in self.finished

    def index(self, r: codec.Record) -> None:
        """Take a durable record read back at recovery."""
        kind, wid = r["k"], str(r.get("w"))
        if kind == "submitted":
            if wid not in self.finished:
                self.live.setdefault(wid, ([], []))
        elif kind in STEP_KINDS:
            steps = self.live.get(wid)
            if steps is not None:
                lst = steps[STEP_KINDS[kind]]
                if r["step"] == len(lst):
                    lst.append(Outcome(r["step"], r["service"], r["value"]))
        elif kind in TERMINAL:
            self.live.pop(wid, None)
            self.finished.add(wid)

    def admit(self, r: codec.Record, undo: Undo) -> tuple[bool, Any]:
        """Whether to journal ``r``, and the value to answer its writer with; ``undo`` gets its reversal."""
        kind, wid = r.get("k"), str(r.get("w"))
        if kind not in codec.KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        if kind in STEP_KINDS:
            return self._admit_step(r, kind, wid, undo)
        if kind == "submitted":
            if self.knows(wid):
                return False, self.submitted_answer(wid)
            self.live[wid] = ([], [])
            self.unwritten[wid] = r
            undo.append(lambda: self._unsubmit(wid))
        elif kind in TERMINAL:
            if wid in self.finished:
                return False, self.ended(wid)
            steps = self.live.pop(wid, None)
            self.finished.add(wid)
            self.ending[wid] = r
            undo.append(lambda: self._reopen(wid, steps))
        elif kind in LATE_KINDS and wid in self.finished:
            return False, self.ended(wid)
        return True, None

    def _admit_step(self, r: codec.Record, kind: str, wid: str, undo: Undo) -> tuple[bool, Any]:
        steps = self.live.get(wid)
        if steps is None:
            return False, self.ended(wid)  # finished or unknown: a late writer, nothing to keep
        lst, step = steps[STEP_KINDS[kind]], r["step"]
        if step < len(lst):
            return False, lst[step].value
        if step > len(lst):
            raise ValueError(f"{kind} step {step} of {wid} skips step {len(lst)}")
        lst.append(Outcome(step, r["service"], r["value"]))
        undo.append(lst.pop)
        return True, r["value"]

    def submitted_answer(self, wid: str) -> dict[str, Any]:
        """What the journal holds for a known id: its type and fields, and its fold
        (``Workflow.to_dict()``) once its ``submitted`` record is durable, else None."""
        wf = self.table.workflows.get(wid)
        if wf is not None:
            return {"type": wf.type, "fields": wf.fields, "workflow": wf.to_dict()}
        r = self.unwritten.get(wid, {})
        return {"type": r.get("type"), "fields": r.get("fields"), "workflow": None}

    def ended(self, wid: str) -> Ended:
        """The terminal record held for ``wid``: admitted (an append answered with it
        waits for a batch no earlier than that record's), or durable in the fold."""
        r = self.ending.get(wid)
        if r is not None:
            return Ended(r["k"], r.get("result"), r.get("error"))
        wf = self.table.workflows.get(wid)
        if wid in self.finished and wf is not None and wf.state.finished:
            return Ended(wf.state.value, wf.result, wf.error)
        return Ended(None)

    def durable_end(self, wid: str) -> Ended | None:
        """``wid``'s terminal record once it is durable; None while it is live, its end
        not yet written, or the id unknown."""
        if wid in self.ending or wid not in self.finished:
            return None
        end = self.ended(wid)
        return end if end["k"] is not None else None

    def written(self, records: list[codec.Record]) -> None:
        """``records`` are durable (and folded into the table)."""
        for r in records:
            if r["k"] == "submitted":
                self.unwritten.pop(str(r.get("w")), None)
            elif r["k"] in TERMINAL:
                self.ending.pop(str(r.get("w")), None)

    def forget(self, ids: list[str]) -> None:
        """Ids compacted away by a snapshot: free again."""
        self.finished.difference_update(ids)

    def _unsubmit(self, wid: str) -> None:
        self.live.pop(wid, None)
        self.unwritten.pop(wid, None)

    def _reopen(self, wid: str, steps: Steps | None) -> None:
        self.finished.discard(wid)
        self.ending.pop(wid, None)
        if steps is not None:
            self.live[wid] = steps
