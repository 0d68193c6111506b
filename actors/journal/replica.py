"""Journal replication: followers that mirror the leader's log, and the leader's fan-out.

The leader (replica 0, the `Journal` the writers talk to) acknowledges a batch once a
majority of replicas, itself included, has written and fsynced it. Every epoch (a
leader start) begins with its ``epoch`` record; record ``q`` is of the last epoch begun
at or before ``q`` (`epochs`).

1. The leader writes and fsyncs the batch to its own active segment (`Journal`).
2. It sends the batch's frames and first sequence number to every follower, one send
   at a time per follower so each sees batches in order, with the epoch of its own
   record before the batch and where that epoch began.
3. A follower holding that record, or any of the batch's, from another epoch than the
   leader's cuts its log at the first record that cannot be the leader's. It answers
   "held" only for records of the leader's epochs; at the batch's first record it
   appends the rest, fsyncs, and answers its new end.
4. An end below the batch gets the missing records from the leader's log (catch-up,
   checked as in 3: again from a lower end if it cut more), then the batch.
5. Once ``majority - 1`` followers have answered, the batch is durable and its appends
   are acknowledged; slower followers keep receiving in the background.
6. If too few followers answer within ``timeout_s``, the batch fails with
   `JournalUnavailable`: nothing is acknowledged that a majority does not hold.

A follower forgets segments below ``sealed_upto`` (the object store holds them); the
epoch of its first kept record is written first to a metadata object, so after a
restart it still knows the epochs of all it holds and cuts none of it.

A new epoch begins at the end of the most up-to-date log among a majority of replicas:
the leader adopts, of the followers holding its own last record, the tail with the
newest last epoch, then the longest; its epoch is past any epoch seen in their tails.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlparse

import structlog

from actors.journal import codec, recovery
from actors.journal import epochs as ep
from actors.journal.backends import ActiveSegment, Backend, MemoryBackend, SegmentRef
from actors.journal.codec import frame_bounds
from actors.journal.files import FileBackend
from actors.journal.storage import open_backend
from workflows.errors import JournalUnavailable

log = structlog.get_logger("replica")

__all__ = ["Follower", "Replica", "Replicator", "frame_bounds", "replica_backend"]

CATCH_UP_ROUNDS = 16  # each round past the first cuts at least one of the follower's epochs


def replica_backend(uri: str, replica: int) -> Backend:
    """Where follower ``replica`` keeps its copy: beside a ``file://`` journal, else node-local."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return FileBackend(os.path.join(parsed.path, "replicas", str(replica)))
    if parsed.scheme == "mem":
        return MemoryBackend(f"{parsed.netloc}{parsed.path}/replica-{replica}")
    leader = open_backend(uri)
    local = getattr(leader, "local", None)
    if not isinstance(local, FileBackend):
        raise ValueError(f"storage {uri!r} has no local directory for replicas")
    return FileBackend(f"{local.root}-replica-{replica}")


class Replica:
    """A follower's copy of the log in its own local segments."""

    def __init__(self, backend: Backend, *, fsync: bool = True, segment_bytes: int = 64 << 20,
                 owner: str = "") -> None:
        self.backend = backend
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.owner = owner
        self.next_seq = 0
        self.epochs = ep.Epochs()
        self.floor = ep.FloorStore(backend)
        self._active: ActiveSegment | None = None
        self._segments: list[int] = []  # first seqs, ascending

    @property
    def epoch(self) -> int:
        """The epoch of the newest record held."""
        return self.epochs.last

    @property
    def base(self) -> int:
        """The first sequence number held (``next_seq`` when nothing is)."""
        return self._segments[0] if self._segments else self.next_seq

    def open(self) -> None:
        self.backend.lock(self.owner)
        refs = [r for r in self.backend.segments() if not r.sealed]
        floor = self.floor.load() if refs else None
        if floor is not None and floor[0] > refs[0].first_seq:  # a drop cut short: finish it
            while len(refs) > 1 and refs[1].first_seq <= floor[0]:
                self.backend.delete(refs.pop(0))
        if floor is not None and floor[0] == refs[0].first_seq:
            self.epochs.add(*floor[1])
        for i, ref in enumerate(refs):
            seg = recovery.scan_segment(self.backend, ref, tail=i == len(refs) - 1)
            if seg.torn_bytes:
                self.backend.truncate(ref, seg.valid_end)
            records = seg.records
            for r in records:
                if r["k"] == "epoch":
                    self.epochs.add(r["epoch"], r["q"])
            if records:
                self.next_seq = records[-1]["q"] + 1
            elif ref.first_seq > self.next_seq:
                self.next_seq = ref.first_seq
            self._segments.append(ref.first_seq)
        if self._segments:
            self._active = self.backend.open_active(self._segments[-1])

    def _rotate(self) -> None:
        if self._active is not None:
            self._active.close()
        self._active = self.backend.open_active(self.next_seq)
        if not self._segments or self._segments[-1] != self.next_seq:
            self._segments.append(self.next_seq)

    def accept(self, epoch: int, epoch_seq: int, first_seq: int, data: bytes, count: int,
               sealed_upto: int = 0) -> int:
        """Take ``count`` framed records from ``first_seq`` on; return the log's new end.

        ``epoch`` is the leader's epoch of record ``first_seq - 1`` and ``epoch_seq`` where
        that epoch began (-1: not known). Records held that are of another epoch than the
        leader's at the same point are cut (see the module doc); an end below
        ``first_seq`` asks the leader for the records from there.
        """
        if self.next_seq < sealed_upto <= first_seq:
            self.reset_to(sealed_upto)  # what it lacks is in the object store already
        if first_seq > self.next_seq:
            return self.next_seq  # behind: the leader catches it up
        marks = ep.epoch_marks(data, first_seq)
        before = (epoch, epoch_seq)
        conflict = ep.first_conflict(self.epochs, self.base, before, first_seq, marks,
                                  min(self.next_seq, first_seq + count))
        if conflict is not None and conflict < first_seq:  # its record before the batch is not the leader's
            self.truncate_to(ep.cut_point(self.epochs, self.base, before, first_seq - 1))
            return self.next_seq
        if conflict is not None:
            self.truncate_to(conflict)
        if first_seq + count <= self.next_seq:
            return self.next_seq  # already held, the leader's epochs throughout
        if self.next_seq == self.base:
            self._begin_at(ep.leader_epoch(before, marks, self.next_seq - 1))
        skip = self.next_seq - first_seq
        if skip:
            data = data[frame_bounds(data)[skip][0]:]
        if self._active is None or self._active.size() >= self.segment_bytes:
            self._rotate()
        assert self._active is not None
        self._active.append(data)
        if self.fsync:
            self._active.sync()
        else:
            self._active.flush()
        for e, q in marks:
            if q >= self.next_seq:
                self.epochs.add(e, q)
        self.next_seq = first_seq + count
        self._drop_below(sealed_upto)
        return self.next_seq

    def _begin_at(self, floor: ep.Boundary) -> None:
        """Nothing is held: the first record taken is of the leader's epoch ``floor``."""
        self.epochs.clear()
        if floor[0] != ep.UNKNOWN:
            self.floor.save(self.next_seq, floor)
            self.epochs.add(*floor)

    def _drop_below(self, sealed_upto: int) -> None:
        """Forget local segments wholly below ``sealed_upto``: the object store holds them.
        The epoch of the first record kept is written first, as its epoch record may go."""
        keep = 0
        while keep + 1 < len(self._segments) and self._segments[keep + 1] <= sealed_upto:
            keep += 1
        if not keep:
            return
        base = self._segments[keep]
        floor = self.epochs.at(base)
        if floor is not None:
            self.floor.save(base, floor)
            self.epochs.trim(base)
        for first in self._segments[:keep]:
            self.backend.delete(SegmentRef(first, False))
        del self._segments[:keep]

    def reset_to(self, seq: int) -> None:
        """Drop the whole local log and continue at ``seq``."""
        if self._active is not None:
            self._active.close()
            self._active = None
        for first in self._segments:
            self.backend.delete(SegmentRef(first, False))
        self._segments.clear()
        self.epochs.clear()
        self.next_seq = seq

    def truncate_to(self, seq: int) -> None:
        """Cut every record at or after ``seq`` (records no leader's log holds there)."""
        log.warning("replica_truncated", storage=self.backend.uri, from_seq=seq, to_seq=self.next_seq)
        if seq <= self.base:
            self.reset_to(min(self.base, self.next_seq))
            return
        if self._active is not None:
            self._active.close()
            self._active = None
        while self._segments[-1] >= seq:
            self.backend.delete(SegmentRef(self._segments.pop(), False))
        ref = SegmentRef(self._segments[-1], False)
        buf = self.backend.read(ref)
        bounds = frame_bounds(buf)
        keep = seq - ref.first_seq
        self.backend.truncate(ref, bounds[keep][0] if keep < len(bounds) else len(buf))
        self._active = self.backend.open_active(ref.first_seq)
        self.epochs.cut(seq)
        self.next_seq = min(self.next_seq, seq)

    def read(self, from_seq: int) -> tuple[int, bytes]:
        """Framed records from ``from_seq`` on (or from the first held): (first seq, bytes)."""
        chunks: list[bytes] = []
        start = None
        for first in self._segments:
            buf = self.backend.read(SegmentRef(first, False))
            bounds = frame_bounds(buf)
            if first + len(bounds) <= from_seq:
                continue
            skip = max(0, from_seq - first)
            if start is None:
                start = first + skip
            if skip < len(bounds):
                chunks.append(buf[bounds[skip][0]:])
        return (start if start is not None else self.next_seq), b"".join(chunks)

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
        self.backend.unlock()


class Follower(Protocol):
    async def accept(self, epoch: int, epoch_seq: int, first_seq: int, data: bytes, count: int,
                     sealed_upto: int) -> int: ...

    async def read(self, from_seq: int) -> tuple[int, bytes]: ...

    async def end(self) -> int: ...


class Replicator:
    """The leader's side: fans batches out to followers and waits for a majority."""

    def __init__(self, followers: list[Follower], *, timeout_s: float = 10.0) -> None:
        self.followers = followers
        self.timeout_s = timeout_s
        self.majority = (len(followers) + 1) // 2 + 1
        self._locks = [asyncio.Lock() for _ in followers]
        self.epoch = 0
        self.epoch_seq = 0
        self.sealed_upto = 0
        self.epochs = ep.Epochs()  # of the leader's log
        self.known_from = 0  # the epochs of records below this one are not known (a snapshot holds them)

    def begin(self, epoch: int, epoch_seq: int, epochs: ep.Epochs, known_from: int) -> None:
        """Start epoch ``epoch`` at ``epoch_seq``, after a log with ``epochs`` from ``known_from`` on."""
        self.epoch, self.epoch_seq, self.epochs, self.known_from = epoch, epoch_seq, epochs, known_from
        epochs.add(epoch, epoch_seq)

    def before(self, seq: int) -> ep.Boundary:
        """The leader's epoch of record ``seq - 1`` and where that epoch began."""
        if seq <= 0:
            return 0, 0
        if seq - 1 < self.known_from:
            return ep.UNKNOWN, ep.UNKNOWN
        return self.epochs.at(seq - 1) or (0, 0)

    async def replicate(self, first_seq: int, data: bytes, count: int,
                        read_own: Callable[[int, int], Awaitable[bytes]]) -> None:
        """Return once a majority (the leader included) holds the batch; see the module doc."""
        needed = self.majority - 1
        if needed <= 0:
            return
        sends = [asyncio.ensure_future(self._send(i, first_seq, data, count, read_own))
                 for i in range(len(self.followers))]
        acked = 0
        try:
            for done in asyncio.as_completed(sends, timeout=self.timeout_s):
                if await done:
                    acked += 1
                    if acked >= needed:
                        return
        except TimeoutError:
            pass
        raise JournalUnavailable(f"only {acked + 1} of {len(self.followers) + 1} journal replicas hold "
                                 f"records {first_seq}..{first_seq + count - 1}; a majority of {self.majority} "
                                 "is needed")

    async def _send(self, i: int, first_seq: int, data: bytes, count: int,
                    read_own: Callable[[int, int], Awaitable[bytes]]) -> bool:
        follower = self.followers[i]
        async with self._locks[i]:
            try:
                end = await follower.accept(*self.before(first_seq), first_seq, data, count, self.sealed_upto)
                for _round in range(CATCH_UP_ROUNDS):
                    if end >= first_seq:
                        break
                    missing = await read_own(end, first_seq)
                    end = await follower.accept(*self.before(end), end, missing, first_seq - end, self.sealed_upto)
                    if end >= first_seq:  # caught up (else it cut records not the leader's: again from there)
                        end = await follower.accept(*self.before(first_seq), first_seq, data, count,
                                                    self.sealed_upto)
                return end >= first_seq + count
            except Exception as exc:  # a dead or failing follower: it catches up when it is back
                log.warning("replica_unreachable", replica=i + 1, error=repr(exc)[:200])
                return False

    async def best_tail(self, own_end: int, own_last: codec.Record | None) -> tuple[list[codec.Record], int]:
        """The records from ``own_end`` on of the most up-to-date log among a majority of
        replicas (the newest last epoch, then the longest) that holds the leader's last
        record ``own_last``; with the newest epoch seen in any replica's tail."""
        ends = [asyncio.ensure_future(f.end()) for f in self.followers]
        done, _ = await asyncio.wait(ends, timeout=self.timeout_s)
        answered = [(f, fut.result()) for f, fut in zip(self.followers, ends, strict=True)
                    if fut in done and fut.exception() is None]
        if len(answered) + 1 < self.majority:
            raise JournalUnavailable(f"only {len(answered) + 1} of {len(self.followers) + 1} journal replicas "
                                     f"answered; a majority of {self.majority} is needed to recover")
        reads = [asyncio.ensure_future(f.read(max(own_end - 1, 0))) for f, end in answered if end > own_end]
        if not reads:
            return [], 0
        read, _ = await asyncio.wait(reads, timeout=self.timeout_s)
        tails = [codec.scan(fut.result()[1], "<replica>")[0] for fut in reads
                 if fut in read and fut.exception() is None]
        newest = max([0, *(r["epoch"] for tail in tails for r in tail if r["k"] == "epoch")])
        best = max([((ep.UNKNOWN, own_end), []), *(ep.rank_tail(t, own_end, own_last) for t in tails)],
                   key=lambda b: b[0])
        return best[1], newest

