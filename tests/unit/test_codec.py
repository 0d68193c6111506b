"""The record codec: framing, torn tails, corruption, and what any byte string decodes to."""

from __future__ import annotations

import itertools
import pickle
import struct
from typing import Any

import crc32c
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.journal import codec
from workflows.errors import JournalCorrupt

PATH = "mem://test/wal/00000000000000000000.log"


def records(n: int) -> list[codec.Record]:
    kinds = ["submitted", "started", "outcome", "delayed", "completed", "mode", "epoch"]
    out: list[codec.Record] = []
    for q in range(n):
        r: codec.Record = {"v": codec.VERSION, "q": q, "k": kinds[q % len(kinds)], "w": f"wf-{q % 3}"}
        r["value"] = {"i": q, "text": "é" * (q % 5), "blob": bytes(range(q % 7)), "items": [q, None, 1.5, True]}
        out.append(r)
    return out


def encode_all(recs: list[codec.Record]) -> tuple[bytes, list[int]]:
    """The framed log and the offset of every frame boundary (0 and the end included)."""
    buf, bounds = b"", [0]
    for r in recs:
        buf += codec.encode(r)
        bounds.append(len(buf))
    return buf, bounds


def flip(buf: bytes, i: int, mask: int = 0xFF) -> bytes:
    return buf[:i] + bytes([buf[i] ^ mask]) + buf[i + 1 :]


# --- framing ---------------------------------------------------------------------------


def header(buf: bytes, offset: int = 0) -> tuple[int, int, int]:
    """(length, header checksum, payload checksum) of the frame at ``offset``."""
    word, crc, header_crc = codec.HEADER.unpack_from(buf, offset)
    assert word & codec.FRAMED
    return word & ~codec.FRAMED, header_crc, crc


def with_header(length: int) -> bytes:
    """A frame header for ``length`` whose own checksum holds (as a writer would make it)."""
    head = struct.pack("<II", codec.FRAMED | length, 0)
    return head + struct.pack("<I", crc32c.crc32c(head))


def test_round_trip() -> None:
    recs = records(12)
    buf, bounds = encode_all(recs)
    assert codec.scan(buf, PATH) == (recs, len(buf))
    assert codec.scan(b"") == ([], 0)
    length, header_crc, crc = header(buf)
    assert length == bounds[1] - codec.HEADER.size and msgpack.unpackb(buf[codec.HEADER.size:bounds[1]]) == recs[0]
    assert header_crc == crc32c.crc32c(buf[:8]) and crc == crc32c.crc32c(buf[codec.HEADER.size:bounds[1]])
    assert codec.frame_bounds(buf) == list(itertools.pairwise(bounds))


def test_every_truncation_is_the_prefix_of_whole_records() -> None:
    recs = records(6)
    buf, bounds = encode_all(recs)
    for cut in range(len(buf) + 1):
        whole = sum(1 for b in bounds[1:] if b <= cut)
        got, end = codec.scan(buf[:cut], PATH)
        assert got == recs[:whole], cut
        assert end == bounds[whole], cut  # the valid end is a frame boundary, where the torn frame starts


def test_a_flipped_byte_in_any_frame_is_corruption_naming_path_and_offset() -> None:
    recs = records(4)
    buf, bounds = encode_all(recs)
    for frame_no in (0, 1, 3):  # the first, one inside, and the final frame
        start, stop = bounds[frame_no], bounds[frame_no + 1]
        for i in range(start, stop):  # every header and payload byte
            for mask in (0x01, 0x80, 0xFF):
                with pytest.raises(JournalCorrupt) as info:
                    codec.scan(flip(buf, i, mask), PATH)
                assert info.value.path == PATH and info.value.offset == start, (i, mask)
                assert PATH in str(info.value) and f"offset {start}" in str(info.value)


def test_a_damaged_length_is_corruption_whether_it_ends_inside_the_log_or_past_it() -> None:
    buf, bounds = encode_all(records(4))
    start = bounds[1]
    length, _header_crc, _crc = header(buf, start)
    for new_length in (0, 1, length - 1, length + 1, length + 9, 1 << 24, codec.MAX_RECORD_BYTES + 1):
        word = struct.pack("<I", codec.FRAMED | new_length)
        damaged = buf[:start] + word + buf[start + 4:]
        with pytest.raises(JournalCorrupt, match="header checksum") as info:
            codec.scan(damaged, PATH)
        assert info.value.offset == start


def test_flipped_length_pointing_past_the_end_is_corruption() -> None:
    buf, bounds = encode_all(records(4))
    damaged = flip(buf, bounds[1] + 2)  # the second frame's length grows by ~16 MB, past the end
    with pytest.raises(JournalCorrupt, match="header checksum") as info:
        codec.scan(damaged, PATH)
    assert info.value.offset == bounds[1]
    final = flip(buf, bounds[-2] + 2)  # the same in the final frame: a whole header was written, then damaged
    with pytest.raises(JournalCorrupt, match="header checksum"):
        codec.scan(final, PATH)


def test_impossible_length_is_corruption_even_at_the_end() -> None:
    buf, bounds = encode_all(records(3))
    big = codec.MAX_RECORD_BYTES + 1
    for damaged in (buf[: bounds[1]] + with_header(big) + bytes(16), buf + with_header(big)):
        with pytest.raises(JournalCorrupt, match="impossible") as info:
            codec.scan(damaged, PATH)
        assert info.value.offset == bounds[1] if damaged.startswith(buf[: bounds[1]] + with_header(big)) else True


def test_a_frame_of_the_old_format_after_a_current_one_is_corruption() -> None:
    recs = records(3)
    buf, _ = encode_all(recs)
    old = codec.legacy_frame(codec.pack(records(4)[3]))
    with pytest.raises(JournalCorrupt, match="format flag"):
        codec.scan(buf + old, PATH)


# --- the old format ------------------------------------------------------------------------


def legacy_log(recs: list[codec.Record]) -> tuple[bytes, list[int]]:
    buf, bounds = b"", [0]
    for r in recs:
        buf += codec.legacy_frame(codec.pack(r))
        bounds.append(len(buf))
    return buf, bounds


def test_a_log_of_the_old_format_reads_and_takes_current_frames_after_it() -> None:
    recs = records(8)
    old, bounds = legacy_log(recs[:5])
    assert codec.scan(old, PATH) == (recs[:5], len(old))
    new, _ = encode_all(recs[5:])
    assert codec.scan(old + new, PATH) == (recs, len(old) + len(new))
    assert [b for b, _ in codec.frame_bounds(old + new)] == [*bounds[:-1], *(len(old) + b for b, _ in
                                                                              codec.frame_bounds(new))]
    for cut in range(bounds[-2] + 1, len(old)):  # its torn tail is cut, as it always was
        assert codec.scan(old[:cut], PATH) == (recs[:4], bounds[-2])
    with pytest.raises(JournalCorrupt, match="checksum mismatch"):
        codec.scan(flip(old, bounds[1] + 9) + new, PATH)


# --- what the writer refuses ----------------------------------------------------------------


def test_the_writer_refuses_what_the_reader_would_refuse() -> None:
    big = {"v": 1, "q": 0, "k": "outcome", "w": "a", "value": bytes(codec.MAX_RECORD_BYTES)}
    with pytest.raises(codec.RecordTooLarge, match=f"over the limit of {codec.MAX_RECORD_BYTES} bytes") as info:
        codec.encode(big)
    assert isinstance(info.value, ValueError) and info.value.size > codec.MAX_RECORD_BYTES
    assert pickle.loads(pickle.dumps(info.value)).size == info.value.size
    with pytest.raises(codec.RecordTooLarge):
        codec.frame(bytes(codec.MAX_RECORD_BYTES + 1))
    at_limit = codec.frame(bytes(codec.MAX_RECORD_BYTES))
    assert codec.frame_bounds(at_limit) == [(0, len(at_limit))]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),  # never used by msgpack
        (msgpack.packb([1, 2]), "version and kind"),
        (msgpack.packb({"v": 2, "k": "epoch", "q": 0}), "version and kind"),
        (msgpack.packb({"v": 1, "k": "nope", "q": 0}), "version and kind"),
        (msgpack.packb({"v": 1, "k": ["epoch"], "q": 0}), "version and kind"),  # unhashable kind
        (msgpack.packb({"v": 1, "k": {"a": 1}, "q": 0}), "version and kind"),
        (msgpack.packb({(1, 2): 1}), "undecodable"),  # an array map key: unhashable
        (msgpack.packb({"v": 1, "k": "epoch", "q": "0"}), "sequence"),
        (msgpack.packb({"v": 1, "k": "epoch"}), "sequence"),
    ],
    ids=["empty", "reserved-byte", "not-a-map", "version-2", "unknown-kind", "list-kind", "map-kind", "list-key",
         "str-seq", "no-seq"],
)
def test_checksummed_but_malformed_payload_is_corruption(payload: bytes, reason: str) -> None:
    good = codec.encode({"v": 1, "q": 0, "k": "epoch"})
    bufs = [codec.frame(payload) + good]
    if payload:  # an empty frame at the very end is all zeros: a zero-filled torn tail
        bufs += [codec.frame(payload), good + codec.frame(payload)]
    for buf in bufs:
        with pytest.raises(JournalCorrupt, match=reason):
            codec.scan(buf, PATH)


# --- any byte string ---------------------------------------------------------------------

PROFILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=8), st.binary(max_size=8))
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
kinds = st.sampled_from(sorted(codec.KINDS))


@st.composite
def logs(draw: st.DrawFn) -> list[codec.Record]:
    n = draw(st.integers(0, 6))
    return [{"v": codec.VERSION, "q": q, "k": draw(kinds), "w": draw(st.text(max_size=6)), "value": draw(values)}
            for q in range(n)]


def check_reader_contract(buf: bytes) -> tuple[list[codec.Record], int] | None:
    """`scan` gives well-formed records and a valid end, or `JournalCorrupt`; nothing else."""
    try:
        got, end = codec.scan(buf, PATH)
    except JournalCorrupt as exc:
        assert exc.path == PATH and 0 <= exc.offset < len(buf)
        return None
    assert 0 <= end <= len(buf)
    for r in got:
        assert r["v"] == codec.VERSION and r["k"] in codec.KINDS and isinstance(r["q"], int)
    assert codec.scan(buf[:end], PATH) == (got, end)  # cutting at the valid end leaves a clean log
    return got, end


@PROFILE
@given(st.binary(max_size=200))
def test_random_bytes_decode_to_records_or_corruption(buf: bytes) -> None:
    check_reader_contract(buf)


keys = st.sampled_from(["v", "k", "q", "w"]) | st.text(max_size=3)
fuzzy = st.one_of(
    st.binary(max_size=40),
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(keys, st.one_of(values, st.sampled_from([1, 2, "epoch", "outcome"]), kinds,
                                    st.lists(kinds, max_size=2)), max_size=5).map(msgpack.packb),
    st.fixed_dictionaries(
        {"v": st.sampled_from([1, 1.0, True, 2, "1"]), "k": kinds | values, "q": values | st.integers(-5, 5)},
        optional={"w": values},
    ).map(msgpack.packb),
    st.dictionaries(st.tuples(st.integers(0, 3)), st.integers(0, 9), min_size=1, max_size=2).map(msgpack.packb),
)


@PROFILE
@given(st.lists(fuzzy, max_size=4))
def test_checksummed_frames_of_any_payload_decode_to_records_or_corruption(payloads: list[bytes]) -> None:
    check_reader_contract(b"".join(codec.frame(p) for p in payloads))


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 12)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=40)),
)


def mutate(buf: bytes, m: tuple[Any, ...]) -> bytes:
    op = m[0]
    if op == "append":
        return buf + m[1]
    if not buf:
        return buf
    i = m[1] % (len(buf) + 1)
    if op == "truncate":
        return buf[:i]
    if op == "flip":
        return flip(buf, i % len(buf), m[2])
    if op == "insert":
        return buf[:i] + m[2] + buf[i:]
    return buf[:i] + buf[i + m[2] :]


def is_cut_tail(tail: bytes, frames: list[bytes]) -> bool:
    """Whether ``tail`` can be what a crash left of a write: nothing, zeros, less than a
    header, or the start of a written frame's header with fewer bytes than that frame."""
    n = codec.HEADER.size
    return not any(tail) or len(tail) < n or any(tail[:n] == f[:n] and len(tail) < len(f) for f in frames)


def check_damage_contract(written: list[codec.Record], original: bytes, buf: bytes) -> None:
    """Damage reads as the records written, or `JournalCorrupt`; a prefix of them only
    when what follows it is a cut tail and nothing before it changed. (Whole frames
    deleted read as the others, in order: a gap in sequence numbers that the codec
    cannot see and `Journal.open` refuses; see test_journal.)"""
    result = check_reader_contract(buf)
    if result is None:
        return
    got, end = result
    frames = [codec.encode(r) for r in written]
    originals = iter(written)
    assert all(any(r == o for o in originals) for r in got)  # never a made-up or altered record
    if got != written and got == written[: len(got)]:
        assert buf[:end] == original[:end] and is_cut_tail(buf[end:], frames), (got, buf[end:])


@PROFILE
@given(logs(), st.lists(mutation, min_size=1, max_size=3))
def test_mutated_log_reads_as_the_records_written_or_corruption(recs: list[codec.Record],
                                                                mutations: list[Any]) -> None:
    original, _ = encode_all(recs)
    buf = original
    for m in mutations:
        buf = mutate(buf, m)
    check_damage_contract(recs, original, buf)
    if not any(m[0] == "delete" for m in mutations):
        result = check_reader_contract(buf)
        assert result is None or result[0] == recs[: len(result[0])]


def test_a_zero_filled_tail_is_torn_not_corrupt() -> None:
    recs = records(3)
    buf, _bounds = encode_all(recs)
    assert codec.scan(buf + bytes(4096), PATH) == (recs, len(buf))

