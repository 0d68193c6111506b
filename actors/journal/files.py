"""``file:///path``: active segments in ``path/wal``, sealed ones in ``path/segments``,
snapshots in ``path/snapshots``, segment indexes in ``path/indexes``, blobs in ``path/blobs``, fenced by an exclusive
``flock`` on ``path/LOCK``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from typing import IO

from actors.journal.backends import ActiveSegment, Backend, SegmentRef, check_blob_name, merge_refs, parse_names
from workflows.errors import Fenced


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileSegment(ActiveSegment):
    def __init__(self, path: str) -> None:
        self._f: IO[bytes] = open(path, "ab")  # noqa: SIM115 - held open while active

    def append(self, data: bytes) -> None:
        self._f.write(data)

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def flush(self) -> None:
        self._f.flush()

    def size(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class FileBackend(Backend):
    """Segments as files under one directory (one machine, or a shared mount)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.uri = "file://" + root
        self.wal = os.path.join(root, "wal")
        self.sealed = os.path.join(root, "segments")
        self._lock_file: IO[str] | None = None

    def lock(self, owner: str) -> None:
        os.makedirs(self.wal, exist_ok=True)
        os.makedirs(self.sealed, exist_ok=True)
        f = open(os.path.join(self.root, "LOCK"), "a+")  # noqa: SIM115 - held for the owner's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise Fenced(f"storage {self.uri} is held by another coordinator: {holder}") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid()}))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def segments(self) -> list[SegmentRef]:
        if not os.path.isdir(self.root):
            return []
        active = parse_names(os.listdir(self.wal), "log", False) if os.path.isdir(self.wal) else []
        sealed = parse_names(os.listdir(self.sealed), "seg", True) if os.path.isdir(self.sealed) else []
        return merge_refs(active, sealed)

    def _path(self, ref: SegmentRef) -> str:
        return os.path.join(self.sealed if ref.sealed else self.wal, ref.name)

    def read(self, ref: SegmentRef) -> bytes:
        with open(self._path(ref), "rb") as f:
            return f.read()

    def read_range(self, ref: SegmentRef, offset: int, length: int) -> bytes:
        with open(self._path(ref), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def truncate(self, ref: SegmentRef, size: int) -> None:
        with open(self._path(ref), "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    def open_active(self, first_seq: int) -> ActiveSegment:
        os.makedirs(self.wal, exist_ok=True)
        seg = _FileSegment(self._path(SegmentRef(first_seq, False)))
        _fsync_dir(self.wal)
        return seg

    def seal(self, first_seq: int) -> None:
        os.makedirs(self.sealed, exist_ok=True)
        try:
            os.rename(self._path(SegmentRef(first_seq, False)), self._path(SegmentRef(first_seq, True)))
        except FileNotFoundError:
            # Idempotent: a seal retried after its rename landed but a directory fsync failed.
            if not os.path.exists(self._path(SegmentRef(first_seq, True))):
                raise
        _fsync_dir(self.sealed)
        _fsync_dir(self.wal)

    def delete(self, ref: SegmentRef) -> None:
        os.unlink(self._path(ref))

    def put_snapshot(self, name: str, data: bytes) -> None:
        folder = os.path.join(self.root, "snapshots")
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(folder, name))
        _fsync_dir(folder)

    def get_snapshot(self, name: str) -> bytes:
        with open(os.path.join(self.root, "snapshots", name), "rb") as f:
            return f.read()

    def snapshots(self) -> list[str]:
        folder = os.path.join(self.root, "snapshots")
        return sorted(n for n in os.listdir(folder) if n.endswith(".snap")) if os.path.isdir(folder) else []

    def delete_snapshot(self, name: str) -> None:
        os.unlink(os.path.join(self.root, "snapshots", name))

    def _index_path(self, first_seq: int) -> str:
        return os.path.join(self.root, "indexes", f"{first_seq:020d}.idx")

    def put_index(self, first_seq: int, data: bytes) -> None:
        folder = os.path.join(self.root, "indexes")
        os.makedirs(folder, exist_ok=True)
        tmp = self._index_path(first_seq) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self._index_path(first_seq))

    def get_index(self, first_seq: int) -> bytes:
        with open(self._index_path(first_seq), "rb") as f:
            return f.read()

    def indexes(self) -> list[int]:
        folder = os.path.join(self.root, "indexes")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        return sorted(int(n[:-4]) for n in names if n.endswith(".idx") and n[:-4].isdigit())

    def delete_index(self, first_seq: int) -> None:
        os.unlink(self._index_path(first_seq))

    def put_blob(self, name: str, data: bytes) -> None:
        folder = os.path.join(self.root, "blobs")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, check_blob_name(name))
        tmp = f"{path}.{os.getpid()}.tmp"  # a writer of its own: two may store one blob at once
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        _fsync_dir(folder)

    def get_blob(self, name: str) -> bytes:
        with open(os.path.join(self.root, "blobs", check_blob_name(name)), "rb") as f:
            return f.read()

    def delete_blob(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, "blobs", check_blob_name(name)))
