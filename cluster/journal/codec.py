"""Record codec: journal records to framed bytes and back.

A record is a msgpack map with a format version ``v``, a sequence number ``q``, a
kind ``k`` and the workflow id ``w`` (where it has one), plus its kind's fields.
On disk each record is framed as::

    length (u32 LE) | crc32c of payload (u32 LE) | payload (msgpack)

This module knows nothing of files; `segments` does the storage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import crc32c
import msgpack

from workflows.errors import JournalCorrupt

VERSION = 1
HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 64 << 20
KINDS = frozenset(
    {
        "epoch",
        "submitted",
        "started",
        "outcome",
        "delayed",
        "blocked",
        "completed",
        "compensating",
        "compensation",
        "compensated",
        "failed",
        "mode",
        "forgotten",
        "snapshot",
    }
)

Record = dict[str, Any]


def pack(record: Record) -> bytes:
    """Encode one record as a msgpack payload (raises TypeError on unencodable values)."""
    payload: bytes = msgpack.packb(record, use_bin_type=True)
    return payload


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def encode(record: Record) -> bytes:
    """One record, framed."""
    return frame(pack(record))


def unpack(payload: bytes, path: str, offset: int) -> Record:
    """Decode a payload whose checksum matched; anything malformed is `JournalCorrupt`."""
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: an unhashable map key
        raise JournalCorrupt(path, offset, f"undecodable record ({exc})") from None
    if not isinstance(record, dict) or record.get("v") != VERSION or not isinstance(record.get("k"), str) \
            or record["k"] not in KINDS:  # a str check first: a list kind is unhashable
        raise JournalCorrupt(path, offset, "record has no known version and kind")
    if not isinstance(record.get("q"), int):
        raise JournalCorrupt(path, offset, "record has no sequence number")
    return record


def scan(buf: bytes, path: str = "<buffer>") -> tuple[list[Record], int]:
    """Read every framed record in ``buf``; return them and the end of the valid prefix.

    A damaged *last* frame (cut short, or failing its checksum with nothing after it)
    is a torn write: it is left out and the valid end is where it starts, for the
    caller to truncate. A damaged frame with data after it is corruption inside the
    log: `JournalCorrupt` naming the path and offset, never a silent skip.
    """
    records: list[Record] = []
    valid_end = 0
    for offset, payload in _frames(buf, path):
        if payload is None:
            return records, offset
        records.append(unpack(payload, path, offset))
        valid_end = offset + HEADER.size + len(payload)
    return records, valid_end


def _frames(buf: bytes, path: str) -> Iterator[tuple[int, bytes | None]]:
    """Yield (offset, payload) per frame, payload None for a torn final frame."""
    offset, end = 0, len(buf)
    while offset < end:
        if end - offset < HEADER.size:
            yield offset, None
            return
        length, crc = HEADER.unpack_from(buf, offset)
        if length == 0 and not any(memoryview(buf)[offset:]):
            yield offset, None  # a zero-filled tail: blocks allocated by a write that never landed
            return
        start, stop = offset + HEADER.size, offset + HEADER.size + length
        if length > MAX_RECORD_BYTES:
            if stop < end:
                raise JournalCorrupt(path, offset, f"frame length {length} is impossible")
            yield offset, None
            return
        if stop > end:
            yield offset, None
            return
        payload = bytes(buf[start:stop])
        if crc32c.crc32c(payload) != crc:
            if stop < end:
                raise JournalCorrupt(path, offset, "checksum mismatch")
            yield offset, None
            return
        yield offset, payload
        offset = stop

