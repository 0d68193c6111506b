"""How a journal opens: recovery, catch-up from replicas, a new epoch.

`Startup` is a part of `journal.Journal`. Recovery: take the storage lock (`Fenced`
if held), read the snapshot and every segment by the rules of `recovery.walk` (a
torn tail is cut; any other damage is `JournalCorrupt`), rebuild the fold and the
index, then journal a new ``epoch`` record. A leader of replicas first adopts the tail
past its own end of the most up-to-date log among a majority of them (see `replica`).
"""

from __future__ import annotations

from typing import Any

import structlog

from actors.journal import codec, recovery
from actors.journal.backends import Backend
from actors.journal.epochs import UNKNOWN, Epochs
from actors.journal.index import Index
from actors.journal.replica import Replicator
from actors.journal.segments import SegmentLog
from actors.records import Epoch, Record, from_wire
from actors.workflow_state import Workflow, WorkflowTable
from workflows.errors import JournalUnavailable

log = structlog.get_logger("journal")


class Startup:
    backend: Backend
    owner: str
    log: SegmentLog
    table: WorkflowTable
    index: Index
    snapshot_seq: int
    epoch: int
    next_seq: int
    torn_bytes: int
    replicator: Replicator | None
    _epochs: Epochs
    _epochs_from: int
    _last_record: codec.Record | None

    async def append(self, records: list[Record]) -> list[Any]:
        raise NotImplementedError

    def _stamp(self, record: codec.Record) -> codec.Record:
        raise NotImplementedError

    def _write_now(self, records: list[codec.Record]) -> None:
        raise NotImplementedError

    def open(self) -> None:
        """Lock the storage, recover every segment, and start a new epoch (one replica)."""
        self._recover_local()
        self.epoch += 1
        self._write_now([self._stamp({"k": "epoch", "epoch": self.epoch, "owner": self.owner})])
        self._opened()

    async def open_replicated(self, replicator: Replicator) -> None:
        """Recover as the leader of replicas: the store, this log, then the tail of the most
        up-to-date log among a majority of replicas; start the new epoch there (see `replica`)."""
        self._recover_local()
        tail, newest = await replicator.best_tail(self.next_seq, self._last_record)
        if tail:
            self._adopt(tail)
        self.replicator = replicator
        # An epoch begun by a leader that crashed before its record was durable here is
        # not begun again: a replica may hold records of it.
        self.epoch = max(self.epoch, newest) + 1
        replicator.begin(self.epoch, self.next_seq, self._epochs, self._epochs_from)
        replicator.sealed_upto = self.log.sealed_upto
        await self.append([Epoch(self.epoch, self.owner)])
        self._opened()

    def _opened(self) -> None:
        log.info("journal_opened", storage=self.backend.uri, epoch=self.epoch, next_seq=self.next_seq,
                 live=len(self.index.live), torn_bytes=self.torn_bytes)

    def _recover_local(self) -> None:
        self._epochs, self._epochs_from, self._last_record = Epochs(), 0, None
        self.backend.lock(self.owner)
        found = recovery.walk(self.backend, repair=True, on_snapshot=self._load_snapshot, on_record=self._index,
                              keep_covered=self.table.cache_size is not None)
        self.next_seq, self.torn_bytes = found.next_seq, found.torn_bytes
        # Frames of the current format never follow old ones in a segment this writes.
        self.log.restore(found.segments, found.next_seq, fresh=found.legacy_tail)

    def _load_snapshot(self, snap: recovery.Snapshot) -> None:
        ends: list[tuple[str, float, str, str]] = []
        for d in snap.workflows:
            wf = Workflow.from_dict(d)
            self.table.put(wf)
            if wf.state.finished:
                ends.append((wf.id, wf.finished_at or 0.0, wf.state.value, wf.type))
            else:
                self.index.live[wf.id] = (list(wf.outcomes), list(wf.compensations))
        meta = snap.finished_meta or [("", "")] * len(snap.finished or ())
        # Evicted from memory, kept in storage: with their kinds and types where the snapshot kept them.
        ends += [(w, t, kind, type_) for (w, t), (kind, type_) in zip(snap.finished or (), meta, strict=True)]
        self.index.finished.forgotten_before = snap.forgotten_before
        self.index.finished.restore_chunks(snap.end_chunks or [], snap.end_pos)
        self.index.restore(ends)
        self.table.mode, self.table.held = snap.mode, snap.held
        self.table.deployments = dict(snap.deployments or {})
        self.snapshot_seq = self.table.last_seq = snap.seq
        self.epoch = snap.epoch
        self._epochs.add(snap.epoch, UNKNOWN)  # the epoch of the records after it, begun at or before it
        self._epochs_from = snap.seq
        log.info("snapshot_loaded", snapshot=snap.name, seq=snap.seq, workflows=len(snap.workflows))

    def _index(self, r: codec.Record) -> None:
        record = from_wire(r)
        self.table.apply(record, r["q"])
        self.index.index(record)
        self._last_record = r
        if r["k"] == "epoch":
            self.epoch = max(self.epoch, r["epoch"])
            self._epochs.add(r["epoch"], r["q"])

    def _adopt(self, records: list[codec.Record]) -> None:
        """Take records another replica holds past this log's end (catch-up at recovery)."""
        keep = [r for r in records if r["q"] >= self.next_seq]
        if not keep or keep[0]["q"] != self.next_seq:
            raise JournalUnavailable(f"no replica holds the records from {self.next_seq} on")
        for r in keep:
            self._index(r)
        self.next_seq = keep[-1]["q"] + 1
        self.log.write([codec.encode(r) for r in keep], self.next_seq - 1)
        log.warning("journal_caught_up", records=len(keep), next_seq=self.next_seq)
