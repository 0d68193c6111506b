"""The journal's background work between batches: sealing, seal retries, snapshots.

It runs on the flusher (`Journal._flush_loop`), after a batch or when work falls
due, so it never overlaps a write. None of it can fail an append:

- A full segment, or one idle for ``seal_idle_s``, is sealed into the object store. If
  the store refuses, appends go on in a new active segment and the seal is retried.
- A snapshot every ``snapshot_records`` records compacts the log. If it fails, start-up
  reads more log until one succeeds; nothing else is lost.
- Any failure (an `OSError`, an S3 client error, ...) is logged and all background
  work waits an exponential backoff, ``retry_min_s`` doubling up to ``retry_max_s``.
  `Fenced` is not retried: it fences the journal.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import structlog

from actors.journal import recovery
from actors.journal.backends import Backend, SegmentRef
from actors.journal.ends import Chunk, EndLog, encode_hashes
from actors.journal.index import Index
from actors.journal.segments import SegmentLog
from actors.tuning import release_memory
from actors.workflow_state import WorkflowTable
from workflows.errors import Fenced

log = structlog.get_logger("journal")
T = TypeVar("T")


class Compactable(Protocol):
    """What the background work reads and changes of its `journal.Journal`."""

    backend: Backend
    log: SegmentLog
    table: WorkflowTable
    index: Index
    clock: Callable[[], float]
    epoch: int
    snapshot_seq: int

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` on the journal's storage executor."""
        ...

    def fence(self, exc: Fenced) -> None: ...


class Maintenance:
    """When background work is due, and doing it; see the module docstring."""

    def __init__(self, journal: Compactable, *, snapshot_records: int, retention_s: float, seal_idle_s: float,
                 retry_min_s: float, retry_max_s: float) -> None:
        self.journal = journal
        self.snapshot_records = snapshot_records
        self.retention_s = retention_s
        self.seal_idle_s = seal_idle_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.since_snapshot = 0
        self.waiters: list[asyncio.Future[int]] = []  # explicit `Journal.snapshot` calls
        self.failures = 0
        self._last_write: float | None = None
        self._newest: dict[int, float] = {}  # per sealed segment with no unfinished workflow, its newest end
        self._retry_at: float | None = None

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def written(self) -> None:
        self._last_write = self._now()

    def _due_at(self) -> float | None:
        """Loop time at which background work is next due, backoff aside; None for none."""
        now = self._now()
        log_ = self.journal.log
        if log_.pending or log_.full or self.since_snapshot >= self.snapshot_records \
                or self.journal.index.finished.spill_due():
            return now
        if log_.active_bytes > 0:
            if self._last_write is None:
                self._last_write = now
            return self._last_write + self.seal_idle_s
        return None

    def delay(self) -> float | None:
        """Seconds the flusher may wait for a batch before work falls due (None: no work)."""
        if self.waiters:
            return 0.0
        due = self._due_at()
        if due is None:
            return None
        if self._retry_at is not None:
            due = max(due, self._retry_at)
        return max(0.0, due - self._now())

    async def run(self, *, idle: bool) -> None:
        """Do the work that is due (all of it, for an explicit snapshot)."""
        due = self._due_at()
        now = self._now() + 1e-3  # a timer may fire a hair early
        if not self.waiters and (due is None or now < due or (self._retry_at is not None and now < self._retry_at)):
            return
        j = self.journal
        try:
            if j.log.pending:
                await j.run(j.log.seal_pending)
            if j.log.full or (j.log.active_bytes > 0 and self._last_write is not None
                              and now >= self._last_write + self.seal_idle_s):
                await j.run(j.log.rotate)
                log.info("segment_sealed", up_to=j.log.last_seq, idle=idle)
            if j.index.finished.spill_due():
                await self.spill()
            if self.waiters or self.since_snapshot >= self.snapshot_records:
                await self.snapshot()
        except Fenced as exc:
            j.fence(exc)
            return
        except Exception as exc:  # any storage error (OSError, the S3 client's, ...): retried with backoff
            self.failures += 1
            backoff = min(self.retry_max_s, self.retry_min_s * 2 ** min(self.failures - 1, 30))
            self._retry_at = self._now() + backoff
            log.error("journal_background_failed", error=repr(exc), retry_in_s=backoff, failures=self.failures)
            self.fail_waiters(exc)
            return
        self.failures, self._retry_at = 0, None

    def fail_waiters(self, exc: BaseException) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self.waiters.clear()

    async def spill(self) -> None:
        """Store the oldest chunk of ends held in memory (`ends.Ends`) and let it go from
        memory; a snapshot after it names the chunk."""
        ends = self.journal.index.finished
        part, spans = ends.take()
        chunk = ends.chunk_of(part)
        await self.journal.run(self._put_chunk, chunk, part)
        ends.spilled(chunk, part, spans)
        await self.journal.run(release_memory)
        log.info("ends_spilled", chunk=chunk.name, ends=chunk.count, chunks=len(ends.chunks))

    def _put_chunk(self, chunk: Chunk, part: EndLog) -> None:
        backend = self.journal.backend
        backend.put_blob(chunk.name + ".h", encode_hashes(chunk.hashes))
        backend.put_blob(chunk.name, part.encode())

    async def snapshot(self) -> int:
        """Compact: forget workflows finished before the retention, seal the active
        segment, store the fold of every durable record as a snapshot, then delete the
        sealed segments and older snapshots it covers. Runs between two batches, so
        the fold is exactly the records up to the last durable one. Returns its seq."""
        j = self.journal
        ends = j.index.finished
        kept = dict(j.table.workflows)
        before = ends.forgotten_before
        gone: list[str] = []
        if math.isfinite(self.retention_s):
            watermark = j.clock() - self.retention_s
            gone = j.table.forget(watermark)
            gone += [w for w, t in ends.hot.items() if t < watermark and w not in kept]  # and those evicted
            ends.forgotten_before = max(before, watermark)  # and those on storage
        ended = {w: t for w in gone if (t := ends.hot.get(w)) is not None}
        try:
            seq = await j.run(self._write)
        except BaseException:
            j.table.workflows = kept  # forgotten only once a snapshot without them is stored
            ends.forgotten_before = before
            raise
        j.index.forget([w for w in ended if ends.hot.get(w) == ended[w]])
        dropped = ends.forget_chunks()
        if dropped:
            await j.run(self._delete_chunks, dropped)
        self.since_snapshot = 0
        j.index.compact()
        await j.run(release_memory)
        log.info("snapshot_written", seq=seq, workflows=len(j.table.workflows), forgotten=len(gone))
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(seq)
        self.waiters.clear()
        return seq

    def _write(self) -> int:
        j = self.journal
        if j.log.active_bytes > 0:
            j.log.rotate()
        seq = j.log.last_seq
        held, kept = j.table.workflows, j.index.finished
        # The ends in memory in the order they ended (those on storage by their chunks).
        ends = [e for e in kept.log.entries(kept.current) if e[0] not in held]
        data = recovery.encode_snapshot(seq, j.epoch, j.table.mode, j.table.held,
                                        [wf.to_dict() for wf in j.table.workflows.values()], j.table.deployments,
                                        [(w, t) for w, t, _, _ in ends], [(k, ty) for _, _, k, ty in ends],
                                        [c.describe() for c in kept.chunks if c.max_t >= kept.forgotten_before],
                                        kept.log.next_pos, kept.forgotten_before)
        name = f"{seq:020d}.snap"
        j.backend.put_snapshot(name, data)
        j.snapshot_seq = seq
        for old in j.backend.snapshots():
            if old != name:
                j.backend.delete_snapshot(old)
        # With a cache, the segments hold the workflows evicted from the fold: a segment
        # goes once none of its workflows is kept (each unfinished, or finished and not
        # yet forgotten by retention); one that mixes them stays until its last is forgotten.
        j.log.delete_covered(seq, None if j.table.cache_size is None else self._keeps)
        stored = {g.ref.first_seq for g in j.log.segments}
        for first_seq in [s for s in self._newest if s not in stored]:
            del self._newest[first_seq]
        return seq

    def _keeps(self, ref: SegmentRef) -> bool:
        """Whether the sealed segment ``ref`` holds a workflow still kept. Once none of its
        workflows is unfinished, the newest of their ends is noted: later snapshots
        compare it with the retention and read neither its index nor the ends again."""
        j = self.journal
        newest = self._newest.get(ref.first_seq)
        if newest is None:
            ids = j.log.indexes.load(ref).workflows
            if any(w in j.index.live for w in ids):
                return True
            newest = max((t for w in ids if (t := j.index.finished.get(w)) is not None), default=-math.inf)
            self._newest[ref.first_seq] = newest
        return newest >= j.index.finished.forgotten_before

    def _delete_chunks(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            for name in (chunk.name, chunk.name + ".h"):
                try:
                    self.journal.backend.delete_blob(name)
                except Exception as exc:  # an orphan chunk is harmless: no snapshot names it
                    log.warning("end_chunk_delete_failed", chunk=name, error=repr(exc))
