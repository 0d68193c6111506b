"""Record codec: journal records to framed bytes and back.

A record is a msgpack map with a format version ``v``, a sequence number ``q``, a
kind ``k`` and the workflow id ``w`` (where it has one), plus its kind's fields.
On disk each record is framed as (all integers u32 little-endian)::

    FRAMED | length   crc32c(payload)   crc32c(the 8 bytes before)   payload

``FRAMED`` is bit 31 of the first word; the length (at most `MAX_RECORD_BYTES`) is in
the low bits. The header checksum covers the length and the payload checksum; it is
what tells damage from a torn write: a length that passes its checksum is the length
written, so a frame that runs past the end of the data was cut short by a crash,
while a header that fails its checksum was damaged after it was written.

Frames written before the header checksum existed (format 1: ``length | crc32c(payload)
| payload``, bit 31 clear) are still read, under the rules of their time, in data that
starts with a whole format-1 frame (`is_legacy`) and only before the first frame of the
current format: the writer appends current frames after old ones, never the other way
round, and starts a new segment rather than continue an old-format one.

This module knows nothing of files; `backends` does the storage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import crc32c
import msgpack

from actors.records import KINDS as KINDS
from actors.records import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from actors.records import VERSION as VERSION
from workflows.errors import JournalCorrupt

FRAMED = 1 << 31
HEADER = struct.Struct("<III")
LEGACY_HEADER = struct.Struct("<II")

Record = dict[str, Any]


class RecordTooLarge(ValueError):
    """A record's payload is over `MAX_RECORD_BYTES`: the reader would refuse it, so it is never written."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"journal record of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.size, self.limit)


def pack(record: Record) -> bytes:
    """Encode one record as a msgpack payload.

    Raises TypeError on unencodable values and `RecordTooLarge` over the size limit.
    """
    payload: bytes = msgpack.packb(record, use_bin_type=True)
    if len(payload) > MAX_RECORD_BYTES:
        raise RecordTooLarge(len(payload), MAX_RECORD_BYTES)
    return payload


def frame(payload: bytes) -> bytes:
    """``payload`` in the current frame format (`RecordTooLarge` over the limit)."""
    if len(payload) > MAX_RECORD_BYTES:
        raise RecordTooLarge(len(payload), MAX_RECORD_BYTES)
    head = struct.pack("<II", FRAMED | len(payload), crc32c.crc32c(payload))
    return head + struct.pack("<I", crc32c.crc32c(head)) + payload


def encode(record: Record) -> bytes:
    """One record, framed; TypeError if unencodable, `RecordTooLarge` if over the limit."""
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

    A torn write, the only damage that is cut rather than refused, is one of:

    - fewer bytes left than a frame header;
    - a frame whose header passes its checksum but which runs past the end of ``buf``;
    - nothing but zero bytes from a frame's start to the end (blocks allocated by a
      write that never landed).

    It is left out and the valid end is where it starts, for the caller to truncate.
    Anything else (a header or payload failing its checksum, an impossible length, a
    malformed record) is corruption: `JournalCorrupt` naming the path and offset,
    never a silent skip, wherever in ``buf`` it is.
    """
    records: list[Record] = []
    valid_end = 0
    for offset, stop, payload in _frames(buf, path):
        if payload is None:
            return records, offset
        records.append(unpack(payload, path, offset))
        valid_end = stop
    return records, valid_end


def frame_bounds(buf: bytes, path: str = "<buffer>") -> list[tuple[int, int]]:
    """(start, end) of each whole frame in ``buf``, checked as `scan` checks them."""
    return [(start, stop) for start, stop, payload in _frames(buf, path) if payload is not None]


def _frames(buf: bytes, path: str) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, end, payload) per frame; payload None for a torn final frame."""
    view = memoryview(buf)
    offset, end = 0, len(buf)
    legacy = is_legacy(buf)  # format-1 frames may only come before the first current one
    while offset < end:
        if end - offset < 4 or not any(view[offset:]):
            yield offset, end, None
            return
        (word,) = struct.unpack_from("<I", buf, offset)
        if word & FRAMED:
            legacy = False
            stop, payload = _current(buf, path, offset, word)
        elif legacy:
            stop, payload = _legacy(buf, path, offset)
        else:
            raise JournalCorrupt(path, offset, "frame header checksum mismatch (format flag lost)")
        yield offset, stop, payload
        if payload is None:
            return
        offset = stop


def is_legacy(buf: bytes) -> bool:
    """Whether ``buf`` starts with a whole format-1 frame (checksum included).

    Only such data may hold format-1 frames at all: a current frame whose flag was
    damaged at the start of a segment is then corruption, not a format-1 torn tail.
    """
    if len(buf) < LEGACY_HEADER.size:
        return False
    length, crc = LEGACY_HEADER.unpack_from(buf, 0)
    stop = LEGACY_HEADER.size + length
    return not length & FRAMED and stop <= len(buf) and crc32c.crc32c(bytes(buf[LEGACY_HEADER.size:stop])) == crc


def _current(buf: bytes, path: str, offset: int, word: int) -> tuple[int, bytes | None]:
    end = len(buf)
    if end - offset < HEADER.size:
        return end, None
    _word, crc, header_crc = HEADER.unpack_from(buf, offset)
    if crc32c.crc32c(bytes(buf[offset:offset + 8])) != header_crc:
        raise JournalCorrupt(path, offset, "frame header checksum mismatch")
    length = word & ~FRAMED
    if length > MAX_RECORD_BYTES:
        raise JournalCorrupt(path, offset, f"frame length {length} is impossible")
    start, stop = offset + HEADER.size, offset + HEADER.size + length
    if stop > end:
        return end, None  # a checked length past the end: the write was cut short
    payload = bytes(buf[start:stop])
    if crc32c.crc32c(payload) != crc:
        raise JournalCorrupt(path, offset, "checksum mismatch")
    return stop, payload


def _legacy(buf: bytes, path: str, offset: int) -> tuple[int, bytes | None]:
    """A format-1 frame: without a header checksum, a damaged final frame reads as torn."""
    end = len(buf)
    if end - offset < LEGACY_HEADER.size:
        return end, None
    length, crc = LEGACY_HEADER.unpack_from(buf, offset)
    start, stop = offset + LEGACY_HEADER.size, offset + LEGACY_HEADER.size + length
    if length > MAX_RECORD_BYTES:
        if stop < end:
            raise JournalCorrupt(path, offset, f"frame length {length} is impossible")
        return end, None
    if stop > end:
        return end, None
    payload = bytes(buf[start:stop])
    if crc32c.crc32c(payload) != crc:
        if stop < end:
            raise JournalCorrupt(path, offset, "checksum mismatch")
        return end, None
    return stop, payload


def legacy_frame(payload: bytes) -> bytes:
    """``payload`` in format 1 (for tests of reading old journals; the journal never writes it)."""
    return LEGACY_HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def records_at(buf: bytes, path: str = "<buffer>") -> Iterator[tuple[int, int, Record]]:
    """Each whole frame's (start, end, record) in ``buf``, checked as `scan` checks them."""
    for start, stop, payload in _frames(buf, path):
        if payload is not None:
            yield start, stop, unpack(payload, path, start)

