"""The simulated disk: a ``mem://`` backend that audits every write and can crash.

`SimBackend` is the journal's real `MemoryBackend` (with its `Faults`) plus what a
simulation needs on top:

- an audit of every frame written (`History`): the model of what the log holds,
  kept outside the store, so compaction does not hide what was ever durable;
- a crash at a record boundary: after the n-th append the backend writes a prefix of
  the batch (whole frames, or a frame cut short: a torn write) and dies; a dead
  backend refuses every operation, like the disk of a process that is gone;
- `tear`: at a crash, cut the active segment's tail that no caller was told is durable.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Any

from tests.sim import compat
from tests.sim.compat import backends, codec
from workflows.errors import JournalCorrupt

ActiveSegment, MemoryBackend, SegmentRef = backends.ActiveSegment, backends.MemoryBackend, backends.SegmentRef
frame_bounds = getattr(codec, "frame_bounds", None) or compat.replica.frame_bounds

BUILT_IN_FAULTS = hasattr(backends, "Faults")  # the fault-injection points of mem:// stores
if BUILT_IN_FAULTS:
    Faults = backends.Faults
else:  # pragma: no cover - an older journal without them: the same interface here

    class Faults:  # type: ignore[no-redef]
        def __init__(self) -> None:
            self.fired: collections.Counter[str] = collections.Counter()
            self._armed: dict[str, tuple[int, BaseException | None]] = {}

        def arm(self, op: str, *, times: int = 1, error: BaseException | None = None) -> None:
            self._armed[op] = (times, error)

        def disarm(self, op: str | None = None) -> None:
            if op is None:
                self._armed.clear()
            else:
                self._armed.pop(op, None)

        def check(self, op: str) -> None:
            armed = self._armed.pop(op, None)
            if armed is None:
                return
            if armed[0] > 1:
                self._armed[op] = (armed[0] - 1, armed[1])
            self.fired[op] += 1
            raise armed[1] if armed[1] is not None else OSError(5, f"injected fault: {op}")

    _FAULTS: dict[str, Faults] = {}

TERMINAL = ("completed", "failed", "compensated")


class Crashed(OSError):
    """The process owning this disk is gone: no operation reaches the store."""


class History:
    """Every record ever written to one log, by sequence number (the model's log).

    A later write of a sequence number replaces the earlier one only when the earlier
    one was never acknowledged; replacing an acknowledged record is a violation.

    A follower's log has an ``authority``, the leader's log: below the acknowledged
    point only the leader's record at a number is the acknowledged one, so a follower
    that cuts or overwrites a stale record of an older epoch (one the leader does not
    hold there) loses nothing; dropping the leader's record is a loss.
    """

    def __init__(self, violate: Callable[[str], None], max_cmds: int | None = None,
                 note: Callable[[str], None] = lambda _what: None,
                 authority: Callable[[int], dict[str, Any] | None] | None = None) -> None:
        self.note = note
        self.authority = authority
        self.records: dict[int, dict[str, Any]] = {}
        self.acked = -1
        self.submits: dict[str, set[int]] = collections.defaultdict(set)
        self.violate = violate
        self.max_cmds = max_cmds

    def written(self, data: bytes, where: str) -> None:
        try:
            bounds = frame_bounds(data)
        except JournalCorrupt as exc:
            self.violate(f"a write the reader refuses reached {where}: {exc}")
            return
        for start, end in bounds:
            if end - start > codec.MAX_RECORD_BYTES:
                self.violate(f"a {end - start}-byte frame was written to {where}, over MAX_RECORD_BYTES")
                continue
            records, _ = codec.scan(data[start:end], where)
            for r in records:
                self._put(r)

    def _put(self, r: dict[str, Any]) -> None:
        q = r["q"]
        self.note(f"rec {q} {r['k']} {str(r.get('w'))[:40]} {_brief(r)}")
        old = self.records.get(q)
        if old is not None and q <= self.acked and old != r and self._acknowledged(q, old):
            self.violate(f"acknowledged record {q} ({old.get('k')} {old.get('w')}) replaced by "
                         f"{r.get('k')} {r.get('w')}")
        self.records[q] = r
        if old is not None and old["k"] == "submitted":
            self.submits[old["w"]].discard(q)
        if r["k"] == "submitted":
            self.submits[r["w"]].add(q)
        if r["k"] == "submitted" and self.max_cmds is not None:
            live = self.unfinished()
            if len(live) > self.max_cmds:
                self.violate(f"{len(live)} admitted unfinished commands at record {q}, over max_cmds="
                             f"{self.max_cmds}")

    def cut(self, first_seq: int, where: str) -> None:
        """Records from ``first_seq`` on are gone from the store (a torn tail cut off)."""
        gone = sorted(q for q in self.records if q >= first_seq)
        lost = [q for q in gone if q <= self.acked and self._acknowledged(q, self.records[q])]
        if lost:
            self.violate(f"acknowledged records {lost[0]}..{lost[-1]} lost from {where}")
        for q in gone:
            r = self.records.pop(q)
            if r["k"] == "submitted":
                self.submits[r["w"]].discard(q)

    def _acknowledged(self, q: int, record: dict[str, Any]) -> bool:
        """Whether ``record``, held at ``q`` at or below the acknowledged point, is the
        acknowledged one (always, for a log without an authority)."""
        return self.authority is None or self.authority(q) == record

    def run_of(self, wid: str) -> int:
        """How many runs ``wid`` has had (its ``submitted`` records)."""
        return len(self.submits.get(wid, ()))

    def ack(self, q: int) -> None:
        self.acked = max(self.acked, q)

    def ordered(self) -> list[dict[str, Any]]:
        return [self.records[q] for q in sorted(self.records)]

    def unfinished(self) -> set[str]:
        live: set[str] = set()
        for r in self.ordered():
            if r["k"] == "submitted":
                live.add(r["w"])
            elif r["k"] in TERMINAL:
                live.discard(r["w"])
        return live


def _brief(r: dict[str, Any]) -> str:
    if r["k"] in ("outcome", "compensation"):
        return f"step={r['step']} {r['service']}={str(r['value'])[:40]}"
    if r["k"] in ("started", "delayed", "blocked"):
        return f"attempt={r.get('attempt')}"
    if r["k"] == "mode":
        return f"{r['mode']} held={r.get('held')}"
    if r["k"] in ("failed", "compensated", "compensating"):
        return str((r.get("error") or {}).get("type"))
    return ""


class SimSegment(ActiveSegment):
    """The active segment, audited; knows how much of it is synced."""

    def __init__(self, backend: SimBackend, ref: SegmentRef, inner: ActiveSegment) -> None:
        self.backend = backend
        self.ref = ref
        self.inner = inner
        self.synced = inner.size()

    def append(self, data: bytes) -> None:
        b = self.backend
        b.alive("append")
        if b.crash_after is not None:
            b.crash_after -= 1
            if b.crash_after <= 0:
                b.crash_after = None
                data = b.crash_prefix(data)
                self.inner.append(data)
                b.history.written(data, b.describe(self.ref))
                b.die("crashed at a record boundary")
        self.inner.append(data)
        b.history.written(data, b.describe(self.ref))

    def sync(self) -> None:
        self.backend.alive("sync")
        self.inner.sync()
        self.synced = self.inner.size()

    def flush(self) -> None:
        self.backend.alive("flush")
        self.inner.flush()

    def size(self) -> int:
        return self.inner.size()

    def close(self) -> None:
        self.inner.close()


def _guarded(name: str) -> Any:
    def method(self: SimBackend, *args: Any) -> Any:
        self.alive(name)
        return getattr(MemoryBackend, name)(self, *args)

    method.__name__ = name
    return method


class SimBackend(MemoryBackend):
    def __init__(self, name: str, history: History, rng: random.Random) -> None:
        super().__init__(name)
        self.history = history
        self.rng = rng
        self.dead: str | None = None
        self.crash_after: int | None = None
        self.on_death: Callable[[str], None] = lambda _why: None
        self.active: dict[int, SimSegment] = {}
        if not BUILT_IN_FAULTS:  # pragma: no cover
            self.faults = _FAULTS.setdefault(name, Faults())

    def alive(self, op: str) -> None:
        if self.dead is not None:
            raise Crashed(f"{op} on a dead disk ({self.dead})")
        if not BUILT_IN_FAULTS:  # pragma: no cover
            self.faults.check(op)

    def die(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
            self.on_death(why)
        raise Crashed(why)

    def crash_prefix(self, data: bytes) -> bytes:
        """What of a batch reaches the disk when the process dies writing it."""
        bounds = frame_bounds(data)
        if not bounds or self.rng.random() < 0.5:
            return data[:bounds[self.rng.randrange(len(bounds))][0]] if bounds else b""
        start, end = bounds[self.rng.randrange(len(bounds))]
        return data[:self.rng.randrange(start, end)]

    segments = _guarded("segments")
    read = _guarded("read")
    seal = _guarded("seal")
    delete = _guarded("delete")
    put_snapshot = _guarded("put_snapshot")
    get_snapshot = _guarded("get_snapshot")
    snapshots = _guarded("snapshots")
    delete_snapshot = _guarded("delete_snapshot")

    def truncate(self, ref: SegmentRef, size: int) -> None:
        self.alive("truncate")
        buf = self._segments.get(ref, bytearray())
        records, _ = codec.scan(bytes(buf[:size]), self.describe(ref))
        first = (records[-1]["q"] + 1) if records else ref.first_seq
        super().truncate(ref, size)
        self.history.cut(first, self.describe(ref))

    def open_active(self, first_seq: int) -> ActiveSegment:
        self.alive("open_active")
        ref = SegmentRef(first_seq, False)
        seg = SimSegment(self, ref, super().open_active(first_seq))
        self.active[first_seq] = seg
        return seg

    def tear(self) -> str | None:
        """At a crash: cut the active segment's tail past its last acknowledged record."""
        ref = max((r for r in self._segments if not r.sealed), default=None)
        if ref is None:
            return None
        buf = self._segments[ref]
        keep = 0
        for start, end in frame_bounds(bytes(buf)):
            records, _ = codec.scan(bytes(buf[start:end]))
            if records and records[0]["q"] > self.history.acked:
                break
            keep = end
        if keep >= len(buf):
            return None
        cut = self.rng.randrange(keep, len(buf))
        records, _ = codec.scan(bytes(buf[:cut]))
        first = (records[-1]["q"] + 1) if records else ref.first_seq
        del buf[cut:]
        self.history.cut(first, self.describe(ref))
        self.history.note(f"torn at byte {cut}: records from {first} gone")
        return f"torn tail of {ref.name}: cut at byte {cut} (records from {first} gone)"
