"""The order in which workflows ended, kept by the journal's `Index` to page its
finished workflows newest first by cursor, whatever their number.

Per end: the workflow id, its end time, the terminal kind and the command type (both
as small codes) and a position that only grows. A page starts below a position (the
cursor) and walks down; with a state it walks that kind's entries only, so a page
costs its length plus what a type filter skips, never the whole history. Nothing
here reads storage: the caller folds the page's workflows.

An entry is current while `Index.finished` holds the same end time for its id; one
forgotten by retention, or ended again after its id was freed, stays as a stale
entry until enough are stale that `compact` drops them (amortised O(1) per end).
About 35 bytes an end, beside the ~180 of the id's reservation.

Positions are given anew when the journal opens (in the order of the ends it keeps),
so a cursor taken before a restart goes on from about the same place, not exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
import sys
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import crc32c
import msgpack

from workflows.errors import JournalCorrupt

KINDS = ("", "completed", "failed", "compensated", "cancelled", "terminated")
"""Terminal kinds by code; 0: unknown (an end restored from a snapshot that did not keep it)."""
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
COMPACT_MIN = 1024
CHUNK = 16_384
"""Ends a chunk spills to storage at a time; twice as many at most stay in memory."""
LOADED = 4
"""Chunks kept decoded in memory, the last read."""


@dataclass
class Page:
    ids: list[str]
    next: int | None
    """The cursor of the next page (a position: the next page lists ends below it), or None at the end."""
    scanned: int
    """Entries looked at (the cost of the page)."""
    unsure: dict[str, int]
    """Ids among ``ids`` whose kind or type is unknown (restored from an older snapshot),
    by entry: the caller checks them against their fold, and may `learn` them."""


class EndLog:
    """Ends in the order they were journaled; see the module docstring."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.times = array("d")
        self.kinds = bytearray()
        self.types = array("H")
        self.pos = array("q")
        self.by_kind: dict[int, array[int]] = {}  # per kind code, the indexes of its entries
        self.type_names: list[str] = [""]
        self._type_codes: dict[str, int] = {"": 0}
        self.next_pos = 0
        self.stale = 0
        self._counts: list[int] | None = [0] * len(KINDS)  # current ends by kind; None: count again

    def __len__(self) -> int:
        return len(self.ids)

    def _type_code(self, type_: str) -> int:
        code = self._type_codes.get(type_)
        if code is None:
            if len(self.type_names) >= 0xFFFF:  # more types than codes: the rest count as unknown
                return 0
            code = self._type_codes[type_] = len(self.type_names)
            self.type_names.append(type_)
        return code

    def add(self, workflow_id: str, t: float, kind: str, type_: str) -> None:
        code = self._type_code(type_)
        k = _KIND_CODE.get(kind, 0)
        if self._counts is not None:
            self._counts[k] += 1
        self.by_kind.setdefault(k, array("q")).append(len(self.ids))
        self.ids.append(workflow_id)
        self.times.append(t)
        self.kinds.append(k)
        self.types.append(code)
        self.pos.append(self.next_pos)
        self.next_pos += 1

    def entries(self, current: Callable[[str, float], bool]) -> Iterator[tuple[str, float, str, str]]:
        """The current ends, oldest first, as (id, end time, kind, type). Safe to run in
        another thread while ends are added: it reads the entries there were when it began."""
        ids, times, kinds, types, names = self.ids, self.times, self.kinds, self.types, self.type_names
        for i in range(len(ids)):
            if current(ids[i], times[i]):
                yield ids[i], times[i], KINDS[kinds[i]], names[types[i]]

    def page(self, current: Callable[[str, float], bool], limit: int, before: int | None = None,
             kind: str | None = None, type_part: str | None = None, budget: int = 100_000) -> Page:
        """Up to ``limit`` current ends below position ``before`` (None: from the newest),
        newest first, of ``kind`` and of a type containing ``type_part`` (case-folded);
        looking at no more than ``budget`` entries. Ends of unknown kind or type may
        match: they are in ``unsure``."""
        end = len(self.ids) if before is None else bisect_left(self.pos, before)
        code = None
        if kind is not None:
            code = _KIND_CODE.get(kind)
            if not code:
                raise ValueError(f"{kind!r} is not a finished state")
        types = None
        if type_part:
            part = type_part.lower()
            types = {c for c, name in enumerate(self.type_names) if c and part in name.lower()}
        found: list[str] = []
        unsure: dict[str, int] = {}
        scanned = 0
        for i in self._descending(end, code):
            if len(found) >= limit or scanned >= budget:
                return Page(found, self.pos[i] + 1, scanned, unsure)  # this one on, on the next page
            scanned += 1
            k, ty = self.kinds[i], self.types[i]
            if (code is not None and k not in (code, 0)) or (types is not None and ty and ty not in types):
                continue
            if current(self.ids[i], self.times[i]):
                found.append(self.ids[i])
                if (code is not None and not k) or (types is not None and not ty):
                    unsure[self.ids[i]] = i
        return Page(found, None, scanned, unsure)

    def _descending(self, end: int, code: int | None) -> Iterator[int]:
        """Entries below ``end``, newest first: all, or those of kind ``code`` and of unknown kind."""
        if code is None:
            yield from range(end - 1, -1, -1)
            return
        empty = array("q")
        a, b = self.by_kind.get(code, empty), self.by_kind.get(0, empty)
        i, k = bisect_left(a, end) - 1, bisect_left(b, end) - 1
        while i >= 0 or k >= 0:
            if k < 0 or (i >= 0 and a[i] > b[k]):
                yield a[i]
                i -= 1
            else:
                yield b[k]
                k -= 1

    def learn(self, entry: int, kind: str, type_: str) -> None:
        """The kind and type of an entry that had none, read from its fold."""
        if entry < len(self.ids):
            k = _KIND_CODE.get(kind, 0)
            if self._counts is not None:
                self._counts[self.kinds[entry]] -= 1
                self._counts[k] += 1
            self.kinds[entry] = k
            self.types[entry] = self._type_code(type_)

    def forgotten(self, n: int = 1, kind: str | None = None) -> None:
        """``n`` entries went stale: of ``kind``, or of a kind not known here (then the
        counts are counted again when next asked for)."""
        self.stale += n
        if kind is None or self._counts is None:
            self._counts = None
        else:
            self._counts[_KIND_CODE.get(kind, 0)] -= n

    def counts(self, current: Callable[[str, float], bool]) -> dict[str, int]:
        """Current ends by kind (``""``: unknown); kept up to date as ends are added, and
        counted again (once, O(ends)) after retention forgot some."""
        if self._counts is None:
            counted = [0] * len(KINDS)
            for i in range(len(self.ids)):
                if current(self.ids[i], self.times[i]):
                    counted[self.kinds[i]] += 1
            self._counts = counted
        return {KINDS[k]: n for k, n in enumerate(self._counts) if k or n}

    def compact(self, current: Callable[[str, float], bool]) -> bool:
        """Drop stale entries once they are at least half of them; whether it did."""
        if self.stale < COMPACT_MIN or self.stale * 2 < len(self.ids):
            return False
        keep = [i for i in range(len(self.ids)) if current(self.ids[i], self.times[i])]
        ids, times, kinds, types, pos = self.ids, self.times, self.kinds, self.types, self.pos
        self.ids = [ids[i] for i in keep]
        self.times = array("d", (times[i] for i in keep))
        self.kinds = bytearray(kinds[i] for i in keep)
        self.types = array("H", (types[i] for i in keep))
        self.pos = array("q", (pos[i] for i in keep))
        self.by_kind = {}
        for n, k in enumerate(self.kinds):
            self.by_kind.setdefault(k, array("q")).append(n)
        self.stale = 0
        return True

    # --- a chunk of ends on storage -------------------------------------------------

    def head(self, n: int, current: Callable[[str, float], bool]) -> tuple[EndLog, int]:
        """The first ``n`` current entries as an `EndLog` of their own (their positions
        kept), and how many entries, stale ones included, they span."""
        part = EndLog()
        i = 0
        while i < len(self.ids) and len(part) < n:
            if current(self.ids[i], self.times[i]):
                part.add(self.ids[i], self.times[i], KINDS[self.kinds[i]], self.type_names[self.types[i]])
                part.pos[-1] = self.pos[i]
            i += 1
        part.next_pos = self.pos[i - 1] + 1 if i else self.next_pos
        return part, i

    def drop_head(self, n: int) -> None:
        """Forget the first ``n`` entries (spilled to storage)."""
        live = len(self.ids) - n
        self.ids = self.ids[n:]
        self.times, self.kinds, self.types, self.pos = self.times[n:], self.kinds[n:], self.types[n:], self.pos[n:]
        self.by_kind = {}
        for i, k in enumerate(self.kinds):
            self.by_kind.setdefault(k, array("q")).append(i)
        self.stale = min(self.stale, live)
        self._counts = None  # counted again when next asked for

    @property
    def first_pos(self) -> int:
        return self.pos[0] if self.pos else self.next_pos

    def encode(self) -> bytes:
        payload: bytes = msgpack.packb({"v": 1, "ids": self.ids, "t": self.times.tobytes(), "k": bytes(self.kinds),
                                        "ty": self.types.tobytes(), "names": self.type_names,
                                        "pos": self.pos.tobytes()}, use_bin_type=True)
        return struct.pack("<I", crc32c.crc32c(payload)) + payload

    @classmethod
    def decode(cls, data: bytes, where: str) -> EndLog:
        """The chunk in ``data``; `JournalCorrupt` naming ``where`` if it is damaged."""
        try:
            if len(data) < 4 or struct.unpack_from("<I", data)[0] != crc32c.crc32c(data[4:]):
                raise ValueError("checksum mismatch")
            m = msgpack.unpackb(data[4:], raw=False)
            log = cls()
            log.ids, log.type_names = list(m["ids"]), list(m["names"])
            log.times.frombytes(m["t"])
            log.kinds = bytearray(m["k"])
            log.types.frombytes(m["ty"])
            log.pos.frombytes(m["pos"])
            if sys.byteorder != "little":
                for a in (log.times, log.types, log.pos):
                    a.byteswap()
            if not len(log.ids) == len(log.times) == len(log.kinds) == len(log.types) == len(log.pos):
                raise ValueError("columns of different lengths")
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise JournalCorrupt(where, 0, f"end chunk is damaged: {exc}") from None
        for i, k in enumerate(log.kinds):
            log.by_kind.setdefault(k, array("q")).append(i)
        log.next_pos = log.pos[-1] + 1 if log.pos else 0
        log._counts = None
        return log

    def latest(self) -> dict[str, float]:
        """Each id's latest end time here."""
        return dict(zip(self.ids, self.times, strict=True))


def id_hash(workflow_id: str) -> int:
    """A hash of an id that is the same in every process (stored with a chunk)."""
    return int.from_bytes(hashlib.blake2b(workflow_id.encode(), digest_size=8).digest(), "little", signed=True)


def holds(hashes: array[int], h: int) -> bool:
    """Whether the sorted ``hashes`` hold ``h``."""
    i = bisect_left(hashes, h)
    return i < len(hashes) and hashes[i] == h


@dataclass
class Chunk:
    """Ends spilled to storage: blob ``name`` (the `EndLog`), ``name + ".h"`` (its ids' sorted hashes)."""

    name: str
    first_pos: int
    last_pos: int
    count: int
    min_t: float
    max_t: float
    kinds: list[int] = field(default_factory=lambda: [0] * len(KINDS))  # its ends by kind code
    hashes: array[int] = field(default_factory=lambda: array("q"), repr=False)
    kept: list[int] = field(default_factory=list, repr=False)  # by kind, those after `counted_at`
    counted_at: float = math.nan

    def describe(self) -> list[Any]:
        return [self.name, self.first_pos, self.last_pos, self.count, self.min_t, self.max_t, self.kinds]


@dataclass
class _Run:
    """The merged sorted hashes of some chunks: a lookup bisects a few runs, not every chunk."""

    hashes: array[int]
    chunks: list[Chunk]


class Ends:
    """Every kept end: the newest in memory, older ones spilled to storage in chunks.

    Stands for a map of finished workflow id to end time (``in``, `get`, `pop`,
    ``len``) and pages the ends newest first by cursor (`page`). In memory: the
    unspilled ends (`hot`, `log`: at most two chunks' worth) and per spilled end 16
    bytes of hashes (its chunk's and its run's); nothing else grows with the number
    of ends kept. An end before ``forgotten_before`` (the retention watermark of the
    last snapshot) is forgotten: its id is free, wherever the end lies.
    """

    def __init__(self, chunk_size: int | None = None) -> None:
        self.chunk_size = chunk_size or CHUNK
        self.hot: dict[str, float] = {}
        self.log = EndLog()
        self.chunks: list[Chunk] = []
        self.runs: list[_Run] = []
        self.forgotten_before = -math.inf
        self.fetch: Callable[[str], bytes] = _no_storage
        self._loaded: OrderedDict[str, tuple[EndLog, dict[str, float]]] = OrderedDict()
        self._lock = threading.Lock()  # `_loaded` is read from the storage thread too

    # --- the map of id to end time ---------------------------------------------------

    def get(self, wid: str) -> float | None:
        """``wid``'s end time if the journal keeps it as finished, else None."""
        t = self.hot.get(wid)
        if t is None and self.runs:
            t = self._cold(wid)
        return t if t is not None and t >= self.forgotten_before else None

    def __contains__(self, wid: object) -> bool:
        return isinstance(wid, str) and self.get(wid) is not None

    def __len__(self) -> int:
        return len(self.hot) + sum(sum(self._kept(c)) for c in self.chunks)

    def _kept(self, chunk: Chunk) -> list[int]:
        """``chunk``'s ends not forgotten, by kind code."""
        if chunk.min_t >= self.forgotten_before:
            return chunk.kinds
        if chunk.counted_at != self.forgotten_before:
            counted = [0] * len(KINDS)
            log = self._chunk(chunk)[0]
            for t, k in zip(log.times, log.kinds, strict=True):
                if t >= self.forgotten_before:
                    counted[k] += 1
            chunk.kept, chunk.counted_at = counted, self.forgotten_before
        return chunk.kept

    def current(self, wid: str, t: float) -> bool:
        """Whether ``wid``'s kept end is the one at ``t`` (an entry is current)."""
        return self.get(wid) == t

    def add(self, wid: str, t: float, kind: str, type_: str) -> None:
        if wid in self.hot:
            self.log.forgotten()
        self.hot[wid] = t
        self.log.add(wid, t, kind, type_)

    def pop(self, wid: str, kind: str | None = None) -> bool:
        """Forget ``wid``'s end if it is in memory (an undone or forgotten one, of
        ``kind`` when known); whether it was."""
        if self.hot.pop(wid, None) is None:
            return False
        self.log.forgotten(kind=kind)
        return True

    def counts(self) -> dict[str, int]:
        """Kept ends by kind (``""``: unknown): those in memory, and each chunk's as it was
        spilled, counted again (once per retention watermark) for a chunk it cuts."""
        out = dict(self.log.counts(self.current))
        for chunk in self.chunks:
            for k, n in enumerate(self._kept(chunk)):
                if n:
                    out[KINDS[k]] = out.get(KINDS[k], 0) + n
        return out

    def compact(self) -> bool:
        return self.log.compact(lambda w, t: self.hot.get(w) == t)

    def _cold(self, wid: str) -> float | None:
        h = id_hash(wid)
        for run in reversed(self.runs):
            if holds(run.hashes, h):
                for chunk in reversed(run.chunks):
                    if holds(chunk.hashes, h):
                        t = self._chunk(chunk)[1].get(wid)
                        if t is not None:
                            return t
        return None

    def _chunk(self, chunk: Chunk) -> tuple[EndLog, dict[str, float]]:
        with self._lock:
            found = self._loaded.get(chunk.name)
            if found is not None:
                self._loaded.move_to_end(chunk.name)
                return found
        log = EndLog.decode(self.fetch(chunk.name), chunk.name)
        found = (log, log.latest())
        with self._lock:
            self._loaded[chunk.name] = found
            while len(self._loaded) > LOADED:
                self._loaded.popitem(last=False)
        return found

    # --- spilling and forgetting -----------------------------------------------------

    def spill_due(self) -> bool:
        return len(self.log) >= 2 * self.chunk_size

    def take(self) -> tuple[EndLog, int]:
        """The oldest chunk's worth of current ends in memory, and the entries it spans."""
        return self.log.head(self.chunk_size, lambda w, t: self.hot.get(w) == t)

    @staticmethod
    def chunk_of(part: EndLog) -> Chunk:
        kinds = [0] * len(KINDS)
        for k in part.kinds:
            kinds[k] += 1
        return Chunk(f"ends-{part.first_pos:020d}.end", part.first_pos, part.next_pos - 1, len(part),
                     min(part.times, default=0.0), max(part.times, default=0.0), kinds,
                     array("q", sorted(id_hash(w) for w in part.ids)))

    def spilled(self, chunk: Chunk, part: EndLog, spans: int) -> None:
        """``part``, the first ``spans`` entries in memory, is stored as ``chunk``."""
        self.log.drop_head(spans)
        for w, t in zip(part.ids, part.times, strict=True):
            if self.hot.get(w) == t:
                del self.hot[w]
        self.chunks.append(chunk)
        self.runs.append(_Run(chunk.hashes, [chunk]))
        while len(self.runs) >= 2 and len(self.runs[-2].chunks) <= len(self.runs[-1].chunks):
            newer = self.runs.pop()
            older = self.runs.pop()
            self.runs.append(_Run(array("q", sorted(itertools.chain(older.hashes, newer.hashes))),
                                  older.chunks + newer.chunks))

    def forget_chunks(self) -> list[Chunk]:
        """Drop the chunks whose every end is before ``forgotten_before``; returns them (to delete)."""
        gone = [c for c in self.chunks if c.max_t < self.forgotten_before]
        if not gone:
            return []
        names = {c.name for c in gone}
        self.chunks = [c for c in self.chunks if c.name not in names]
        runs = []
        for run in self.runs:
            left = [c for c in run.chunks if c.name not in names]
            if len(left) == len(run.chunks):
                runs.append(run)
            elif left:
                runs.append(_Run(array("q", sorted(itertools.chain.from_iterable(c.hashes for c in left))), left))
        self.runs = runs
        with self._lock:
            for name in names:
                self._loaded.pop(name, None)
        return gone

    def restore_chunks(self, described: list[list[Any]], next_pos: int) -> None:
        """Take the chunks a snapshot names (their hashes read from storage, or
        computed from the chunk if that copy is missing or damaged)."""
        for name, first, last, count, min_t, max_t, kinds in described:
            chunk = Chunk(str(name), int(first), int(last), int(count), float(min_t), float(max_t),
                          [int(n) for n in kinds])
            try:
                chunk.hashes = decode_hashes(self.fetch(chunk.name + ".h"))
            except (FileNotFoundError, ValueError):
                chunk.hashes = self.chunk_of(self._chunk(chunk)[0]).hashes
            self.spilled(chunk, EndLog(), 0)
        self.log.next_pos = max(self.log.next_pos, next_pos)

    # --- pages -----------------------------------------------------------------------

    def page(self, limit: int, before: int | None = None, kind: str | None = None, type_part: str | None = None,
             budget: int = 100_000) -> Page:
        """As `EndLog.page` (an entry current while it is the kept end of its id), across
        the ends in memory and then the chunks, newest first."""
        found: list[str] = []
        unsure: dict[str, int] = {}
        scanned = 0
        sources: list[Chunk | None] = [None, *reversed(self.chunks)]
        for n, chunk in enumerate(sources):
            if chunk is not None and before is not None and chunk.first_pos >= before:
                continue
            log = self.log if chunk is None else self._chunk(chunk)[0]
            p = log.page(self.current, limit - len(found), before, kind, type_part, budget - scanned)
            found += p.ids
            scanned += p.scanned
            # An entry of a chunk is learnt by no one (-1): a chunk is only ever read.
            unsure.update(p.unsure if chunk is None else dict.fromkeys(p.unsure, -1))
            older = n + 1 < len(sources)
            if p.next is not None:
                return Page(found, p.next, scanned, unsure)
            if len(found) >= limit or scanned >= budget:
                return Page(found, log.first_pos if older else None, scanned, unsure)
        return Page(found, None, scanned, unsure)

    def learn(self, entry: int, kind: str, type_: str) -> None:
        """The kind and type of an entry in memory that had none (see `EndLog.learn`)."""
        if entry >= 0:
            self.log.learn(entry, kind, type_)

    def position_of(self, wid: str) -> int | None:
        """The position of ``wid``'s kept end (a cursor lists the ends below it)."""
        for chunk in [None, *reversed(self.chunks)]:
            log = self.log if chunk is None else self._chunk(chunk)[0]
            for i in range(len(log.ids) - 1, -1, -1):
                if log.ids[i] == wid:
                    return log.pos[i]
        return None


def encode_hashes(hashes: array[int]) -> bytes:
    a = array("q", hashes)
    if sys.byteorder != "little":
        a.byteswap()
    payload = a.tobytes()
    return struct.pack("<I", crc32c.crc32c(payload)) + payload


def decode_hashes(data: bytes) -> array[int]:
    if len(data) < 4 or (len(data) - 4) % 8 or struct.unpack_from("<I", data)[0] != crc32c.crc32c(data[4:]):
        raise ValueError("damaged hashes")
    a = array("q")
    a.frombytes(data[4:])
    if sys.byteorder != "little":
        a.byteswap()
    return a


def _no_storage(name: str) -> bytes:
    raise FileNotFoundError(name)
