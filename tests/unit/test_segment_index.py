"""Segment indexes: written beside each sealed segment, rebuilt when missing or damaged,
and read back with ranged reads that equal a full scan of the log."""

from __future__ import annotations

from array import array

from actors.journal import Journal
from actors.journal.ends import id_hash
from actors.journal.segindex import SegmentIndex, spans
from tests.unit.test_journal import Opener, journals, outcome, reopen, settled, submitted, terminal

__all__ = ["journals"]  # a fixture


async def fill(j: Journal, n: int = 12) -> None:
    for i in range(n):
        await j.append([submitted(f"w{i}")])
        await j.append([outcome(f"w{i}", 0, i)])
        await j.append([terminal(f"w{i}", result=i * 10)])
    await settled(j)


def by_scan(j: Journal, wid: str) -> list[dict]:
    return [r for r in j.read(limit=1_000_000) if r.get("w") == wid]


async def test_each_sealed_segment_has_an_index_and_ranged_reads_equal_a_scan(uri: str, journals: Opener) -> None:
    j = journals(uri, segment_bytes=300)
    await fill(j)
    refs = j.backend.segments()
    sealed = [r.first_seq for r in refs if r.sealed]
    assert len(sealed) >= 3 and j.backend.indexes() == sealed
    for i in range(12):
        found = j.log.indexes.records_of(refs, [f"w{i}"])
        assert found[f"w{i}"] == by_scan(j, f"w{i}")
    ix = j.log.indexes
    outcomes = [r for ref in refs for r in ix.fetch(ref, spans(ix.load(ref).services.get("svc", [])))]
    assert [r["value"] for r in outcomes] == list(range(12))
    assert j.log.indexes.rebuilt == 0


async def test_a_missing_or_damaged_index_is_rebuilt_and_rewritten(uri: str, journals: Opener) -> None:
    j = journals(uri, segment_bytes=300)
    await fill(j)
    refs = j.backend.segments()
    first, second = [r for r in refs if r.sealed][:2]
    good = j.backend.get_index(first.first_seq)
    j.backend.delete_index(first.first_seq)
    j.backend.put_index(second.first_seq, good[:-3] + b"xyz")
    for ref in (first, second):  # without their directories, a lookup reads their indexes
        j.backend.delete_blob(f"segment-{ref.first_seq:020d}.ids")
    j = reopen(j, journals, segment_bytes=300)
    for i in range(12):
        assert j.log.indexes.records_of(j.backend.segments(), [f"w{i}"])[f"w{i}"] == by_scan(j, f"w{i}")
    assert j.log.indexes.rebuilt == 2
    assert SegmentIndex.decode(j.backend.get_index(first.first_seq)) is not None
    assert SegmentIndex.decode(j.backend.get_index(second.first_seq)) is not None


async def test_the_active_segment_is_indexed_in_memory_also_after_a_restart(uri: str, journals: Opener) -> None:
    j = journals(uri)  # one segment, never sealed here
    await fill(j, 3)
    assert j.backend.indexes() == []
    ref = j.backend.segments()[-1]
    assert j.log.indexes.records_of([ref], ["w1"])["w1"] == by_scan(j, "w1")
    j = reopen(j, journals)
    await j.append([submitted("w9")])  # a write after the restart extends the rebuilt index
    ref = j.backend.segments()[-1]
    assert j.log.indexes.records_of([ref], ["w2"])["w2"] == by_scan(j, "w2")


async def test_an_index_goes_with_its_segment(uri: str, journals: Opener) -> None:
    j = journals(uri, segment_bytes=300)
    await fill(j)
    await j.snapshot()
    assert j.backend.indexes() == [r.first_seq for r in j.backend.segments() if r.sealed]


def test_an_index_round_trips_and_refuses_damage() -> None:
    idx = SegmentIndex(10, {"a": array("Q", [0, 10])}, {"svc": array("Q", [0, 10])})
    assert SegmentIndex.decode(idx.encode()) == idx
    assert SegmentIndex.decode(b"") is None
    assert SegmentIndex.decode(idx.encode()[:-1]) is None


async def test_the_index_a_writer_builds_from_its_records_equals_one_read_from_the_frames() -> None:
    """The journal indexes its frames from the records it encoded, without decoding them
    again: every kind a coordinator writes lands where a scan of the segment puts it."""
    import asyncio
    import contextlib

    from actors.inprocess import LocalCoordinator
    from tests.unit.local import opts, wait_state
    from workflows.errors import CommandFailed
    from workflows.testing import AwaitsSignal, Echo, Fails, Flaky

    c = LocalCoordinator(opts(result_cache_size=2))
    core = await c.start()
    try:
        done = [await core.submit(Echo(i, steps=2)) for i in range(3)]
        failed = await core.submit(Fails(steps=2))
        flaky = await core.submit(Flaky(failures=1))
        waits = await core.submit(AwaitsSignal())
        await wait_state(c, waits, "waiting")
        await core.signal(waits, "go", {"approved_by": "ops"})
        for wid in [*done, flaky, waits]:
            await core.result(wid, 10)
        with contextlib.suppress(CommandFailed):
            await core.result(failed, 10)
        await asyncio.sleep(0.05)
        j = c.journal
        kinds = {r["k"] for r in j.read()}
        assert {"submitted", "started", "outcome", "compensation", "delayed", "completed", "compensated",
                "signal"} <= kinds, kinds
        for seg in j.log.segments:
            if seg.ref.sealed:
                continue
            written = j.log.indexes.active[seg.ref.first_seq]
            scanned = SegmentIndex.build(j.backend.read(seg.ref))
            assert written.workflows == scanned.workflows and written.services == scanned.services
            assert written.size == scanned.size
    finally:
        await c.close()


async def test_a_read_that_races_a_seal_finds_the_records(uri: str, journals: Opener) -> None:
    """A reader holding a segment's ref from before it was sealed, or asking while its
    index is not yet stored, gets its records, without rebuilding the index."""
    from actors.journal.backends import SegmentRef

    j = journals(uri, segment_bytes=300)
    await fill(j)
    first = next(r for r in j.backend.segments() if r.sealed)
    ix = j.log.indexes
    stale = SegmentRef(first.first_seq, False)  # its file moved to the sealed copy meanwhile
    wid = next(w for w in ix.load(first).workflows)
    assert ix.records_of([stale], [wid])[wid] == [r for r in by_scan(j, wid) if r["q"] <= first_last(j, first)]
    ix.active[first.first_seq] = ix.load(first)  # sealed, its index still in memory only
    j.backend.delete_index(first.first_seq)
    ix._cache.clear()
    assert ix.load(first) is ix.active[first.first_seq] and ix.rebuilt == 0


def first_last(j: Journal, ref: object) -> int:
    return next(s.last_seq for s in j.log.segments if s.ref == ref)


def test_a_directory_keeps_offsets_past_4_gib_whole() -> None:
    from actors.journal.segindex import Directory

    for base in (0, 5 << 30):  # a segment of 4 GiB or more keeps 64-bit offsets
        idx = SegmentIndex()
        idx.add_key("a", None, base + 10, 7)
        idx.add_key("b", None, base + 17, 9)
        idx.add_key("a", None, base + 26, 5)
        back = Directory.decode(Directory.of(idx).encode())
        assert back.offsets.itemsize == (4 if base == 0 else 8)
        assert back.frames(id_hash("a")) == [(base + 10, 7), (base + 26, 5)]
        assert back.frames(id_hash("b")) == [(base + 17, 9)]
        assert back.frames(id_hash("c")) == []
