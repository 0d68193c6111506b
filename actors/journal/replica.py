"""Journal replication: followers that mirror the leader's log, and the leader's fan-out.

The leader (replica 0, the `Journal` the writers talk to) acknowledges a batch once a
majority of replicas, itself included, has written and fsynced it:

1. The leader writes and fsyncs the batch to its own active segment (`Journal`).
2. It sends the batch's frames, their first sequence number and its epoch to every
   follower, one send at a time per follower so each sees batches in order.
3. A follower whose log ends exactly at the batch's first record appends it, fsyncs
   and answers its new end. One that is behind answers its end; the leader sends it
   the missing records from its own log first (catch-up), then the batch.
4. Once ``majority - 1`` followers have answered, the batch is durable and its
   appends are acknowledged; slower followers keep receiving in the background.
5. If too few followers answer within ``timeout_s``, the batch fails with
   `JournalUnavailable`: nothing is acknowledged that a majority does not hold.

A new epoch (a leader start) begins at the end of the longest log among a majority
of replicas; a follower holding records past that point from an older epoch cuts
them off before it takes the new epoch's first batch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlparse

import structlog

from actors.journal import recovery
from actors.journal.backends import ActiveSegment, Backend, MemoryBackend, SegmentRef
from actors.journal.codec import frame_bounds
from actors.journal.files import FileBackend
from actors.journal.storage import open_backend
from workflows.errors import JournalUnavailable

log = structlog.get_logger("replica")

__all__ = ["Follower", "Replica", "Replicator", "frame_bounds", "replica_backend"]


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
        self.epoch = 0
        self._active: ActiveSegment | None = None
        self._segments: list[int] = []  # first seqs, ascending

    def open(self) -> None:
        self.backend.lock(self.owner)
        refs = [r for r in self.backend.segments() if not r.sealed]
        for i, ref in enumerate(refs):
            seg = recovery.scan_segment(self.backend, ref, tail=i == len(refs) - 1)
            if seg.torn_bytes:
                self.backend.truncate(ref, seg.valid_end)
            records = seg.records
            for r in records:
                if r["k"] == "epoch":
                    self.epoch = max(self.epoch, r["epoch"])
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
        """Append ``count`` framed records starting at ``first_seq``; return the log's new end."""
        if epoch > self.epoch:
            if self.next_seq > epoch_seq:
                self.truncate_to(epoch_seq)
            self.epoch = epoch
        if self.next_seq < sealed_upto <= first_seq:
            self.reset_to(sealed_upto)  # what it lacks is in the object store already
        if first_seq > self.next_seq or first_seq + count <= self.next_seq:
            return self.next_seq  # behind (the leader catches it up) or already held
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
        self.next_seq = first_seq + count
        self._drop_below(sealed_upto)
        return self.next_seq

    def _drop_below(self, sealed_upto: int) -> None:
        """Forget local segments wholly below ``sealed_upto``: the object store holds them."""
        while len(self._segments) > 1 and self._segments[1] <= sealed_upto:
            self.backend.delete(SegmentRef(self._segments.pop(0), False))

    def reset_to(self, seq: int) -> None:
        """Drop the whole local log and continue at ``seq``."""
        if self._active is not None:
            self._active.close()
            self._active = None
        for first in self._segments:
            self.backend.delete(SegmentRef(first, False))
        self._segments.clear()
        self.next_seq = seq

    def truncate_to(self, seq: int) -> None:
        """Cut every record at or after ``seq`` (an older epoch's unacknowledged tail)."""
        log.warning("replica_truncated", storage=self.backend.uri, from_seq=seq, to_seq=self.next_seq)
        if self._active is not None:
            self._active.close()
            self._active = None
        while self._segments and self._segments[-1] >= seq and len(self._segments) > 1:
            self.backend.delete(SegmentRef(self._segments.pop(), False))
        if self._segments:
            ref = SegmentRef(self._segments[-1], False)
            buf = self.backend.read(ref)
            bounds = frame_bounds(buf)
            keep = max(0, seq - ref.first_seq)
            self.backend.truncate(ref, bounds[keep][0] if keep < len(bounds) else len(buf))
            self._active = self.backend.open_active(ref.first_seq)
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
                end = await follower.accept(self.epoch, self.epoch_seq, first_seq, data, count, self.sealed_upto)
                if end < first_seq:
                    missing = await read_own(end, first_seq)
                    await follower.accept(self.epoch, self.epoch_seq, end, missing, first_seq - end,
                                          self.sealed_upto)
                    end = await follower.accept(self.epoch, self.epoch_seq, first_seq, data, count,
                                                self.sealed_upto)
                return end >= first_seq + count
            except Exception as exc:  # a dead or failing follower: it catches up when it is back
                log.warning("replica_unreachable", replica=i + 1, error=repr(exc)[:200])
                return False

    async def longest_tail(self, own_end: int) -> tuple[int, Any]:
        """Ask followers for their ends; (end, follower) of the longest, once a majority answered."""
        answers: list[tuple[int, Any]] = [(own_end, None)]
        ends = [asyncio.ensure_future(f.end()) for f in self.followers]
        done, _ = await asyncio.wait(ends, timeout=self.timeout_s)
        for follower, fut in zip(self.followers, ends, strict=True):
            if fut in done and fut.exception() is None:
                answers.append((fut.result(), follower))
        if len(answers) < self.majority:
            raise JournalUnavailable(f"only {len(answers)} of {len(self.followers) + 1} journal replicas answered; "
                                     f"a majority of {self.majority} is needed to recover")
        return max(answers, key=lambda a: a[0])
