"""Answers about finished workflows the journal no longer holds in memory, from storage.

With a ``cache_size`` the journal's fold (`journal.Journal.table`) holds every
unfinished workflow and only the ``cache_size`` that finished last. Older ones are
read back from the segments through their indexes (`segindex`: only their records,
by ranged reads) and folded as the journal folds them, so an answer read from disk
equals the one from memory. Which finished ids the journal keeps is the `Index`'s to
say (an id stays reserved until retention forgets it); the segments of a journal with
a ``cache_size`` are its storage and are not deleted by a snapshot.
"""

from __future__ import annotations

from typing import Any, Protocol

from actors.journal import codec
from actors.journal.index import Index
from actors.journal.segindex import spans
from actors.journal.segments import SegmentLog
from actors.records import from_wire
from actors.workflow_state import Workflow, WorkflowTable
from workflows.context import Outcome


class Readable(Protocol):
    log: SegmentLog
    table: WorkflowTable
    index: Index


class Stored:
    """`lookup`, `finished_page`, `steps_of` and `outcomes` over memory and storage."""

    def __init__(self, journal: Readable) -> None:
        self.journal = journal

    @property
    def evicts(self) -> bool:
        return self.journal.table.cache_size is not None

    def folds(self, workflow_ids: list[str]) -> dict[str, Workflow]:
        """The fold of each kept workflow among ``workflow_ids``: from memory, else from storage."""
        j = self.journal
        out: dict[str, Workflow] = {}
        missing: list[str] = []
        for w in workflow_ids:
            wf = j.table.workflows.get(w)
            if wf is not None:
                out[w] = wf
            elif self.evicts and w not in j.index.live and w not in j.index.ending:
                missing.append(w)
        if missing:
            # Not live, so finished if kept: its stored run, unless retention forgot it
            # (its end before the watermark; its records may linger in a kept segment).
            found = j.log.indexes.records_of([s.ref for s in j.log.segments], missing)
            kept_since = j.index.finished.forgotten_before
            for w, records in found.items():
                wf = fold(w, records)
                if wf is not None and wf.state.finished and (wf.finished_at or 0.0) >= kept_since:
                    out[w] = wf
        return out

    def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {w: wf.to_dict() for w, wf in self.folds(workflow_ids).items() if wf.state.finished}

    def steps_of(self, workflow_ids: list[str]) -> dict[str, list[Outcome]]:
        return {w: list(wf.outcomes) for w, wf in self.folds(workflow_ids).items()}

    def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        """Held ones first (the last to finish first), then from storage, newest segment first."""
        j = self.journal
        out = j.table.finished_page(state, limit, exclude)
        if not self.evicts or len(out) >= limit:
            return out
        seen = set(exclude) | {d["id"] for d in out} | set(j.table.workflows)
        for seg in reversed(j.log.segments):
            idx = j.log.indexes.load(seg.ref)
            for w in sorted(idx.workflows, key=lambda w: idx.workflows[w][-2], reverse=True):
                if w in seen or w not in j.index.finished:
                    continue
                seen.add(w)
                d = self.lookup([w]).get(w)
                if d is not None and (state is None or d["state"] == state):
                    out.append(d)
                    if len(out) >= limit:
                        return out
        return out

    def page(self, state: str | None, type_part: str | None, before: int | None, limit: int) -> dict[str, Any]:
        """Finished workflows, the last to end first, from the `EndLog` cursor ``before``
        (None: the newest), of ``state`` and a type containing ``type_part``: their folds
        (``items``), the cursor of the next page (``next``, None at the end) and the ends
        looked at (``scanned``). Reads only the page's workflows, from memory or storage."""
        j = self.journal
        found = j.index.finished.page(limit, before, state, type_part)
        folds = self.lookup(found.ids)
        for w, entry in found.unsure.items():  # ended before their kind and type were kept: check, and keep them
            d = folds.get(w)
            if d is not None:
                j.index.finished.learn(entry, d["state"], d["type"])
                if (state is not None and d["state"] != state) or \
                        (type_part and type_part.lower() not in d["type"].lower()):
                    del folds[w]
        return {"items": [folds[w] for w in found.ids if w in folds], "next": found.next, "scanned": found.scanned}

    def history(self, workflow_id: str) -> list[dict[str, Any]]:
        """The stored records of ``workflow_id``'s last run, in journal order, as maps
        (``q`` its sequence number, ``k`` its kind); read through the segment indexes.
        Records in segments a snapshot deleted (a journal without a cache) are left out."""
        j = self.journal
        records = j.log.indexes.records_of([s.ref for s in j.log.segments], [workflow_id]).get(workflow_id, [])
        last = max((i for i, r in enumerate(records) if r["k"] == "submitted"), default=0)
        durable = j.log.last_seq
        return [r for r in records[last:] if r["q"] <= durable]

    def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]:
        """Durable steps of ``service`` (of workflows kept) from ``since_seq``, in journal order."""
        j = self.journal
        if not self.evicts:
            return j.table.outcomes(service, since_seq, limit)
        found: list[dict[str, Any]] = []
        for seg in j.log.segments:
            if seg.last_seq < since_seq:
                continue
            ix = j.log.indexes
            for r in ix.fetch(seg.ref, spans(ix.load(seg.ref).services.get(service, []))):
                if since_seq <= r["q"] <= seg.last_seq and j.index.knows(r["w"]):
                    found.append({"seq": r["q"], "kind": r["k"], "workflow_id": r["w"], "step": r["step"],
                                  "service": r["service"], "value": r["value"]})
        found.sort(key=lambda d: (d["seq"], d["kind"] == "compensation", d["step"]))
        return found[:limit]


def fold(wid: str, records: list[codec.Record]) -> Workflow | None:
    table = WorkflowTable()
    for r in records:
        if r["k"] == "submitted":  # an id used again after retention freed it: the last run
            table = WorkflowTable()
        table.apply(from_wire(r), r["q"])
    return table.workflows.get(wid)

