"""The journal: recovery, group commit, and the one-outcome-per-step rule.

Group commit, as implemented by `Journal.append` and `Journal._flush_loop`:

1. ``append(records)`` checks each record against the index (a duplicate outcome of a
   step index, or a second terminal record, is dropped and answered with what the
   journal already holds), gives the accepted ones sequence numbers, frames them into
   the open batch, and waits on that batch's future.
2. The flusher takes the whole open batch, writes it to the active segment and fsyncs
   it on a worker thread, while new appends fill the next batch.
3. Once the write is durable the batch's future resolves: every caller's records are
   acknowledged together, one fsync for many records.
4. A failed write fails the journal: waiting and later appends raise
   `JournalUnavailable`; nothing is acknowledged that is not durable.

Recovery (`open`): take the storage lock (`Fenced` if held), scan every segment in
order with CRC checks, cut a torn tail off the last active segment, raise
`JournalCorrupt` for damage anywhere else, rebuild the index, then journal a new
``epoch`` record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors.state import Workflow, WorkflowTable
from cluster.journal import codec
from cluster.journal.backends import ActiveSegment, Backend, SegmentRef
from cluster.journal.replica import Replicator
from workflows.context import Outcome
from workflows.errors import JournalCorrupt, JournalUnavailable

log = structlog.get_logger("journal")

TERMINAL = frozenset({"completed", "failed", "compensated"})
STEP_KINDS = {"outcome": 0, "compensation": 1}


@dataclass
class _Batch:
    frames: list[bytes] = field(default_factory=list)
    records: list[codec.Record] = field(default_factory=list)
    future: asyncio.Future[None] | None = None
    last_seq: int = -1


@dataclass
class _Segment:
    ref: SegmentRef
    last_seq: int


class Journal:
    """One replica's journal over a `Backend`; see the module docstring for the protocol."""

    def __init__(self, backend: Backend, *, fsync: bool = True, segment_bytes: int = 64 << 20, owner: str = "",
                 snapshot_records: int = 100_000, retention_s: float = float("inf"), seal_idle_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.snapshot_records = snapshot_records
        self.seal_idle_s = seal_idle_s
        self.retention_s = retention_s
        self.clock = clock
        # The fold of every durable record: what a snapshot stores and start-up reads.
        self.table = WorkflowTable()
        self.snapshot_seq = -1
        self._since_snapshot = 0
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.owner = owner
        self.epoch = 0
        self.next_seq = 0
        self.torn_bytes = 0
        self._segments: list[_Segment] = []
        self._active: ActiveSegment | None = None
        self._active_first = 0
        # Steps of live workflows: id -> (outcomes, compensations). Finished ids.
        self._live: dict[str, tuple[list[Outcome], list[Outcome]]] = {}
        self._finished: set[str] = set()
        self._open: _Batch | None = None
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-fsync")
        self.replicator: Replicator | None = None

    # --- recovery -----------------------------------------------------------------

    def open(self) -> None:
        """Lock the storage, recover every segment, and start a new epoch (one replica)."""
        self._recover_local()
        self.epoch += 1
        self._write_now([self._stamp({"k": "epoch", "epoch": self.epoch, "owner": self.owner})])
        self._opened()

    async def open_replicated(self, replicator: Replicator) -> None:
        """Recover as the leader of replicas: the store, this log, then the longest tail
        among a majority of replicas; start the new epoch there (see `replica`)."""
        self._recover_local()
        end, follower = await replicator.longest_tail(self.next_seq)
        if follower is not None and end > self.next_seq:
            _first, data = await follower.read(self.next_seq)
            self._adopt(data)
        self.replicator = replicator
        self.epoch += 1
        replicator.epoch, replicator.epoch_seq = self.epoch, self.next_seq
        replicator.sealed_upto = self._active_first
        await self.append([{"k": "epoch", "epoch": self.epoch, "owner": self.owner}])
        self._opened()

    def _opened(self) -> None:
        log.info("journal_opened", storage=self.backend.uri, epoch=self.epoch, next_seq=self.next_seq,
                 live=len(self._live), torn_bytes=self.torn_bytes)

    def _recover_local(self) -> None:
        self.backend.lock(self.owner)
        self._load_snapshot()
        refs = self.backend.segments()
        for i, ref in enumerate(refs):
            self._recover_segment(ref, last=i == len(refs) - 1)
        tail = self._segments[-1] if self._segments else None
        if tail is not None and not tail.ref.sealed:
            self._active_first = tail.ref.first_seq
            self._active = self.backend.open_active(self._active_first)
        else:
            self._start_segment(self.next_seq)

    def _adopt(self, data: bytes) -> None:
        """Take records another replica holds past this log's end (catch-up at recovery)."""
        records, _end = codec.scan(data, "<replica>")
        keep = [r for r in records if r["q"] >= self.next_seq]
        if not keep or keep[0]["q"] != self.next_seq:
            raise JournalUnavailable(f"no replica holds the records from {self.next_seq} on")
        for r in keep:
            self._index(r)
        self.next_seq = keep[-1]["q"] + 1
        self._write_now_frames([codec.encode(r) for r in keep], self.next_seq - 1)
        log.warning("journal_caught_up", records=len(keep), next_seq=self.next_seq)

    def _recover_segment(self, ref: SegmentRef, last: bool) -> None:
        where = self.backend.describe(ref)
        buf = self.backend.read(ref)
        records, end = codec.scan(buf, where)
        if end < len(buf):
            if ref.sealed or not last:
                raise JournalCorrupt(where, end, "damaged record at the end of a segment that is not the log's tail")
            log.warning("torn_tail_truncated", segment=where, offset=end, bytes=len(buf) - end)
            self.torn_bytes += len(buf) - end
            self.backend.truncate(ref, end)
        if ref.first_seq > self.next_seq:
            raise JournalCorrupt(where, 0, f"segment starts at {ref.first_seq}: "
                                           f"records from {self.next_seq} are missing")
        if ref.first_seq < self.next_seq and ref.first_seq > self.snapshot_seq:
            raise JournalCorrupt(where, 0, f"segment starts at {ref.first_seq}, before {self.next_seq}")
        expected = ref.first_seq
        for r in records:
            if r["q"] != expected:
                raise JournalCorrupt(where, -1, f"record {r['q']} where {expected} was expected")
            expected += 1
            if r["q"] > self.snapshot_seq:  # older ones are in the snapshot already
                self._index(r)
        self.next_seq = max(self.next_seq, expected)
        if ref.sealed and expected - 1 <= self.snapshot_seq:
            self.backend.delete(ref)  # wholly in the snapshot: a compaction that was cut short
            return
        self._segments.append(_Segment(ref, expected - 1))

    def _index(self, r: codec.Record) -> None:
        self.table.apply(r)
        kind, wid = r["k"], str(r.get("w"))
        if kind == "submitted":
            if wid not in self._finished:
                self._live.setdefault(wid, ([], []))
        elif kind in STEP_KINDS:
            steps = self._live.get(wid)
            if steps is not None:
                lst = steps[STEP_KINDS[kind]]
                if r["step"] == len(lst):
                    lst.append(Outcome(r["step"], r["service"], r["value"]))
        elif kind in TERMINAL:
            self._live.pop(wid, None)
            self._finished.add(wid)
        elif kind == "forgotten":
            self._finished.discard(wid)
        elif kind == "epoch":
            self.epoch = max(self.epoch, r["epoch"])

    # --- appends ------------------------------------------------------------------

    def _stamp(self, record: codec.Record) -> codec.Record:
        record["v"], record["q"] = codec.VERSION, self.next_seq
        self.next_seq += 1
        return record

    def _admit(self, r: codec.Record, undo: list[Callable[[], object]]) -> tuple[bool, Any]:
        """Whether to journal ``r``, and the value to answer its writer with; ``undo`` gets its reversal."""
        kind, wid = r.get("k"), str(r.get("w"))
        if kind not in codec.KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        if kind in STEP_KINDS:
            steps = self._live.get(wid)
            if steps is None:
                return False, None  # finished or unknown: a late writer, nothing to keep
            lst, step = steps[STEP_KINDS[kind]], r["step"]
            if step < len(lst):
                return False, lst[step].value
            if step > len(lst):
                raise ValueError(f"{kind} step {step} of {wid} skips step {len(lst)}")
            lst.append(Outcome(step, r["service"], r["value"]))
            undo.append(lst.pop)
            return True, r["value"]
        if kind == "submitted":
            if wid in self._live or wid in self._finished:
                return False, None
            self._live[wid] = ([], [])
            undo.append(lambda: self._live.pop(wid))
        elif kind in TERMINAL:
            if wid in self._finished:
                return False, None
            steps = self._live.pop(wid, None)
            self._finished.add(wid)
            undo.append(lambda: self._reopen(wid, steps))
        return True, None

    def _reopen(self, wid: str, steps: tuple[list[Outcome], list[Outcome]] | None) -> None:
        self._finished.discard(wid)
        if steps is not None:
            self._live[wid] = steps

    async def append(self, records: list[codec.Record]) -> list[Any]:
        """Journal ``records`` durably; return, per record, the value the journal holds."""
        if self._failure is not None:
            raise JournalUnavailable(f"journal failed: {self._failure}")
        answers: list[Any] = []
        frames: list[bytes] = []
        first_seq, undo = self.next_seq, list[Callable[[], object]]()
        kept: list[codec.Record] = []
        try:
            for r in records:
                keep, value = self._admit(r, undo)
                answers.append(value)
                if keep:
                    frames.append(codec.encode(self._stamp(r)))
                    kept.append(r)
        except BaseException:
            # A bad record (unknown kind, a skipped step, an unencodable value) fails the
            # whole call and leaves nothing behind: a stamped but unwritten record would
            # leave a hole in the sequence that the next `open` reads as corruption.
            self.next_seq = first_seq
            for step in reversed(undo):
                step()
            raise
        batch = self._open_batch()
        batch.frames.extend(frames)
        batch.records.extend(kept)
        batch.last_seq = self.next_seq - 1
        assert batch.future is not None
        await asyncio.shield(batch.future)
        return answers

    def _open_batch(self) -> _Batch:
        if self._flusher is None:
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        if self._open is None:
            self._open = _Batch(future=asyncio.get_running_loop().create_future())
            assert self._wake is not None
            self._wake.set()
        return self._open

    async def _flush_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.seal_idle_s)
            except TimeoutError:
                await loop.run_in_executor(self._pool, self._seal_idle)
                continue
            self._wake.clear()
            batch, self._open = self._open, None
            if batch is None:
                continue
            assert batch.future is not None
            try:
                await loop.run_in_executor(self._pool, self._write_now_frames, batch.frames, batch.last_seq)
            except Exception as exc:  # the one catch-all: any failed write fails the journal
                self._failure = exc
                log.error("journal_write_failed", error=repr(exc))
                batch.future.set_exception(JournalUnavailable(f"journal write failed: {exc}"))
                return
            if self.replicator is not None and batch.frames:
                try:
                    await self._replicate(batch)
                except JournalUnavailable as exc:
                    # Not acknowledged; the records stay in this log and reach the
                    # followers by catch-up with a later batch, when a majority is back.
                    batch.future.set_exception(exc)
                    self._applied(batch)
                    continue
            batch.future.set_result(None)
            self._applied(batch)
            if self._since_snapshot >= self.snapshot_records:
                try:
                    await self.snapshot()
                except OSError as exc:  # a failed snapshot costs start-up time, never data
                    log.error("snapshot_failed", error=repr(exc))

    def _seal_idle(self) -> None:
        """An idle log seals its tail, so the object store holds it (s3: off the node)."""
        if self._open is None and self._active is not None and self._active.size() > 0 and self._segments:
            self._seal_active(self._segments[-1].last_seq)
            log.info("idle_segment_sealed", up_to=self._segments[-2].last_seq if len(self._segments) > 1 else -1)

    def _applied(self, batch: _Batch) -> None:
        for r in batch.records:
            self.table.apply(r)
        self._since_snapshot += len(batch.records)

    async def _replicate(self, batch: _Batch) -> None:
        assert self.replicator is not None
        first = batch.last_seq - len(batch.frames) + 1
        self.replicator.sealed_upto = self._active_first
        await self.replicator.replicate(first, b"".join(batch.frames), len(batch.frames), self._frames_between)

    async def _frames_between(self, start: int, stop: int) -> bytes:
        """This log's records ``start <= q < stop``, framed (for a follower's catch-up)."""
        out = []
        for r in self.records(start):
            if r["q"] >= stop:
                break
            out.append(codec.encode(r))
        return b"".join(out)

    def _write_now(self, records: list[codec.Record]) -> None:
        self._write_now_frames([codec.encode(r) for r in records], self.next_seq - 1)

    def _write_now_frames(self, frames: list[bytes], last_seq: int) -> None:
        # ``last_seq`` is the batch's last record, not ``next_seq - 1``: this runs on the
        # fsync thread while appends keep stamping the next batch, whose records must go
        # to the segment that follows and be counted there.
        assert self._active is not None
        if frames:
            self._active.append(b"".join(frames))
        if self.fsync:
            self._active.sync()
        else:
            self._active.flush()
        self._segments[-1].last_seq = last_seq
        if self._active.size() >= self.segment_bytes:
            self._seal_active(last_seq)

    def _start_segment(self, first_seq: int) -> None:
        self._active_first = first_seq
        self._active = self.backend.open_active(self._active_first)
        self._segments.append(_Segment(SegmentRef(self._active_first, False), self._active_first - 1))

    def _seal_active(self, last_seq: int) -> None:
        assert self._active is not None
        self._active.sync()
        self._active.close()
        self.backend.seal(self._active_first)
        self._segments[-1] = _Segment(SegmentRef(self._active_first, True), last_seq)
        self._start_segment(last_seq + 1)

    # --- snapshots and compaction ---------------------------------------------------

    def _load_snapshot(self) -> None:
        names = self.backend.snapshots()
        if not names:
            return
        name = names[-1]
        data = self.backend.get_snapshot(name)
        records, end = codec.scan(data, f"snapshot {name}")
        if end != len(data) or len(records) != 1 or records[0]["k"] != "snapshot":
            raise JournalCorrupt(f"snapshot {name}", end, "snapshot is damaged")
        snap = records[0]
        for d in snap["workflows"]:
            wf = Workflow.from_dict(d)
            self.table.workflows[wf.id] = wf
            if wf.state.finished:
                self._finished.add(wf.id)
            else:
                self._live[wf.id] = (list(wf.outcomes), list(wf.compensations))
        self.table.mode, self.table.held = snap["mode"], snap["held"]
        self.snapshot_seq = self.table.last_seq = snap["q"]
        self.next_seq, self.epoch = snap["q"] + 1, snap["epoch"]
        log.info("snapshot_loaded", snapshot=name, seq=snap["q"], workflows=len(snap["workflows"]))

    async def snapshot(self) -> int:
        """Compact: forget workflows finished before the retention, seal the active
        segment, store the fold of every durable record as a snapshot, then delete the
        sealed segments and older snapshots it covers. Runs between two batches, so
        the fold is exactly the records up to the last durable one. Returns its seq."""
        gone = self.table.forget(self.clock() - self.retention_s) if math.isfinite(self.retention_s) else []
        self._finished.difference_update(gone)
        seq = self._segments[-1].last_seq if self._segments else -1
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._write_snapshot, seq)
        self._since_snapshot = 0
        log.info("snapshot_written", seq=seq, workflows=len(self.table.workflows), forgotten=len(gone))
        return seq

    def _write_snapshot(self, seq: int) -> None:
        if self._active is not None and self._active.size() > 0:
            self._seal_active(seq)
        record = {"v": codec.VERSION, "k": "snapshot", "q": seq, "epoch": self.epoch, "mode": self.table.mode,
                  "held": self.table.held, "workflows": [wf.to_dict() for wf in self.table.workflows.values()]}
        name = f"{seq:020d}.snap"
        self.backend.put_snapshot(name, codec.encode(record))
        self.snapshot_seq = seq
        for old in self.backend.snapshots():
            if old != name:
                self.backend.delete_snapshot(old)
        covered = [s for s in self._segments if s.ref.sealed and s.last_seq <= seq]
        for seg in covered:
            self.backend.delete(seg.ref)
        self._segments = [s for s in self._segments if s not in covered]

    def state(self, offset: int = 0, limit: int = 50_000) -> dict[str, Any]:
        """A page of the fold: every workflow kept (unfinished, or finished within the
        retention) as a dict, with the mode; what a supervisor starts from."""
        workflows = list(self.table.workflows.values())[offset:offset + limit]
        return {"mode": self.table.mode, "held": self.table.held, "total": len(self.table.workflows),
                "workflows": [wf.to_dict() for wf in workflows], "seq": self.table.last_seq}

    # --- reads --------------------------------------------------------------------

    def records(self, from_seq: int = 0) -> Iterator[codec.Record]:
        """Every durable record with ``q >= from_seq``, in order, read from storage."""
        for seg in list(self._segments):
            if seg.last_seq < from_seq:
                continue
            ref = seg.ref
            try:
                buf = self.backend.read(ref)
            except FileNotFoundError:  # sealed meanwhile: read the sealed copy
                ref = SegmentRef(ref.first_seq, True)
                buf = self.backend.read(ref)
            records, _ = codec.scan(buf, self.backend.describe(ref))
            for r in records:
                if r["q"] >= from_seq:
                    yield r

    def read(self, from_seq: int = 0, limit: int = 10_000) -> list[codec.Record]:
        out: list[codec.Record] = []
        for r in self.records(from_seq):
            out.append(r)
            if len(out) >= limit:
                break
        return out

    def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Durable outcomes of ``service`` (of workflows kept), in journal order."""
        return self.table.outcomes(service, since_seq, limit)

    def live_steps(self, workflow_ids: list[str]) -> dict[str, tuple[list[Outcome], list[Outcome]]]:
        """The journaled outcomes and compensations of unfinished workflows."""
        return {w: self._live[w] for w in workflow_ids if w in self._live}

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._active is not None:
            self._active.close()
            self._active = None
        self._pool.shutdown(wait=True)
        self.backend.unlock()
