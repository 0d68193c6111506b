"""Reading a stored journal back: the checks start-up applies, written once.

`Journal` recovery and the offline ``coordinator journal verify`` both call `walk`,
so a journal the tool passes is one start-up opens, and the other way round. The
rules:

1. The newest snapshot, if any, must decode whole (`load_snapshot`); records up to
   its sequence number are in it.
2. Segments are read in order of their first sequence number. Only the log's last
   segment, and only while it is active (not sealed), may end in a torn write
   (`scan_segment`); damage anywhere else is `JournalCorrupt`.
3. A segment starts at the record after the one before it, or anywhere at or below
   the snapshot's sequence number (what the snapshot covers may be gone).
4. Inside a segment, sequence numbers rise by exactly one.
5. A sealed segment wholly covered by the snapshot is left over from a compaction
   that was cut short.

With ``repair`` (start-up, under the storage lock) a torn tail is cut and leftover
segments are deleted; without it (the tools) they are only reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors.journal import codec
from actors.journal.backends import Backend, SegmentRef
from workflows.errors import JournalCorrupt

log = structlog.get_logger("journal")


@dataclass
class SegmentScan:
    ref: SegmentRef
    where: str
    records: list[codec.Record]
    valid_end: int
    size: int
    legacy: bool = False  # written in frame format 1

    @property
    def torn_bytes(self) -> int:
        return self.size - self.valid_end


def scan_segment(backend: Backend, ref: SegmentRef, *, tail: bool) -> SegmentScan:
    """Read and check one segment; a torn end is allowed only in the active ``tail``."""
    where = backend.describe(ref)
    buf = backend.read(ref)
    records, end = codec.scan(buf, where)
    if end < len(buf) and (ref.sealed or not tail):
        raise JournalCorrupt(where, end, "damaged record at the end of a segment that is not the log's tail")
    return SegmentScan(ref, where, records, end, len(buf), codec.is_legacy(buf))


@dataclass
class Snapshot:
    name: str
    seq: int
    epoch: int
    mode: str
    held: bool
    workflows: list[dict[str, Any]]
    deployments: dict[str, Any] | None = None
    finished: list[tuple[str, float]] | None = None  # finished workflows kept but not held in memory: (id, end)
    finished_meta: list[tuple[str, str]] | None = None  # their (end kind, type), when the snapshot kept them
    end_chunks: list[list[Any]] | None = None  # older ends on storage (`ends.Chunk.describe`)
    end_pos: int = 0  # the position of the next end
    forgotten_before: float = -math.inf  # ends before it are forgotten (the last retention watermark)


def encode_snapshot(seq: int, epoch: int, mode: str, held: bool, workflows: list[dict[str, Any]],
                    deployments: dict[str, Any] | None = None,
                    finished: list[tuple[str, float]] | None = None,
                    finished_meta: list[tuple[str, str]] | None = None,
                    end_chunks: list[list[Any]] | None = None, end_pos: int = 0,
                    forgotten_before: float = -math.inf) -> bytes:
    """A snapshot as a header record followed by one record per workflow.

    One record per workflow keeps every frame under `codec.MAX_RECORD_BYTES` however
    many workflows are kept (`codec.RecordTooLarge` only for a single oversized one).
    """
    head = {"v": codec.VERSION, "k": "snapshot", "q": seq, "epoch": epoch, "mode": mode, "held": held,
            "count": len(workflows), "deployments": deployments or {}}
    frames = [codec.encode(head)]
    frames += [codec.encode({"v": codec.VERSION, "k": "snapshot", "q": seq, "wf": wf}) for wf in workflows]
    ids = finished or []
    for i in range(0, len(ids), 100_000):
        chunk: dict[str, Any] = {"v": codec.VERSION, "k": "snapshot", "q": seq, "ids": ids[i:i + 100_000]}
        if finished_meta is not None:  # ``meta``: each one's (end kind, type), beside ``ids``
            chunk["meta"] = finished_meta[i:i + 100_000]
        frames.append(codec.encode(chunk))
    if end_chunks or math.isfinite(forgotten_before):  # the ends spilled to storage, a few numbers each
        frames.append(codec.encode({"v": codec.VERSION, "k": "snapshot", "q": seq, "end_chunks": end_chunks or [],
                                    "end_pos": end_pos, "forgotten_before": forgotten_before}))
    return b"".join(frames)


def decode_snapshot(name: str, data: bytes) -> Snapshot:
    """The inverse of `encode_snapshot`; also reads the older single-record form."""
    where = f"snapshot {name}"
    records, end = codec.scan(data, where)
    if end != len(data) or not records or records[0]["k"] != "snapshot":
        raise JournalCorrupt(where, end, "snapshot is damaged")
    head, rest = records[0], records[1:]
    try:
        if "workflows" in head:  # the single-record form
            if rest:
                raise JournalCorrupt(where, end, "snapshot is damaged")
            workflows = list(head["workflows"])
        else:
            workflows = [r["wf"] for r in rest if "wf" in r]
            if len(workflows) != head["count"] or any(r["k"] != "snapshot" or r["q"] != head["q"] for r in rest):
                raise JournalCorrupt(where, end, f"snapshot is damaged: {len(rest)} of {head['count']} workflows")
        chunks = [r for r in rest if "ids" in r]
        finished = [(w, t) for r in chunks for w, t in r["ids"]]
        meta = None
        if chunks and all("meta" in r and len(r["meta"]) == len(r["ids"]) for r in chunks):
            meta = [(k, ty) for r in chunks for k, ty in r["meta"]]
        spilled = [r for r in rest if "end_chunks" in r]
        end_chunks = [list(c) for r in spilled for c in r["end_chunks"]]
        end_pos = max((int(r["end_pos"]) for r in spilled), default=0)
        forgotten_before = max((float(r["forgotten_before"]) for r in spilled), default=-math.inf)
        return Snapshot(name, head["q"], head["epoch"], head["mode"], bool(head["held"]), workflows,
                        dict(head.get("deployments") or {}), finished, meta, end_chunks, end_pos,
                        forgotten_before)
    except (KeyError, TypeError) as exc:
        raise JournalCorrupt(where, 0, f"snapshot is damaged: {exc!r}") from None


def load_snapshot(backend: Backend) -> Snapshot | None:
    """The newest snapshot, or None; `JournalCorrupt` if it does not decode whole."""
    names = backend.snapshots()
    if not names:
        return None
    return decode_snapshot(names[-1], backend.get_snapshot(names[-1]))


@dataclass
class Recovered:
    """What `walk` found: the segments to keep, with the last sequence number each holds."""

    snapshot: Snapshot | None
    segments: list[tuple[SegmentRef, int]] = field(default_factory=list)
    covered: list[SegmentRef] = field(default_factory=list)
    next_seq: int = 0
    records: int = 0
    torn_bytes: int = 0
    torn_at: tuple[str, int] | None = None
    legacy_tail: bool = False  # the active segment is in frame format 1: continue in a new one


def walk(backend: Backend, *, repair: bool, on_snapshot: Callable[[Snapshot], None] | None = None,
         on_record: Callable[[codec.Record], None] | None = None, keep_covered: bool = False) -> Recovered:
    """Check the stored journal by the rules of the module docstring.

    ``on_snapshot`` gets the snapshot (if any) first, then ``on_record`` every record
    past it, in order. Raises `JournalCorrupt` naming the first place that breaks a rule.
    With ``keep_covered`` the sealed segments the snapshot covers are kept unread (they
    hold the workflows not in it), else they are deleted (with ``repair``).
    """
    snapshot = load_snapshot(backend)
    if snapshot is not None and on_snapshot is not None:
        on_snapshot(snapshot)
    snapshot_seq = snapshot.seq if snapshot is not None else -1
    out = Recovered(snapshot, next_seq=snapshot_seq + 1)
    refs = backend.segments()
    for i, ref in enumerate(refs):
        after = refs[i + 1].first_seq if i + 1 < len(refs) else None
        if keep_covered and ref.sealed and after is not None and after - 1 <= snapshot_seq:
            out.segments.append((ref, after - 1))
            continue
        seg = scan_segment(backend, ref, tail=i == len(refs) - 1)
        if seg.torn_bytes:
            out.torn_bytes += seg.torn_bytes
            out.torn_at = (seg.where, seg.valid_end)
            if repair:
                log.warning("torn_tail_truncated", segment=seg.where, offset=seg.valid_end, bytes=seg.torn_bytes)
                backend.truncate(ref, seg.valid_end)
        expected = _check_sequence(seg, out.next_seq, snapshot_seq)
        out.records += len(seg.records)
        if on_record is not None:
            for r in seg.records:
                if r["q"] > snapshot_seq:
                    on_record(r)
        out.next_seq = max(out.next_seq, expected)
        if ref.sealed and expected - 1 <= snapshot_seq and not keep_covered:
            out.covered.append(ref)
            if repair:
                backend.delete(ref)
            continue
        out.segments.append((ref, expected - 1))
        out.legacy_tail = seg.legacy and not ref.sealed
    return out


def _check_sequence(seg: SegmentScan, next_seq: int, snapshot_seq: int) -> int:
    """Rules 3 and 4 for one segment; returns the sequence number after its last record."""
    first = seg.ref.first_seq
    if first > next_seq:
        raise JournalCorrupt(seg.where, 0, f"segment starts at {first}: records from {next_seq} are missing")
    if snapshot_seq < first < next_seq:
        raise JournalCorrupt(seg.where, 0, f"segment starts at {first}, before {next_seq}")
    expected = first
    for r in seg.records:
        if r["q"] != expected:
            raise JournalCorrupt(seg.where, -1, f"record {r['q']} where {expected} was expected")
        expected += 1
    return expected


def records(backend: Backend) -> Iterator[codec.Record]:
    """Every stored record in order, each segment checked as `walk` checks it (no repair)."""
    refs = backend.segments()
    for i, ref in enumerate(refs):
        yield from scan_segment(backend, ref, tail=i == len(refs) - 1).records
