"""The end of a long-finished workflow, read from the leader's sealed segments by another
process on its host.

The supervisor answers ``result`` of a workflow out of its cache by reading the
workflow's terminal record here, read-only, through the sealed segments' stored
directories (`segindex.DirectoryFile`: their hashes held, an id's frames read in place),
instead of asking the LogActor: one Ray call less.
`SealedEnds.end` answers None whenever it cannot be sure, and the caller then asks the
leader as before. It is sure when:

- the storage is a ``file://`` directory on this host whose ``LOCK`` names the live
  leader: the owner it was given, this host, and the pid the leader reported;
- the terminal record lies in a sealed segment with a readable directory. A sealed
  segment never changes, and a finished workflow gets no record after its end but a
  new ``submitted`` once retention frees its id;
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
from actors.journal.ends import id_hash
from actors.journal.files import FileBackend
from actors.journal.segindex import DirectoryFile, directory_name
from actors.records import Ending, from_wire
from workflows.errors import JournalCorrupt

END_KINDS = frozenset({"completed", "failed", "compensated", "cancelled", "terminated"})
MARGIN_S = 1.0
"""How much closer to the retention watermark than ``retention_s`` an end may lie and
still be read here (the leader runs on this host, by the same clock)."""


class SealedEnds:
    """Terminal records of the journal at ``storage`` (``file://`` on this host), read-only."""

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
        self._directories: dict[int, DirectoryFile] = {}  # by first seq: each sealed segment's, its hashes held
        self.answered = 0
        """Ends read here (each a call to the leader spared)."""
        self.stale = False
        """Whether the last `end` found the ``LOCK`` naming another leader than
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

    def end(self, workflow_id: str) -> Ending | None:
        """``workflow_id``'s terminal record if it is sure to be the one of its last run
        (see the module), else None."""
        if not self.leader_here():
            return None
        try:
            ends = [r for r in self._records(workflow_id) if r.get("k") in END_KINDS]
            if len(ends) != 1 or not ends[0]["t"] >= self.clock() - self.retention_s + MARGIN_S:
                return None
            found: Ending = from_wire(ends[0])  # type: ignore[assignment]  # an end kind reads as an Ending
        except (OSError, ValueError, KeyError, TypeError, JournalCorrupt):
            return None  # compacted away meanwhile, damaged, a directory not stored yet: ask the leader
        self.answered += 1
        return found

    def _records(self, workflow_id: str) -> list[codec.Record]:
        """Every record of ``workflow_id`` in the sealed segments, read by their directories."""
        refs = [r for r in self.backend.segments() if r.sealed]
        for gone in self._directories.keys() - {r.first_seq for r in refs}:
            del self._directories[gone]
        h = id_hash(workflow_id)
        found: list[codec.Record] = []
        for ref in refs:
            directory = self._directories.get(ref.first_seq)
            if directory is None:
                path = os.path.join(self.root, "blobs", directory_name(ref.first_seq))
                directory = self._directories[ref.first_seq] = DirectoryFile(path)
            for offset, length in directory.frames(h):
                frame = self.backend.read_range(ref, offset, length)
                where = f"{self.backend.describe(ref)}@{offset}"
                found += [r for _, _, r in codec.records_at(frame, where) if r.get("w") == workflow_id]
        return found
