"""Offline journal tools: verify a storage URI, dump its records for humans.

They read without taking the storage lock and change nothing: a torn tail is
reported, not cut (the coordinator cuts it when it next starts).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cluster.journal import codec
from cluster.journal.backends import open_backend
from workflows.errors import JournalCorrupt


def _segments(uri: str) -> Iterator[tuple[str, list[codec.Record], int, int]]:
    backend = open_backend(uri)
    refs = backend.segments()
    for i, ref in enumerate(refs):
        where = backend.describe(ref)
        buf = backend.read(ref)
        records, end = codec.scan(buf, where)
        if end < len(buf) and (ref.sealed or i != len(refs) - 1):
            raise JournalCorrupt(where, end, "damaged record at the end of a segment that is not the log's tail")
        yield where, records, end, len(buf) - end


def verify(uri: str) -> dict[str, Any]:
    """Check every record's CRC and sequence; `JournalCorrupt` names the first bad one."""
    segments = records = torn = 0
    expected: int | None = None
    for where, recs, _end, torn_bytes in _segments(uri):
        segments += 1
        records += len(recs)
        torn += torn_bytes
        for r in recs:
            if expected is not None and r["q"] < expected:
                raise JournalCorrupt(where, -1, f"record {r['q']} after {expected - 1}")
            expected = r["q"] + 1
    return {"storage": uri, "segments": segments, "records": records, "torn_tail_bytes": torn,
            "next_seq": expected or 0, "ok": True}


def dump(uri: str) -> Iterator[codec.Record]:
    for _where, recs, _end, _torn in _segments(uri):
        yield from recs
