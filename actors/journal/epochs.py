"""Where each epoch of a replicated log begins, and a follower's durable record of it.

Every epoch starts with its ``epoch`` record, so a log's epochs are the (epoch, first
seq) pairs of its epoch records: record ``q`` belongs to the last epoch that began at
or before ``q``. A follower forgets segments the object store holds, epoch records
included, so it keeps the epoch of its first held record in a small metadata object
(`FloorStore`), written atomically before the segment holding that epoch's record goes.

An unknown epoch or start is -1: a leader that recovered from a snapshot knows the
epoch of the records after it, not where that epoch began, and nothing of those
before it.
"""

from __future__ import annotations

import bisect
from typing import Any

import msgpack

from actors.journal import codec
from actors.journal.backends import Backend

UNKNOWN = -1
Boundary = tuple[int, int]  # (epoch, seq of its first record)

_EPOCH_MARK = msgpack.packb("epoch")  # in every epoch record's payload


class Epochs:
    """The epochs of one log, ascending by first seq."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.epochs: list[int] = []

    def add(self, epoch: int, start: int) -> None:
        """Epoch ``epoch`` begins at ``start``; any later-starting epoch known is forgotten."""
        self.cut(start)
        self.starts.append(start)
        self.epochs.append(epoch)

    def cut(self, seq: int) -> None:
        """Forget the epochs beginning at or after ``seq`` (a truncated tail)."""
        i = bisect.bisect_left(self.starts, seq)
        del self.starts[i:], self.epochs[i:]

    def clear(self) -> None:
        self.starts.clear()
        self.epochs.clear()

    def trim(self, seq: int) -> None:
        """Forget the epochs that end before ``seq`` (forgotten records)."""
        i = bisect.bisect_right(self.starts, seq) - 1
        if i > 0:
            del self.starts[:i], self.epochs[:i]

    def at(self, seq: int) -> Boundary | None:
        """(epoch, first seq) of the epoch record ``seq`` belongs to; None if not known."""
        i = bisect.bisect_right(self.starts, seq) - 1
        return (self.epochs[i], self.starts[i]) if i >= 0 else None

    def within(self, lo: int, hi: int) -> list[int]:
        """First seqs of the epochs beginning in ``lo <= q < hi``."""
        return self.starts[bisect.bisect_left(self.starts, lo):bisect.bisect_left(self.starts, hi)]

    @property
    def last(self) -> int:
        return self.epochs[-1] if self.epochs else 0


def same_epoch(a: Boundary | None, b: Boundary | None) -> bool:
    """Whether two records are of the same epoch, as far as is known; unknown is not the same."""
    if a is None or b is None or a[0] == UNKNOWN or b[0] == UNKNOWN:
        return False
    return a[0] == b[0] and (a[1] == b[1] or UNKNOWN in (a[1], b[1]))


def leader_epoch(before: Boundary, marks: list[Boundary], q: int) -> Boundary:
    """The leader's epoch of record ``q`` (at least ``first_seq - 1`` of a batch): that of
    the record before the batch, ``before``, or of the batch's last epoch record at or before ``q``."""
    found = before
    for epoch, at in marks:
        if at <= q:
            found = (epoch, at)
    return found


def first_conflict(mine: Epochs, base: int, before: Boundary, first_seq: int, marks: list[Boundary],
                   held_to: int) -> int | None:
    """The first record a follower holds (from ``base``, below ``held_to``), from
    ``first_seq - 1`` on, that is of another epoch than the leader's record there."""
    lo = max(first_seq - 1, base)
    for q in sorted({lo, *(q for _e, q in marks), *mine.within(lo, held_to)}):  # where either epoch changes
        if lo <= q < held_to and not same_epoch(mine.at(q), leader_epoch(before, marks, q)):
            return q
    return None


def cut_point(mine: Epochs, base: int, theirs: Boundary, q: int) -> int:
    """Where a follower cuts when its record ``q`` is of another epoch than the leader's
    ``theirs``: at the first record that cannot be the leader's."""
    held = mine.at(q)
    if held is None or theirs[0] == UNKNOWN:
        return base
    if held[0] > theirs[0] or theirs[1] == UNKNOWN:
        return held[1]  # the leader holds no record of this newer epoch, not even its first
    if held[0] < theirs[0]:
        return max(held[1], theirs[1])  # the leader's epoch began after this one did
    return min(held[1], theirs[1])  # one epoch number begun at two points: trust neither


def rank_tail(records: list[codec.Record], own_end: int,
              own_last: codec.Record | None) -> tuple[Boundary, list[codec.Record]]:
    """A replica's records from ``own_end - 1`` on, judged for a recovering leader whose
    last record is ``own_last``: ((its last epoch, its end), the records from ``own_end``
    on), or ((-1, -1), []) if it does not hold ``own_last`` (its tail is of another history)."""
    if own_end > 0:
        if not records or records[0]["q"] != own_end - 1 or (own_last is not None and records[0] != own_last):
            return (UNKNOWN, UNKNOWN), []
        records = records[1:]
    if not records or records[0]["q"] != own_end:
        return (UNKNOWN, UNKNOWN), []
    last_epoch = max((r["epoch"] for r in records if r["k"] == "epoch"), default=UNKNOWN)
    return (last_epoch, records[-1]["q"] + 1), records


def epoch_marks(data: bytes, first_seq: int) -> list[Boundary]:
    """(epoch, seq) of each epoch record in framed ``data`` whose first record is ``first_seq``."""
    if _EPOCH_MARK not in data:
        return []
    records, _end = codec.scan(data, "<replicated batch>")
    return [(r["epoch"], first_seq + i) for i, r in enumerate(records) if r["k"] == "epoch"]


class FloorStore:
    """The epoch of a follower's first held record, as a metadata object beside its segments."""

    NAME = "replica-epoch"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def load(self) -> tuple[int, Boundary] | None:
        """(first held seq, its epoch's boundary) as last written, or None."""
        try:
            raw: Any = msgpack.unpackb(self.backend.get_snapshot(self.NAME))
        except (FileNotFoundError, KeyError):
            return None
        return int(raw["base"]), (int(raw["epoch"]), int(raw["start"]))

    def save(self, base: int, boundary: Boundary) -> None:
        """Durably, all or nothing: the records from ``base`` on begin in ``boundary``'s epoch."""
        epoch, start = boundary
        self.backend.put_snapshot(self.NAME, msgpack.packb({"base": base, "epoch": epoch, "start": start}))
