"""Where journal segments live, behind one narrow interface.

A segment is named by the sequence number of its first record. The *active*
segment takes appends (append bytes, sync, truncate a torn tail); a *sealed* one is
immutable and lives in the object store named by the storage URI. Backends:

- ``file:///path``: active segments in ``path/wal``, sealed ones in ``path/segments``.
- ``mem://name``:   the same in process memory (real code, for tests and tools).

Each backend also fences: `lock` takes the storage for one owner and raises `Fenced`
while another holds it.

``mem://`` stores carry named fault-injection points (`Faults`): tests and the
deterministic simulation arm an operation to fail, and the journal must survive it.
"""

from __future__ import annotations

import collections
import errno
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from workflows.errors import Fenced

FAULT_OPS = frozenset({"lock", "segments", "read", "truncate", "open_active", "append", "sync", "flush", "seal",
                       "delete", "put_snapshot", "get_snapshot", "snapshots", "delete_snapshot"})


class Faults:
    """Named fault-injection points of one ``mem://`` store.

    ``arm(op)`` makes the next ``times`` calls of ``op`` raise ``error`` (by default
    ``OSError(EIO)``); `check` is called by the backend at the start of each operation,
    before it changes anything; ``fired`` counts the faults raised per operation.
    Thread-safe: the journal calls its backend from a worker thread.
    """

    def __init__(self) -> None:
        self.fired: collections.Counter[str] = collections.Counter()
        self._armed: dict[str, tuple[int, BaseException | None]] = {}
        self._lock = threading.Lock()

    def arm(self, op: str, *, times: int = 1, error: BaseException | None = None) -> None:
        """Fail the next ``times`` calls of ``op`` with ``error`` (a fresh EIO `OSError` when None)."""
        if op not in FAULT_OPS:
            raise ValueError(f"unknown fault point {op!r}; one of {sorted(FAULT_OPS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._armed[op] = (times, error)

    def disarm(self, op: str | None = None) -> None:
        """Disarm ``op``, or every operation when None."""
        with self._lock:
            if op is None:
                self._armed.clear()
            else:
                self._armed.pop(op, None)

    def check(self, op: str) -> None:
        """Raise the armed error for ``op`` and count one down; nothing when unarmed."""
        with self._lock:
            armed = self._armed.get(op)
            if armed is None:
                return
            times, error = armed
            if times <= 1:
                del self._armed[op]
            else:
                self._armed[op] = (times - 1, error)
            self.fired[op] += 1
        raise error if error is not None else OSError(errno.EIO, f"injected fault: {op}")


@dataclass(frozen=True, order=True)
class SegmentRef:
    first_seq: int
    sealed: bool

    @property
    def name(self) -> str:
        return f"{self.first_seq:020d}.{'seg' if self.sealed else 'log'}"


class ActiveSegment(ABC):
    @abstractmethod
    def append(self, data: bytes) -> None: ...

    @abstractmethod
    def sync(self) -> None:
        """Make every appended byte durable (fsync)."""

    @abstractmethod
    def flush(self) -> None:
        """Hand appended bytes to the OS without waiting for the disk."""

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


class Backend(ABC):
    uri: str

    @abstractmethod
    def lock(self, owner: str) -> None:
        """Take the storage for ``owner``; `Fenced` if another coordinator holds it."""

    @abstractmethod
    def unlock(self) -> None: ...

    @abstractmethod
    def segments(self) -> list[SegmentRef]:
        """Every segment, sealed and active, ordered by first sequence number."""

    @abstractmethod
    def read(self, ref: SegmentRef) -> bytes: ...

    @abstractmethod
    def truncate(self, ref: SegmentRef, size: int) -> None:
        """Cut an active segment's torn tail, durably."""

    @abstractmethod
    def open_active(self, first_seq: int) -> ActiveSegment: ...

    @abstractmethod
    def seal(self, first_seq: int) -> None:
        """Make the active segment immutable and move it to the object store."""

    @abstractmethod
    def delete(self, ref: SegmentRef) -> None: ...

    # Snapshots: whole objects, written once, beside the sealed segments.
    @abstractmethod
    def put_snapshot(self, name: str, data: bytes) -> None:
        """Store ``data`` durably under ``name``, all or nothing."""

    @abstractmethod
    def get_snapshot(self, name: str) -> bytes: ...

    @abstractmethod
    def snapshots(self) -> list[str]:
        """Names of the stored snapshots, oldest first."""

    @abstractmethod
    def delete_snapshot(self, name: str) -> None: ...

    @abstractmethod
    def read_range(self, ref: SegmentRef, offset: int, length: int) -> bytes:
        """``length`` bytes of a segment from ``offset`` (fewer at its end)."""

    # Segment indexes (`segindex`): one object per sealed segment, named by its first seq.
    @abstractmethod
    def put_index(self, first_seq: int, data: bytes) -> None: ...

    @abstractmethod
    def get_index(self, first_seq: int) -> bytes:
        """The stored index; `FileNotFoundError` if there is none."""

    @abstractmethod
    def indexes(self) -> list[int]: ...

    @abstractmethod
    def delete_index(self, first_seq: int) -> None: ...

    # Blobs: whole objects under ``blobs/``, written by others than the journal (a
    # deployment's code package, named by its content hash), so they are not fenced.
    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> None:
        """Store ``data`` durably under ``name`` (`check_blob_name`), all or nothing."""

    @abstractmethod
    def get_blob(self, name: str) -> bytes:
        """The stored blob; `FileNotFoundError` if there is none."""

    @abstractmethod
    def delete_blob(self, name: str) -> None:
        """Remove the blob; nothing if there is none."""

    def describe(self, ref: SegmentRef) -> str:
        return f"{self.uri.rstrip('/')}/{'segments' if ref.sealed else 'wal'}/{ref.name}"


BLOB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")


def check_blob_name(name: str) -> str:
    """``name`` if it is a plain file name (letters, digits, ``._-``), else `ValueError`."""
    if not BLOB_NAME.fullmatch(name):
        raise ValueError(f"invalid blob name {name!r}")
    return name


def parse_names(names: list[str], suffix: str, sealed: bool) -> list[SegmentRef]:
    out = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == suffix and stem.isdigit():
            out.append(SegmentRef(int(stem), sealed))
    return out


def merge_refs(active: list[SegmentRef], sealed: list[SegmentRef]) -> list[SegmentRef]:
    """Sealed copies win over active ones with the same first sequence number."""
    sealed_seqs = {r.first_seq for r in sealed}
    return sorted(sealed + [r for r in active if r.first_seq not in sealed_seqs])


class GuardedSegment(ActiveSegment):
    """An active segment whose writes first pass ``check`` (which raises to refuse them):
    the s3 backend writes only while it holds its lease."""

    def __init__(self, inner: ActiveSegment, check: Callable[[], None]) -> None:
        self._inner = inner
        self._check = check

    def append(self, data: bytes) -> None:
        self._check()
        self._inner.append(data)

    def sync(self) -> None:
        self._check()
        self._inner.sync()

    def flush(self) -> None:
        self._check()
        self._inner.flush()

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


class _MemorySegment(ActiveSegment):
    def __init__(self, buf: bytearray, faults: Faults) -> None:
        self._buf = buf
        self._faults = faults

    def append(self, data: bytes) -> None:
        self._faults.check("append")
        self._buf += data

    def sync(self) -> None:
        self._faults.check("sync")

    def flush(self) -> None:
        self._faults.check("flush")

    def size(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        pass


class MemoryBackend(Backend):
    """Segments in process memory, shared by name within the process, with `Faults`."""

    _stores: ClassVar[dict[str, dict[SegmentRef, bytearray]]] = {}
    _owners: ClassVar[dict[str, str]] = {}
    _snapshot_store: ClassVar[dict[str, dict[str, bytes]]] = {}
    _blob_store: ClassVar[dict[str, dict[str, bytes]]] = {}
    _faults: ClassVar[dict[str, Faults]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self.uri = f"mem://{name}"
        with self._guard:
            self._segments = self._stores.setdefault(name, {})
            self.faults: Faults = self._faults.setdefault(name, Faults())
        self._owner: str | None = None

    def lock(self, owner: str) -> None:
        self.faults.check("lock")
        with self._guard:
            holder = self._owners.get(self.name)
            if holder is not None and holder != owner:
                raise Fenced(f"storage {self.uri} is held by another coordinator: {holder}")
            self._owners[self.name] = owner
            self._owner = owner

    def unlock(self) -> None:
        with self._guard:
            if self._owner is not None and self._owners.get(self.name) == self._owner:
                del self._owners[self.name]
            self._owner = None

    def segments(self) -> list[SegmentRef]:
        self.faults.check("segments")
        refs = list(self._segments)  # one C-level copy: the fsync thread may seal meanwhile
        return merge_refs([r for r in refs if not r.sealed], [r for r in refs if r.sealed])

    def read(self, ref: SegmentRef) -> bytes:
        self.faults.check("read")
        try:
            return bytes(self._segments[ref])
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such segment", self.describe(ref)) from None

    def read_range(self, ref: SegmentRef, offset: int, length: int) -> bytes:
        return self.read(ref)[offset:offset + length]

    def put_index(self, first_seq: int, data: bytes) -> None:
        self._blobs()[f"indexes/{first_seq:020d}.idx"] = bytes(data)

    def get_index(self, first_seq: int) -> bytes:
        try:
            return self._blobs()[f"indexes/{first_seq:020d}.idx"]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such index", f"{self.uri}/indexes/{first_seq}") from None

    def indexes(self) -> list[int]:
        return sorted(int(n[8:-4]) for n in list(self._blobs()) if n.startswith("indexes/"))

    def delete_index(self, first_seq: int) -> None:
        self._blobs().pop(f"indexes/{first_seq:020d}.idx", None)

    def truncate(self, ref: SegmentRef, size: int) -> None:
        self.faults.check("truncate")
        del self._segments[ref][size:]

    def open_active(self, first_seq: int) -> ActiveSegment:
        self.faults.check("open_active")
        return _MemorySegment(self._segments.setdefault(SegmentRef(first_seq, False), bytearray()), self.faults)

    def seal(self, first_seq: int) -> None:
        self.faults.check("seal")
        active = self._segments.pop(SegmentRef(first_seq, False), None)
        if active is not None:
            self._segments[SegmentRef(first_seq, True)] = active
        elif SegmentRef(first_seq, True) not in self._segments:  # idempotent, like the file backend
            raise FileNotFoundError(errno.ENOENT, "no such segment", self.describe(SegmentRef(first_seq, False)))

    def delete(self, ref: SegmentRef) -> None:
        self.faults.check("delete")
        del self._segments[ref]

    def put_snapshot(self, name: str, data: bytes) -> None:
        self.faults.check("put_snapshot")
        self._blobs()[name] = bytes(data)

    def get_snapshot(self, name: str) -> bytes:
        self.faults.check("get_snapshot")
        return self._blobs()[name]

    def snapshots(self) -> list[str]:
        self.faults.check("snapshots")
        return sorted(n for n in list(self._blobs()) if not n.startswith("indexes/"))

    def delete_snapshot(self, name: str) -> None:
        self.faults.check("delete_snapshot")
        del self._blobs()[name]

    def _blobs(self) -> dict[str, bytes]:
        with self._guard:
            return self._snapshot_store.setdefault(self.name, {})

    def put_blob(self, name: str, data: bytes) -> None:
        with self._guard:
            self._blob_store.setdefault(self.name, {})[check_blob_name(name)] = bytes(data)

    def get_blob(self, name: str) -> bytes:
        with self._guard:
            found = self._blob_store.get(self.name, {}).get(check_blob_name(name))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "no such blob", f"{self.uri}/blobs/{name}")
        return found

    def delete_blob(self, name: str) -> None:
        with self._guard:
            self._blob_store.get(self.name, {}).pop(check_blob_name(name), None)

    @classmethod
    def drop(cls, name: str) -> None:
        """Forget the store ``name``: its segments, snapshots, lock and faults."""
        with cls._guard:
            cls._stores.pop(name, None)
            cls._owners.pop(name, None)
            cls._snapshot_store.pop(name, None)
            cls._blob_store.pop(name, None)
            cls._faults.pop(name, None)
