"""What the journal knows of each workflow id, and the admission rules built on it.

- One outcome per step index: a duplicate (a retried append) is dropped and answered
  with the value the journal holds; a step that skips one is refused.
- One terminal record per workflow: later ones are dropped.
- A record of a workflow the journal holds as ended (an outcome, a compensation, a
  second terminal record, ``started``, a parked, ``compensating``, ``expired`` or ``cancel`` record) is dropped
  and answered with `Ended`: the terminal record the journal holds, so a late writer
  reports what is durable rather than what it computed. An outcome or compensation
  of a workflow it does not know is answered ``Ended(None)``. `Ended` is never a
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

from actors.journal.ends import Ends
from actors.records import (
    TERMINAL,
    Cancel,
    Compensating,
    Ended,
    EventSet,
    Expired,
    Kind,
    Known,
    Parked,
    Record,
    Signalled,
    Started,
    Step,
    Steps,
    Submitted,
    WorkflowRecord,
)
from actors.workflow_state import Workflow, WorkflowTable

LATE = (Started, Parked, Compensating, Expired, Cancel, Signalled, EventSet)
"""Other records of an attempt: dropped once the workflow has ended."""

Undo = list[Callable[[], object]]


class Index:
    """Steps of live workflows and the ids of finished ones, over the durable fold ``table``."""

    def __init__(self, table: WorkflowTable) -> None:
        self.table = table
        # The fold of a finished workflow not held in ``table`` (read from storage).
        self.load: Callable[[str], Workflow | None] = lambda wid: None
        self.live: dict[str, Steps] = {}
        # Ids of ended workflows kept, with the time each ended (for the retention), in
        # the order they ended (to page them newest first); older ones on storage.
        self.finished = Ends()
        # ``submitted`` records admitted but not yet durable, by id.
        self.unwritten: dict[str, Submitted] = {}
        # Terminal records admitted but not yet durable, by id.
        self.ending: dict[str, WorkflowRecord] = {}

    def _end(self, wid: str, t: float, kind: str) -> None:
        wf = self.table.workflows.get(wid) or self.unwritten.get(wid)  # submitted in the same batch
        self.finished.add(wid, t, kind, wf.type if wf is not None else "")

    def restore(self, ends: list[tuple[str, float, str, str]]) -> None:
        """Take the ends a snapshot holds in memory, (id, end time, kind, type): ``kind``
        and ``type`` are ``""`` when the snapshot did not keep them."""
        for wid, t, kind, type_ in sorted(ends, key=lambda e: e[1]):
            self.finished.add(wid, t, kind, type_)

    def compact(self) -> bool:
        """Drop the stale ends in memory once they are half of them (after a snapshot forgot ids)."""
        return self.finished.compact()

    def is_finished(self, wid: str) -> bool:
        """Whether ``wid`` ended and is kept; a live id is not looked up among the ends."""
        return wid not in self.live and wid in self.finished

    def knows(self, wid: str) -> bool:
        return wid in self.live or wid in self.finished

    def index(self, r: Record) -> None:
        """Take a durable record read back at recovery."""
        if isinstance(r, Submitted):
            if r.workflow_id not in self.finished:
                self.live.setdefault(r.workflow_id, ([], []))
        elif isinstance(r, Step):
            steps = self.live.get(r.workflow_id)
            if steps is not None:
                lst = steps[r.compensation]
                if r.step == len(lst):
                    lst.append(r.outcome)
        elif r.kind in TERMINAL:
            wid = r.workflow_id  # type: ignore[union-attr]  # every terminal record has one
            self.live.pop(wid, None)
            self._end(wid, getattr(r, "t", 0.0), Kind(r.kind).value)

    def admit(self, r: Record, undo: Undo) -> tuple[bool, Any]:
        """Whether to journal ``r``, and the value to answer its writer with; ``undo`` gets its reversal."""
        if isinstance(r, Step):
            return self._admit_step(r, undo)
        if isinstance(r, Submitted):
            wid = r.workflow_id
            if self.knows(wid):
                return False, self.submitted_answer(wid)
            self.live[wid] = ([], [])
            self.unwritten[wid] = r
            undo.append(lambda: self._unsubmit(wid))
        elif r.kind in TERMINAL:
            wid = r.workflow_id  # type: ignore[union-attr]  # every terminal record has one
            if self.is_finished(wid):
                return False, self.ended(wid)
            steps = self.live.pop(wid, None)
            self._end(wid, getattr(r, "t", 0.0), Kind(r.kind).value)
            self.ending[wid] = r  # type: ignore[assignment]
            undo.append(lambda: self._reopen(wid, steps))
        elif isinstance(r, LATE) and self.is_finished(r.workflow_id):
            return False, self.ended(r.workflow_id)
        return True, None

    def _admit_step(self, r: Step, undo: Undo) -> tuple[bool, Any]:
        steps = self.live.get(r.workflow_id)
        if steps is None:
            return False, self.ended(r.workflow_id)  # finished or unknown: a late writer, nothing to keep
        lst = steps[r.compensation]
        if r.step < len(lst):
            return False, lst[r.step].value
        if r.step > len(lst):
            raise ValueError(f"{r.kind.value} step {r.step} of {r.workflow_id} skips step {len(lst)}")
        lst.append(r.outcome)
        undo.append(lst.pop)
        return True, r.value

    def submitted_answer(self, wid: str) -> Known:
        """What the journal holds for a known id: its type and fields, and its fold
        (``Workflow.to_dict()``) once its ``submitted`` record is durable, else None."""
        wf = self.table.workflows.get(wid) or (self.load(wid) if wid not in self.unwritten else None)
        if wf is not None:
            return Known(wf.type, wf.fields, wf.to_dict())
        r = self.unwritten[wid]
        return Known(r.type, r.fields, None)

    def ended(self, wid: str) -> Ended:
        """The terminal record held for ``wid``: admitted (an append answered with it
        waits for a batch no earlier than that record's), or durable in the fold."""
        r = self.ending.get(wid)
        if r is not None:
            return Ended(r.kind, getattr(r, "result", None), getattr(r, "error", None))
        wf = self.table.workflows.get(wid) or (self.load(wid) if wid in self.finished else None)
        if wid in self.finished and wf is not None and wf.state.finished:
            return Ended(Kind(wf.state.value), wf.result, wf.error)
        return Ended(None)

    def durable_end(self, wid: str) -> Ended | None:
        """``wid``'s terminal record once it is durable; None while it is live, its end
        not yet written, or the id unknown."""
        if wid in self.ending or wid not in self.finished:
            return None
        end = self.ended(wid)
        return end if end.kind is not None else None

    def written(self, records: list[Record]) -> None:
        """``records`` are durable (and folded into the table)."""
        for r in records:
            if isinstance(r, Submitted):
                self.unwritten.pop(r.workflow_id, None)
            elif r.kind in TERMINAL:
                self.ending.pop(r.workflow_id, None)  # type: ignore[union-attr]

    def forget(self, ids: list[str]) -> None:
        """Ids compacted away by a snapshot, their ends in memory: free again (the
        ends on storage are forgotten by ``finished.forgotten_before``)."""
        for w in ids:
            self.finished.pop(w)

    def _unsubmit(self, wid: str) -> None:
        self.live.pop(wid, None)
        self.unwritten.pop(wid, None)

    def _reopen(self, wid: str, steps: Steps | None) -> None:
        ending = self.ending.pop(wid, None)
        self.finished.pop(wid, None if ending is None else Kind(ending.kind).value)
        if steps is not None:
            self.live[wid] = steps
