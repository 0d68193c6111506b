"""Per-segment indexes: where each workflow's records, and each service's outcomes, lie.

A sealed segment's index is stored beside it (``indexes/<first seq>.idx``, see
`Backend.put_index`) as a crc32c-checked msgpack map::

    {"v": 1, "size": bytes indexed, "w": {workflow id: [offset, length, ...]},
     "s": {service: [offset, length, ...]}}

Offsets are those of whole frames within the segment; ``s`` lists the outcome and
compensation records of each service. An index is written when its segment is
sealed; one that is missing or damaged is rebuilt from its segment and written again.
The active segment's index is kept in memory, extended by every write, until it is
sealed. Reads fetch just the indexed frames (`Backend.read_range`) and decode them.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import crc32c
import msgpack
import structlog

from actors.journal import codec
from actors.journal.backends import Backend, SegmentRef
from actors.journal.ends import holds, id_hash

log = structlog.get_logger("journal")
VERSION = 1
DIRECTORIES = 2
"""Sealed segments' directories kept decoded in memory, the last read (about 60 bytes a
saga3 workflow: 12 an id and 8 a frame; 6 MiB for a 64 MiB segment)."""
CACHED = 2
"""Sealed segments' indexes kept decoded in memory, the last read (each about 290
bytes per workflow of its segment)."""
STEP_KINDS = frozenset({"outcome", "compensation"})


def _offsets() -> array[int]:
    return array("Q")


@dataclass
class SegmentIndex:
    """Offsets and lengths as flat arrays of u64 (``[offset, length, offset, length, ...]``)."""

    size: int = 0
    # Built here: dicts of arrays. Read back: `Packed`, each array decoded when asked for.
    workflows: Mapping[str, array[int]] = field(default_factory=dict)
    services: Mapping[str, array[int]] = field(default_factory=dict)

    def add(self, record: codec.Record, offset: int, length: int) -> None:
        wid = record.get("w")
        service = str(record.get("service")) if record["k"] in STEP_KINDS else None
        self.add_key(wid if isinstance(wid, str) else None, service, offset, length)

    def add_key(self, wid: str | None, service: str | None, offset: int, length: int) -> None:
        """Index a frame at ``offset`` of workflow ``wid`` and, for a step, of ``service``."""
        if wid is not None:
            workflows = cast("dict[str, array[int]]", self.workflows)
            found = workflows.get(wid)
            if found is None:
                found = workflows[sys.intern(wid)] = _offsets()
            found.extend((offset, length))
        if service is not None:
            cast("dict[str, array[int]]", self.services).setdefault(service, _offsets()).extend((offset, length))
        self.size = max(self.size, offset + length)

    def extend(self, buf: bytes, base: int = 0, path: str = "<buffer>") -> None:
        """Index the frames of ``buf``, which starts at byte ``base`` of the segment."""
        for start, stop, record in codec.records_at(buf, path):
            self.add(record, base + start, stop - start)

    @classmethod
    def build(cls, buf: bytes, path: str = "<buffer>") -> SegmentIndex:
        idx = cls()
        idx.extend(buf, 0, path)
        return idx

    def encode(self) -> bytes:
        payload: bytes = msgpack.packb({"v": VERSION, "size": self.size, "w": _packed(self.workflows),
                                        "s": _packed(self.services)}, use_bin_type=True)
        return struct.pack("<I", crc32c.crc32c(payload)) + payload

    @classmethod
    def decode(cls, data: bytes) -> SegmentIndex | None:
        """The index in ``data``; None if it is damaged or of another version."""
        if len(data) < 4 or struct.unpack_from("<I", data)[0] != crc32c.crc32c(data[4:]):
            return None
        try:
            m: Any = msgpack.unpackb(data[4:], raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if not isinstance(m, dict) or m.get("v") != VERSION or not isinstance(m.get("w"), dict) \
                or not isinstance(m.get("s"), dict) or not isinstance(m.get("size"), int):
            return None
        w, svc = m["w"], m["s"]
        if any(not isinstance(v, bytes) or len(v) % 16 for t in (w, svc) for v in t.values()):
            return None  # offsets come in (offset, length) pairs of u64
        return cls(m["size"], Packed(w), Packed(svc))


if TYPE_CHECKING:
    _Table = Mapping[str, array[int]]
else:
    _Table = Mapping


class Packed(_Table):
    """A stored index's table as read: little-endian u64 bytes per key, decoded into an
    array when a key is asked for (reading an index costs its unpacking, not an array
    per workflow)."""

    def __init__(self, raw: dict[str, bytes]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> array[int]:
        a = array("Q")
        a.frombytes(self._raw[key])
        if sys.byteorder != "little":
            a.byteswap()
        return a

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def keys(self) -> KeysView[str]:
        return self._raw.keys()


def _packed(table: Mapping[str, array[int]]) -> dict[str, bytes]:
    """Each array as little-endian u64 bytes."""
    if isinstance(table, Packed):
        return dict(table._raw)
    if sys.byteorder == "little":
        return {k: a.tobytes() for k, a in table.items()}
    out = {}
    for k, a in table.items():
        b = array("Q", a)
        b.byteswap()
        out[k] = b.tobytes()
    return out


def spans(offsets: Sequence[int]) -> list[tuple[int, int]]:
    return list(zip(offsets[::2], offsets[1::2], strict=True))


class Indexes:
    """The index of each segment of one journal: the unsealed ones in memory, the
    sealed ones read from the backend when asked for (rebuilt if missing or damaged)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.active: dict[int, SegmentIndex] = {}
        self.rebuilt = 0
        self._cache: OrderedDict[int, SegmentIndex] = OrderedDict()  # sealed indexes read lately
        self._dirs: OrderedDict[int, Directory] = OrderedDict()  # sealed directories read lately
        # Per sealed segment read or written here, the sorted hashes of its workflow ids
        # (8 bytes an id): a lookup reads only the indexes of the segments that may hold its ids.
        self.ids: dict[int, array[int]] = {}

    def _keep(self, first_seq: int, idx: SegmentIndex) -> SegmentIndex:
        if self._stored_hashes(first_seq) is None:  # no directory stored, or a damaged one
            directory = Directory.of(idx)
            self.ids[first_seq] = directory.hashes
            with contextlib.suppress(Exception):  # any storage error: computed again next time
                self.backend.put_blob(directory_name(first_seq), directory.encode())
        self._cache[first_seq] = idx
        self._cache.move_to_end(first_seq)
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
        return idx

    def written(self, first_seq: int, frames: list[bytes], start: int,
                keys: list[tuple[str | None, str | None]] | None = None) -> None:
        """``frames`` were appended at byte ``start`` of the unsealed segment ``first_seq``;
        ``keys``, when the writer knows them: each frame's workflow id and step service
        (the frames are then not decoded again)."""
        idx = self.active.get(first_seq)
        if idx is None or idx.size != start:  # first write here, or after a repair: index the durable bytes
            buf = self.backend.read(SegmentRef(first_seq, False))[:start] if start else b""
            idx = self.active[first_seq] = SegmentIndex.build(buf)
        if keys is None or len(keys) != len(frames):
            idx.extend(b"".join(frames), start)
            return
        offset = start
        for frame, (wid, service) in zip(frames, keys, strict=True):
            idx.add_key(wid, service, offset, len(frame))
            offset += len(frame)

    def sealed(self, first_seq: int) -> None:
        """The segment ``first_seq`` was sealed: store its index beside it. Until they are
        stored, a reader finds the index in memory (`load`)."""
        idx = self.active.get(first_seq)
        ref = SegmentRef(first_seq, True)
        if idx is None:
            idx = SegmentIndex.build(self.backend.read(ref), self.backend.describe(ref))
        self.backend.put_index(first_seq, idx.encode())
        # Only its ids' hashes stay, its directory stored too: a reader loads the index
        # again when it needs it, and finds an id by the directory, without the index.
        directory = Directory.of(idx)
        self.backend.put_blob(directory_name(first_seq), directory.encode())
        self.ids[first_seq] = directory.hashes
        self.active.pop(first_seq, None)

    def load(self, ref: SegmentRef) -> SegmentIndex:
        """``ref``'s index: from memory (unsealed) or the backend, else rebuilt from the segment."""
        if not ref.sealed:
            idx = self.active.get(ref.first_seq)
            if idx is None:
                try:
                    buf = self.backend.read(ref)
                except FileNotFoundError:  # sealed meanwhile (by the storage thread): read the sealed copy
                    return self.load(SegmentRef(ref.first_seq, True))
                idx = self.active[ref.first_seq] = SegmentIndex.build(buf)
            return idx
        sealing = self.active.get(ref.first_seq)  # sealed, its index not yet stored
        if sealing is not None:
            return sealing
        cached = self._cache.get(ref.first_seq)
        if cached is not None:
            self._cache.move_to_end(ref.first_seq)
            return cached
        try:
            found = SegmentIndex.decode(self.backend.get_index(ref.first_seq))
        except FileNotFoundError:
            found = None
        if found is not None:
            return self._keep(ref.first_seq, found)
        idx = SegmentIndex.build(self.backend.read(ref), self.backend.describe(ref))
        self.rebuilt += 1
        log.warning("segment_index_rebuilt", segment=self.backend.describe(ref))
        try:
            self.backend.put_index(ref.first_seq, idx.encode())
        except Exception as exc:  # any storage error: rebuilt again next time
            log.warning("segment_index_write_failed", error=repr(exc))
        return self._keep(ref.first_seq, idx)

    def fetch(self, ref: SegmentRef, offsets: Iterable[tuple[int, int]]) -> list[codec.Record]:
        """The records at ``offsets`` of ``ref``, by ranged reads (one per group of records
        less than `GAP` bytes apart)."""
        out: list[codec.Record] = []
        path = self.backend.describe(ref)
        for start, stop, group in _groups(sorted(offsets)):
            try:
                buf = self.backend.read_range(ref, start, stop - start)
            except FileNotFoundError:  # sealed meanwhile: read the sealed copy
                ref = SegmentRef(ref.first_seq, True)
                buf = self.backend.read_range(ref, start, stop - start)
            for offset, length in group:
                piece = buf[offset - start:offset - start + length]
                out += [r for _, _, r in codec.records_at(piece, f"{path}@{offset}")]
        return out

    def deleted(self, ref: SegmentRef) -> None:
        self.active.pop(ref.first_seq, None)
        self.ids.pop(ref.first_seq, None)
        self._cache.pop(ref.first_seq, None)
        self._dirs.pop(ref.first_seq, None)
        if ref.sealed:
            with contextlib.suppress(FileNotFoundError):
                self.backend.delete_index(ref.first_seq)
            self.backend.delete_blob(directory_name(ref.first_seq))

    def _stored_hashes(self, first_seq: int) -> array[int] | None:
        """The sealed segment's ids' hashes: from memory, else from its stored `Directory`
        (None if missing or damaged: its index is read instead)."""
        found = self.ids.get(first_seq)
        if found is None:
            directory = self._directory(first_seq)
            if directory is None:
                return None
            found = self.ids[first_seq] = directory.hashes
        return found

    def _directory(self, first_seq: int) -> Directory | None:
        found = self._dirs.get(first_seq)
        if found is not None:
            self._dirs.move_to_end(first_seq)
            return found
        try:
            found = Directory.decode(self.backend.get_blob(directory_name(first_seq)))
        except (FileNotFoundError, ValueError):
            return None
        self._dirs[first_seq] = found
        while len(self._dirs) > DIRECTORIES:
            self._dirs.popitem(last=False)
        return found

    def _by_directory(self, ref: SegmentRef, wanted: dict[str, int]) -> dict[str, list[codec.Record]] | None:
        """The records of ``wanted`` (id to hash) in the sealed segment ``ref``, read by
        the frames its directory gives, without its index; None when the directory is
        missing or damaged."""
        directory = self._directory(ref.first_seq)
        if directory is None:
            return None
        found: dict[str, list[codec.Record]] = {}
        for w, h in wanted.items():
            frames = directory.frames(h)
            records = [r for r in self.fetch(ref, frames) if r.get("w") == w] if frames else []
            if records:
                found[w] = records
        return found

    def records_of(self, refs: list[SegmentRef], workflow_ids: Iterable[str]) -> dict[str, list[codec.Record]]:
        """Every stored record of each of ``workflow_ids`` in the segments ``refs``, in
        journal order (ids with none are left out)."""
        wanted = {w: id_hash(w) for w in workflow_ids}
        found: dict[str, list[codec.Record]] = {}
        for ref in refs:
            seen = self._stored_hashes(ref.first_seq) if ref.sealed else None
            if seen is not None:
                here = {w: h for w, h in wanted.items() if holds(seen, h)}
                if not here:
                    continue
                direct = self._by_directory(ref, here)
                if direct is not None:
                    for w, records in direct.items():
                        found.setdefault(w, []).extend(records)
                    continue
            idx = self.load(ref)
            for wid in wanted.keys() & idx.workflows.keys():
                found.setdefault(wid, []).extend(self.fetch(ref, spans(idx.workflows[wid])))
        return found


@dataclass
class Directory:
    """A sealed segment's workflows by the hash of their id (`ends.id_hash`), sorted, each
    with where its frames lie in the segment (``blobs/segment-<first seq>.ids``,
    crc32c-checked): an id not in a segment is ruled out by its hashes, kept in memory
    (8 bytes a workflow); one in it is read by ranged reads of just its frames, without
    the index, and only its frames are checked and decoded.

    Stored as ``DIR2``, then u32 ids, frames and offset width (4, or 8 in a segment past
    4 GiB), then the columns (little-endian): hashes (i64 per id), firsts (u32 per id
    and one more: the frames of id ``i`` are ``firsts[i]:firsts[i + 1]``), offsets (of
    that width per frame), lengths (u32 per frame): about 60 bytes a saga3 workflow. A
    directory of an earlier layout does not decode: the index is read and it is written
    again in this one."""

    hashes: array[int]
    firsts: array[int]
    offsets: array[int]
    lengths: array[int]

    @classmethod
    def of(cls, idx: SegmentIndex) -> Directory:
        hashes, firsts, offsets, lengths = array("q"), array("I", [0]), array(_width(idx.size)), array("I")
        for h, w in sorted((id_hash(w), w) for w in idx.workflows):
            a = idx.workflows[w]
            hashes.append(h)
            offsets.extend(array(offsets.typecode, a[::2]))
            lengths.extend(array("I", a[1::2]))
            firsts.append(len(offsets))
        return cls(hashes, firsts, offsets, lengths)

    def frames(self, h: int) -> list[tuple[int, int]]:
        """The (offset, length) of each frame of the ids that hash to ``h`` (all of them, should two)."""
        i = bisect_left(self.hashes, h)
        out: list[tuple[int, int]] = []
        while i < len(self.hashes) and self.hashes[i] == h:
            lo, hi = self.firsts[i], self.firsts[i + 1]
            out += zip(self.offsets[lo:hi], self.lengths[lo:hi], strict=True)
            i += 1
        return out

    def encode(self) -> bytes:
        cols = [array("q", self.hashes), array("I", self.firsts), array(self.offsets.typecode, self.offsets),
                array("I", self.lengths)]
        if sys.byteorder != "little":
            for c in cols:
                c.byteswap()
        head = struct.pack("<III", len(self.hashes), len(self.offsets), self.offsets.itemsize)
        payload = _MAGIC + head + b"".join(c.tobytes() for c in cols)
        return struct.pack("<I", crc32c.crc32c(payload)) + payload

    @classmethod
    def decode(cls, data: bytes) -> Directory:
        """The directory in ``data``; `ValueError` if it is damaged or of an earlier layout."""
        if len(data) < 20 or struct.unpack_from("<I", data)[0] != crc32c.crc32c(data[4:]) \
                or data[4:8] != _MAGIC:
            raise ValueError("damaged segment directory, or of an earlier layout")
        n, m, width = struct.unpack_from("<III", data, 8)
        if width not in (4, 8) or len(data) != 20 + 8 * n + 4 * (n + 1) + (width + 4) * m:
            raise ValueError("damaged segment directory")
        cols: list[array[int]] = [array("q"), array("I"), array("I" if width == 4 else "Q"), array("I")]
        at = 20
        for c, count in zip(cols, (n, n + 1, m, m), strict=True):
            c.frombytes(data[at:at + c.itemsize * count])
            at += c.itemsize * count
            if sys.byteorder != "little":
                c.byteswap()
        if cols[1][0] != 0 or cols[1][-1] != m:
            raise ValueError("damaged segment directory")
        return cls(*cols)


_MAGIC = b"DIR2"


class DirectoryFile:
    """A stored `Directory` read in place, by another process than its writer: its
    hashes column when opened, an id's frames by three small reads of the columns
    (``pread``), never the whole file. The whole file's checksum is not verified (that
    would read it all): its layout and size are, and each frame read by it is checked
    by its own checksum and is the caller's to match to its id."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) != 20 or head[4:8] != _MAGIC:
                raise ValueError(f"{path}: not a segment directory of this layout")
            n, m, width = struct.unpack_from("<III", head, 8)
            self.n, self.m, self.width = n, m, width
            if width not in (4, 8) or os.fstat(f.fileno()).st_size != 20 + 8 * n + 4 * (n + 1) + (width + 4) * m:
                raise ValueError(f"{path}: damaged segment directory")
            self.hashes = _column("q", f.read(8 * n), n)

    def frames(self, h: int) -> list[tuple[int, int]]:
        """The (offset, length) of each frame of the ids that hash to ``h``."""
        i = bisect_left(self.hashes, h)
        if i == len(self.hashes) or self.hashes[i] != h:
            return []
        out: list[tuple[int, int]] = []
        firsts_at = 20 + 8 * self.n
        offsets_at = firsts_at + 4 * (self.n + 1)
        lengths_at = offsets_at + self.width * self.m
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while i < len(self.hashes) and self.hashes[i] == h:
                lo, hi = _column("I", os.pread(fd, 8, firsts_at + 4 * i), 2)
                if not lo <= hi <= self.m:
                    raise ValueError(f"{self.path}: damaged segment directory")
                offsets = _column("I" if self.width == 4 else "Q",
                                  os.pread(fd, self.width * (hi - lo), offsets_at + self.width * lo), hi - lo)
                lengths = _column("I", os.pread(fd, 4 * (hi - lo), lengths_at + 4 * lo), hi - lo)
                out += zip(offsets, lengths, strict=True)
                i += 1
        finally:
            os.close(fd)
        return out


def _column(typecode: str, data: bytes, count: int) -> array[int]:
    """``count`` little-endian numbers of ``typecode`` from ``data`` (`ValueError` if short)."""
    col = array(typecode)
    if len(data) != col.itemsize * count:
        raise ValueError("segment directory cut short")
    col.frombytes(data)
    if sys.byteorder != "little":
        col.byteswap()
    return col


def _width(size: int) -> str:
    """The array type of a segment's frame offsets: u32 unless it is 4 GiB or more."""
    return "I" if size < 1 << 32 else "Q"


def directory_name(first_seq: int) -> str:
    """The blob of a sealed segment's `Directory`."""
    return f"segment-{first_seq:020d}.ids"


GAP = 64 << 10


def _groups(offsets: list[tuple[int, int]]) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Runs of (offset, length) whose gaps are under `GAP`, as (start, stop, members)."""
    group: list[tuple[int, int]] = []
    start = stop = 0
    for offset, length in offsets:
        if group and offset - stop >= GAP:
            yield start, stop, group
            group = []
        if not group:
            start = offset
        group.append((offset, length))
        stop = max(stop, offset + length)
    if group:
        yield start, stop, group
