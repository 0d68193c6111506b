"""The leader's segment log: writes to the active segment, sealing, and repair after a failed write.

Every method runs on the journal's executor thread, one at a time (the flusher
serialises them), never concurrently with another.

Durability, as implemented by `write`:

1. Make sure the active segment is open. After a failed write it is reopened and
   truncated back to its *durable size* (its size after the last write that synced):
   a failed fsync says nothing about which of the bytes written reached the disk.
2. Append the batch's frames; fsync (or flush, with ``fsync=False``).
3. Only then record the new durable size and the segment's last sequence number.

Sealing (`rotate`) never fails a write: if the store refuses the seal, the segment is
kept as a *pending* one (complete, unsealed, no longer appended to), a new active
segment starts after it, and `seal_pending` tries again later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from actors.journal.backends import ActiveSegment, Backend, SegmentRef
from actors.journal.segindex import Indexes
from workflows.errors import JournalCorrupt

log = structlog.get_logger("journal")


@dataclass
class Segment:
    ref: SegmentRef
    last_seq: int


class SegmentLog:
    """The ordered segments of one journal; the last one is the active one."""

    def __init__(self, backend: Backend, *, fsync: bool, segment_bytes: int) -> None:
        self.backend = backend
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.segments: list[Segment] = []
        self.indexes = Indexes(backend)  # where each workflow's records lie, per segment
        self._active: ActiveSegment | None = None
        self._durable = 0  # bytes of the active segment known to be durable
        self._broken = False  # a write failed: repair before the next one
        # Written by the one thread that writes (the journal's executor), read by metrics.
        self.writes = 0  # durable writes, one fsync each (with fsync on)
        self.records_written = 0

    # --- set-up -------------------------------------------------------------------

    def restore(self, kept: list[tuple[SegmentRef, int]], next_seq: int, *, fresh: bool = False) -> None:
        """Continue the log recovery kept: append to its active tail, or start one at
        ``next_seq`` (also when ``fresh``: the tail is left to be sealed as it is)."""
        self.segments = [Segment(ref, last) for ref, last in kept]
        tail = self.segments[-1] if self.segments else None
        if tail is not None and not tail.ref.sealed and not fresh:
            self._active = self.backend.open_active(tail.ref.first_seq)
            self._durable = self._active.size()
        else:
            self._start(next_seq)

    @property
    def active_first(self) -> int:
        return self.segments[-1].ref.first_seq

    @property
    def last_seq(self) -> int:
        """The last durable record's sequence number (-1 for none)."""
        return self.segments[-1].last_seq if self.segments else -1

    @property
    def sealed_upto(self) -> int:
        """Every record below this is in the object store (the first unsealed segment's start)."""
        return next(s.ref.first_seq for s in self.segments if not s.ref.sealed)

    @property
    def pending(self) -> list[Segment]:
        """Complete segments whose seal failed: unsealed and no longer the active one."""
        return [s for s in self.segments[:-1] if not s.ref.sealed]

    @property
    def full(self) -> bool:
        return self._durable >= self.segment_bytes

    @property
    def active_bytes(self) -> int:
        return self._durable

    # --- writes -------------------------------------------------------------------

    def write(self, frames: list[bytes], last_seq: int,
              keys: list[tuple[str | None, str | None]] | None = None) -> None:
        """Append ``frames`` (records up to ``last_seq``) durably; see the module docstring.
        ``keys``: each frame's workflow id and step service, for its index (`Indexes.written`)."""
        active = self._open()
        start = self._durable
        try:
            if frames:
                active.append(b"".join(frames))
            if self.fsync:
                active.sync()
            else:
                active.flush()
        except BaseException:
            self._broken = True
            raise
        self._durable = active.size()
        self.segments[-1].last_seq = last_seq
        self.writes, self.records_written = self.writes + 1, self.records_written + len(frames)
        try:
            self.indexes.written(self.segments[-1].ref.first_seq, frames, start, keys)
        except Exception as exc:  # the records are durable; the index is rebuilt when next read
            self.indexes.active.pop(self.segments[-1].ref.first_seq, None)
            log.warning("segment_index_failed", error=repr(exc))

    def _index_sealed(self, first_seq: int) -> None:
        try:
            self.indexes.sealed(first_seq)
        except Exception as exc:  # any storage error: a missing index is rebuilt when read
            log.warning("segment_index_write_failed", first_seq=first_seq, error=repr(exc))

    def _open(self) -> ActiveSegment:
        if self._active is not None and not self._broken:
            return self._active
        if self._active is not None:
            self._close_quietly()
        ref = self.segments[-1].ref
        active = self.backend.open_active(ref.first_seq)
        if active.size() > self._durable:
            active.close()
            self.backend.truncate(ref, self._durable)
            log.warning("active_segment_repaired", segment=self.backend.describe(ref), size=self._durable)
            active = self.backend.open_active(ref.first_seq)
        if active.size() != self._durable:
            active.close()
            raise JournalCorrupt(self.backend.describe(ref), active.size(),
                                 f"active segment is shorter than its {self._durable} durable bytes")
        self._active, self._broken = active, False
        return active

    def _close_quietly(self) -> None:
        assert self._active is not None
        try:
            self._active.close()
        except OSError as exc:  # the handle is being replaced; the file is repaired by truncation
            log.warning("active_segment_close_failed", error=repr(exc))
        self._active = None

    def _start(self, first_seq: int) -> None:
        self.segments.append(Segment(SegmentRef(first_seq, False), first_seq - 1))
        self._active, self._durable, self._broken = None, 0, False
        self._open()

    # --- sealing ------------------------------------------------------------------

    def rotate(self) -> None:
        """Seal the active segment (holding every durable record) and start the next one.

        If the seal itself fails, the segment becomes pending and the error is raised
        after the next segment started, for the caller to retry `seal_pending` later.
        """
        active = self._open()
        active.sync()  # with fsync=False the last writes were only flushed
        tail = self.segments[-1]
        self._close_quietly()
        try:
            self.backend.seal(tail.ref.first_seq)
        except BaseException:
            self._start(tail.last_seq + 1)
            raise
        tail.ref = SegmentRef(tail.ref.first_seq, True)
        self._start(tail.last_seq + 1)
        self._index_sealed(tail.ref.first_seq)

    def seal_pending(self) -> None:
        """Seal every pending segment, oldest first; raises the first failure."""
        for seg in self.pending:
            self.backend.seal(seg.ref.first_seq)
            seg.ref = SegmentRef(seg.ref.first_seq, True)
            self._index_sealed(seg.ref.first_seq)
            log.info("pending_segment_sealed", first_seq=seg.ref.first_seq)

    def delete_covered(self, seq: int, keeps: Callable[[SegmentRef], bool] | None = None) -> None:
        """Delete sealed segments whose records are all at or below ``seq`` (in a snapshot);
        with ``keeps``, only those it says hold no workflow still kept."""
        for seg in [s for s in self.segments[:-1] if s.ref.sealed and s.last_seq <= seq]:
            if keeps is not None and keeps(seg.ref):
                continue
            self.backend.delete(seg.ref)
            self.segments.remove(seg)
            try:
                self.indexes.deleted(seg.ref)
            except Exception as exc:  # an orphan index is harmless: no segment names it
                log.warning("segment_index_delete_failed", first_seq=seg.ref.first_seq, error=repr(exc))

    def close(self) -> None:
        if self._active is not None:
            self._close_quietly()
