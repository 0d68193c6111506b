"""The journal: recovery, group commit, and what its background work does on failure.

Group commit, as implemented by `Journal.append` and the flusher (`_flush_loop`):

1. ``append(records)`` checks each record against the `Index` (duplicates are dropped
   and answered with what the journal holds), gives the accepted ones sequence
   numbers, frames them into the open batch, and waits on that batch's future. A
   record that cannot be framed (unencodable, `codec.RecordTooLarge`) fails the whole
   call and leaves nothing behind.
2. The flusher takes the whole open batch and writes it to the active segment on the
   executor (`SegmentLog.write`: append, fsync), while new appends fill the next batch.
3. Once the write is durable (and, with replicas, held by a majority) the batch's
   future resolves: every caller's records are acknowledged together, one fsync for
   many records.
4. A failed write fails the batch being written and the open one with
   `JournalUnavailable` and rolls both back (sequence numbers and index); the next
   batch repairs the active segment (truncates it to its durable size) and writes
   again, so a storage that comes back serves appends without a restart.
5. `Fenced` from the storage (another coordinator took it) fails every pending and
   later append with `Fenced`; nothing is retried.
6. Between batches the flusher seals full or idle segments, retries failed seals and
   writes snapshots (`Maintenance`). Their failures never fail an append: they are
   logged and retried with exponential backoff.
7. If the flusher dies of an unexpected error, pending appends fail with
   `JournalUnavailable` and the next append starts a new flusher.

Recovery (`open`, `open_replicated`) is in `startup`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from actors.journal import codec
from actors.journal.backends import Backend, SegmentRef
from actors.journal.index import Index, Undo
from actors.journal.maintenance import Maintenance
from actors.journal.replica import Replicator
from actors.journal.segments import SegmentLog
from actors.journal.startup import Startup
from actors.journal.stored import Stored
from actors.records import Ended, Record, Step, Steps, from_wire, to_wire
from actors.workflow_state import WorkflowTable
from workflows.context import Outcome
from workflows.errors import Fenced, JournalUnavailable

log = structlog.get_logger("journal")
T = TypeVar("T")


@dataclass
class _Batch:
    future: asyncio.Future[None]
    frames: list[bytes] = field(default_factory=list)
    records: list[tuple[Record, int]] = field(default_factory=list)
    undo: Undo = field(default_factory=list)
    last_seq: int = -1
    durable: bool = False
    applied: bool = False

    @property
    def first_seq(self) -> int:
        return self.last_seq - len(self.frames) + 1


class Journal(Startup):
    """One replica's journal over a `Backend`; see the module docstring for the protocol.

    ``executor`` runs storage calls (a private one-thread pool when None; one given is
    not shut down by `close`); an inline executor makes the journal deterministic.
    """

    def __init__(self, backend: Backend, *, fsync: bool = True, segment_bytes: int = 64 << 20, owner: str = "",
                 snapshot_records: int = 100_000, retention_s: float = float("inf"), seal_idle_s: float = 60.0,
                 clock: Callable[[], float] = time.time, executor: concurrent.futures.Executor | None = None,
                 retry_min_s: float = 0.05, retry_max_s: float = 30.0, cache_size: int | None = None) -> None:
        self.backend = backend
        self.owner = owner
        self.clock = clock
        self.log = SegmentLog(backend, fsync=fsync, segment_bytes=segment_bytes)
        # The fold of the durable records: every workflow, or with a ``cache_size`` the
        # unfinished ones and the last ``cache_size`` to finish (`Stored` reads the others).
        self.table = WorkflowTable(cache_size)
        self.index = Index(self.table)
        self.index.finished.fetch = backend.get_blob
        self.stored = Stored(self)
        self.index.load = lambda w: self.stored.folds([w]).get(w)
        self.snapshot_seq = -1
        self.epoch = 0
        self.next_seq = 0
        self.torn_bytes = 0
        self.replicator: Replicator | None = None
        self._own_pool = executor is None
        self._pool = executor or concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                       thread_name_prefix="journal-fsync")
        self.maintenance = Maintenance(self, snapshot_records=snapshot_records, retention_s=retention_s,
                                       seal_idle_s=seal_idle_s, retry_min_s=retry_min_s, retry_max_s=retry_max_s)
        self._open: _Batch | None = None
        self._inflight: _Batch | None = None
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._fenced: Fenced | None = None

    # --- appends ------------------------------------------------------------------

    def _stamp(self, record: codec.Record) -> codec.Record:
        """Give a wire map the next sequence number (the epoch record of `Startup`)."""
        record["v"], record["q"] = codec.VERSION, self.next_seq
        self.next_seq += 1
        return record

    async def append(self, records: list[Record]) -> list[Any]:
        """Journal ``records`` durably; return, per record, the value the journal holds.

        That is the value held for a step; None for another kept record; for a dropped
        duplicate ``submitted``, `Known`; for a record of an ended workflow, `Ended`
        (see `Index`). Raises `JournalUnavailable` if the
        write failed (the records may be journaled or not), `Fenced` once fenced.
        """
        if self._fenced is not None:
            raise self._fenced
        answers: list[Any] = []
        frames: list[bytes] = []
        first_seq, undo = self.next_seq, Undo()
        kept: list[tuple[Record, int]] = []
        try:
            for r in records:
                keep, value = self.index.admit(r, undo)
                answers.append(value)
                if keep:
                    frames.append(codec.encode(to_wire(r, self.next_seq)))
                    kept.append((r, self.next_seq))
                    self.next_seq += 1
        except BaseException:
            # A bad record (unknown kind, a skipped step, an unencodable or oversized
            # value) fails the whole call and leaves nothing behind: a stamped but
            # unwritten record would leave a hole in the sequence that the next `open`
            # reads as corruption.
            self.next_seq = first_seq
            for step in reversed(undo):
                step()
            raise
        batch = self._open_batch()
        batch.frames.extend(frames)
        batch.records.extend(kept)
        batch.undo.extend(undo)
        batch.last_seq = self.next_seq - 1
        await asyncio.shield(batch.future)
        return answers

    def _open_batch(self) -> _Batch:
        self._ensure_flusher()
        if self._open is None:
            self._open = _Batch(asyncio.get_running_loop().create_future(), last_seq=self.next_seq - 1)
            self.wake()
        return self._open

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _ensure_flusher(self) -> None:
        if self._flusher is None:
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
            self._flusher.add_done_callback(self._flusher_done)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` on the executor: storage calls never block the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _flush_loop(self) -> None:
        assert self._wake is not None
        while self._fenced is None:
            with contextlib.suppress(TimeoutError):  # work fell due before a batch came
                await asyncio.wait_for(self._wake.wait(), self.maintenance.delay())
            self._wake.clear()
            batch, self._open = self._open, None
            if batch is not None:
                self._inflight = batch
                await self._flush(batch)
                self._inflight = None
            if self._fenced is None:
                await self.maintenance.run(idle=batch is None)

    async def _flush(self, batch: _Batch) -> None:
        try:
            keys = [(getattr(r, "workflow_id", None), r.service if isinstance(r, Step) else None)
                    for r, _ in batch.records]
            await self.run(self.log.write, batch.frames, batch.last_seq, keys)
        except Fenced as exc:
            self.fence(exc)
            return
        except Exception as exc:  # the one catch-all of the write path: any storage error
            log.error("journal_write_failed", error=repr(exc))
            self._fail_pending(JournalUnavailable(f"journal write failed: {exc}"))
            return
        batch.durable = True
        self.maintenance.written()
        if self.replicator is not None and batch.frames:
            try:
                await self._replicate(batch)
            except JournalUnavailable as exc:
                # Not acknowledged; the records stay in this log and reach the
                # followers by catch-up with a later batch, when a majority is back.
                self._applied(batch)
                batch.future.set_exception(exc)
                return
        self._applied(batch)
        batch.future.set_result(None)

    def _applied(self, batch: _Batch) -> None:
        for r, q in batch.records:
            self.table.apply(r, q)
        self.index.written([r for r, _ in batch.records])
        self.maintenance.since_snapshot += len(batch.records)
        batch.applied = True

    def _fail_pending(self, error: BaseException) -> None:
        """Fail the batch being written and the open one; roll back what is not durable."""
        batches = [b for b in (self._inflight, self._open) if b is not None]
        self._open = None
        undone = [b for b in batches if not b.durable]
        for b in reversed(undone):
            for step in reversed(b.undo):
                step()
        if undone:
            self.next_seq = undone[0].first_seq
        for b in batches:
            if b.durable and not b.applied:
                self._applied(b)
            if not b.future.done():
                b.future.set_exception(error)
                b.future.exception()  # retrieved here: a batch may have no waiter left

    def fence(self, exc: Fenced) -> None:
        """Another coordinator holds the storage: fail everything pending and to come."""
        log.error("journal_fenced", error=str(exc))
        self._fenced = exc
        self._fail_pending(exc)
        self.maintenance.fail_waiters(exc)
        self.wake()

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        if self._flusher is task:
            self._flusher = None
        if task.cancelled():
            self._fail_pending(JournalUnavailable("journal closed"))
            return
        exc = task.exception()
        if exc is not None:
            log.error("journal_flusher_died", error=repr(exc))
            error = JournalUnavailable(f"journal flusher died: {exc!r}")
            self._fail_pending(error)
            self.maintenance.fail_waiters(error)

    async def _replicate(self, batch: _Batch) -> None:
        assert self.replicator is not None
        self.replicator.sealed_upto = self.log.sealed_upto
        await self.replicator.replicate(batch.first_seq, b"".join(batch.frames), len(batch.frames),
                                        self._frames_between)

    async def _frames_between(self, start: int, stop: int) -> bytes:
        """This log's records ``start <= q < stop``, framed (for a follower's catch-up)."""
        return b"".join(codec.encode(r) for r in itertools.takewhile(lambda r: r["q"] < stop, self.records(start)))

    def _write_now(self, records: list[codec.Record]) -> None:
        """Write stamped wire maps at once, before any append (the epoch record of `Startup`)."""
        self.log.write([codec.encode(r) for r in records], self.next_seq - 1)
        for r in records:
            self.table.apply(from_wire(r), r["q"])

    # --- snapshots ------------------------------------------------------------------

    async def snapshot(self) -> int:
        """Compact now, between two batches (see `Maintenance.snapshot`); returns the snapshot's seq."""
        if self._fenced is not None:
            raise self._fenced
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.maintenance.waiters.append(waiter)
        self._ensure_flusher()
        self.wake()
        return await waiter

    def state(self, offset: int = 0, limit: int = 50_000) -> dict[str, Any]:
        """A page of the fold held in memory, as dicts, with the mode; what a supervisor starts from."""
        workflows = list(self.table.workflows.values())[offset:offset + limit]
        return {"mode": self.table.mode, "held": self.table.held, "total": len(self.table.workflows),
                "deployments": self.table.deployments,
                "workflows": [wf.to_dict() for wf in workflows], "seq": self.table.last_seq}

    # --- reads --------------------------------------------------------------------

    def records(self, from_seq: int = 0) -> Iterator[codec.Record]:
        """Every durable record with ``q >= from_seq``, in order, read from storage."""
        for seg in list(self.log.segments):
            if seg.last_seq < from_seq:
                continue
            ref, last = seg.ref, seg.last_seq
            try:
                buf = self.backend.read(ref)
            except FileNotFoundError:  # sealed meanwhile: read the sealed copy
                ref = SegmentRef(ref.first_seq, True)
                buf = self.backend.read(ref)
            records, _ = codec.scan(buf, self.backend.describe(ref))
            for r in records:
                if from_seq <= r["q"] <= last:  # not past what is durable
                    yield r

    def read(self, from_seq: int = 0, limit: int = 10_000) -> list[codec.Record]:
        return list(itertools.islice(self.records(from_seq), limit))

    def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Durable outcomes of ``service`` (of workflows kept), in journal order."""
        return self.stored.outcomes(service, since_seq, limit)

    def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.stored.lookup(workflow_ids)

    def page(self, state: str | None, type_part: str | None, before: int | None, limit: int) -> dict[str, Any]:
        """A page of finished workflows, the last to end first, by cursor (`Stored.page`)."""
        return self.stored.page(state, type_part, before, limit)

    def finished_counts(self) -> dict[str, int]:
        """The finished workflows the journal keeps (in memory or only on storage), by state."""
        return self.index.finished.counts()

    def history(self, workflow_id: str) -> list[dict[str, Any]]:
        """The durable records of a workflow's last run, in journal order (`Stored.history`)."""
        return self.stored.history(workflow_id)

    def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        return self.stored.finished_page(state, limit, exclude)

    def live_steps(self, workflow_ids: list[str]) -> dict[str, Steps | Ended]:
        """The journaled outcomes and compensations of unfinished workflows, and for
        one whose terminal record is durable, that record (`Ended`). An id whose end
        is not durable yet, or that the journal does not know, is left out."""
        found: dict[str, Steps | Ended] = {}
        for w in workflow_ids:
            entry = self.index.live.get(w) or self.index.durable_end(w)
            if entry is not None:
                found[w] = entry
        return found

    def steps_of(self, workflow_ids: list[str]) -> dict[str, list[Outcome]]:
        """The durable outcomes of each workflow kept among ``workflow_ids`` (for status)."""
        return self.stored.steps_of(workflow_ids)

    async def drain(self) -> None:
        """Wait until every append made so far is written or has failed: a graceful
        close calls it first, so what a caller saw in memory is not dropped at close."""
        pending = [b.future for b in (self._inflight, self._open) if b is not None]
        if pending:
            await asyncio.wait(pending)

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.log.close()
        if self._own_pool:
            self._pool.shutdown(wait=True)
        self.backend.unlock()
