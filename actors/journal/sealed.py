"""A long-finished workflow read from the leader's sealed segments by another process
on its host.

The supervisor answers ``result``, ``wait`` and ``status`` of a workflow out of its
cache by reading the workflow's records here, read-only, through the sealed segments'
stored directories (`segindex.DirectoryFile`: their hashes held, an id's frames read in
place), and folding them as the journal does (`stored.fold`), instead of asking the
LogActor: one Ray call less. `SealedReader.finished` answers None whenever it cannot be
sure its fold is the journal's, and the caller then asks the leader. It is sure when:

- the storage is a ``file://`` directory on this host whose ``LOCK`` names the live
  leader: the owner it was given, this host, and the pid the leader reported;
- the workflow's end lies in a sealed segment with readable directories, and so does
  every record of its run before it. A sealed segment never changes, none holding a
  kept workflow's records is deleted, and a finished workflow gets no record after its
  end but a new ``submitted`` once retention frees its id;
- it ended within ``retention_s`` of now (by `MARGIN_S`): retention has not freed its
  id, so no later run of the same id exists.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from actors.journal import codec
from actors.journal.backends import SegmentRef
from actors.journal.ends import id_hash
from actors.journal.files import FileBackend
from actors.journal.segindex import DirectoryFile, Indexes, directory_name
from actors.journal.stored import fold
from actors.workflow_state import Workflow
from workflows.errors import JournalCorrupt

MARGIN_S = 1.0
"""How much closer to the retention watermark than ``retention_s`` an end may lie and
still be read here (the leader runs on this host, by the same clock)."""


class SealedReader:
    """Finished workflows of the journal at ``storage`` (``file://`` on this host), read-only."""

    def __init__(self, storage: str, owner: str, leader_pid: int, retention_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if not storage.startswith("file://"):
            raise ValueError(f"not a file:// storage: {storage!r}")
        self.root = storage.removeprefix("file://")
        self.owner = owner
        self.leader_pid = leader_pid
        self.retention_s = retention_s
        self.clock = clock
        self.host = socket.gethostname()
        self.backend = FileBackend(self.root)
        self._indexes = Indexes(self.backend)  # its `fetch` only: ranged reads of frames, nothing written
        self._sealed: list[SegmentRef] | None = None  # the sealed segments, as listed last
        self._directories: dict[int, DirectoryFile] = {}  # by first seq: each sealed segment's, its hashes held
        self.answered = 0
        """Workflows read here (each a call to the leader spared)."""
        self.stale = False
        """Whether the last read found the ``LOCK`` naming another leader than
        ``leader_pid`` (it restarted, or moved): the caller learns the new pid, or not."""

    def leader_here(self) -> bool:
        """Whether the storage's ``LOCK`` names the leader this reader was given, on this host."""
        try:
            with open(os.path.join(self.root, "LOCK")) as f:
                holder: Any = json.loads(f.read())
        except (OSError, ValueError):
            holder = None
        self.stale = not (isinstance(holder, dict) and holder.get("owner") == self.owner
                          and holder.get("host") == self.host and holder.get("pid") == self.leader_pid)
        return not self.stale

    def finished(self, workflow_id: str) -> Workflow | None:
        """``workflow_id``'s fold, finished, read from the sealed segments when it is sure
        to be the journal's (see the module), else None.

        The segments listed last time are read first: a listing that lacks newer
        segments can only miss a workflow (its end, and so every record of its run, in
        segments listed or in none), never give another fold; a miss, or a segment
        deleted since, lists them again."""
        if not self.leader_here():
            return None
        wf = None if self._sealed is None else self._read(workflow_id, fresh=False)
        if wf is None:
            wf = self._read(workflow_id, fresh=True)
        if wf is None or not (wf.finished_at or 0.0) >= self.clock() - self.retention_s + MARGIN_S:
            return None  # not ended in a sealed segment, or its id perhaps freed by retention and run again
        self.answered += 1
        return wf

    def _read(self, workflow_id: str, fresh: bool) -> Workflow | None:
        """The fold of ``workflow_id`` if it ended in the sealed segments, else None."""
        try:
            wf = fold(workflow_id, self._records(workflow_id, fresh))
        except (OSError, ValueError, KeyError, TypeError, JournalCorrupt):
            return None  # compacted away since the listing, damaged, a directory not stored yet
        return wf if wf is not None and wf.state.finished else None

    def _records(self, workflow_id: str, fresh: bool) -> list[codec.Record]:
        """Every record of ``workflow_id`` in the sealed segments (those listed last, or
        listed anew), read by their directories."""
        if fresh or self._sealed is None:
            self._sealed = [r for r in self.backend.segments() if r.sealed]
            for gone in self._directories.keys() - {r.first_seq for r in self._sealed}:
                del self._directories[gone]
        h = id_hash(workflow_id)
        found: list[codec.Record] = []
        for ref in self._sealed:
            directory = self._directories.get(ref.first_seq)
            if directory is None:
                path = os.path.join(self.root, "blobs", directory_name(ref.first_seq))
                directory = self._directories[ref.first_seq] = DirectoryFile(path)
            frames = directory.frames(h)
            if frames:
                found += [r for r in self._indexes.fetch(ref, frames) if r.get("w") == workflow_id]
        return found
