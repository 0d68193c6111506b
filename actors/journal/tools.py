"""Offline journal tools: verify a storage URI, dump its records for humans.

They read without taking the storage lock and change nothing: a torn tail is
reported, not cut (the coordinator cuts it when it next starts). `verify` applies
exactly the checks start-up applies (`recovery.walk`): a journal it passes is one
the coordinator opens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from actors.journal import codec, recovery
from actors.journal.storage import open_backend


def verify(uri: str) -> dict[str, Any]:
    """Check the snapshot, every record's CRC and the sequence; `JournalCorrupt` names the first bad place."""
    backend = open_backend(uri)
    found = recovery.walk(backend, repair=False)
    report: dict[str, Any] = {"storage": uri, "segments": len(found.segments) + len(found.covered),
                              "records": found.records, "torn_tail_bytes": found.torn_bytes,
                              "next_seq": found.next_seq, "ok": True}
    if found.snapshot is not None:
        report["snapshot"] = {"name": found.snapshot.name, "seq": found.snapshot.seq,
                              "workflows": len(found.snapshot.workflows)}
    if found.covered:
        report["covered_segments"] = [backend.describe(ref) for ref in found.covered]
    return report


def dump(uri: str) -> Iterator[codec.Record]:
    """Every stored segment record in order, checked as start-up reads it."""
    yield from recovery.records(open_backend(uri))
