"""SPEC §4.11: memory follows what is live. Finished workflows leave the supervisor's
memory past a bounded cache, and are answered from the journal the same as from memory:
before and after eviction, after a restart, after a snapshot."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import Journal, MemoryBackend, ends
from actors.records import from_wire
from actors.supervision.supervisor import SupervisorCore
from actors.workflow_state import State, Workflow, WorkflowTable
from tests.unit.local import opts
from workflows.errors import CommandFailed, JournalCorrupt, UnknownWorkflow
from workflows.testing import Echo, Fails


def teardown_module() -> None:
    for name in list(MemoryBackend._stores):
        MemoryBackend.drop(name)


def test_the_table_holds_only_the_last_finished() -> None:
    table = WorkflowTable(cache_size=2)
    for i in range(5):
        wf = Workflow(f"w{i}", "T", {}, 0.0, state=State.COMPLETED if i < 4 else State.RUNNING)
        table.put(wf)
    assert sorted(table.workflows) == ["w2", "w3", "w4"]  # the unfinished one is always held


async def answers(core: SupervisorCore, ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for wid in ids:
        try:
            out.append(("value", await core.result(wid, 5)))
        except CommandFailed as exc:
            out.append(("failed", exc.error_type, exc.message))
        status = await core.status(wid)
        # The supervisor stamps finished_at as it learns of the end, the journal holds the
        # terminal record's time: a thousandth apart, the same workflow.
        assert status.pop("finished_at") is not None
        out.append(status)
    out.append(await core.wait(ids, 5))
    out.append(sorted((d["id"], d["state"]) for d in await core.list(limit=1000)))
    return out


@pytest.mark.parametrize("cache", [0, 1, 3])
async def test_answers_from_the_journal_equal_those_from_memory(cache: int) -> None:
    options = opts(result_cache_size=cache)
    big = LocalCoordinator(options.replace(result_cache_size=1000))
    core = await big.start()
    ids = [await core.submit(Echo(f"v{i}"), f"e{i}") for i in range(4)]
    ids.append(await core.submit(Fails(), "bad"))
    for wid in ids:
        with contextlib.suppress(CommandFailed):
            await core.result(wid, 5)
    remembered = await answers(core, ids)
    await big.close()

    small = LocalCoordinator(options)  # a restart, with a small cache
    core = await small.start()
    assert sum(wf.state.finished for wf in core.table.workflows.values()) <= cache
    assert await answers(core, ids) == remembered
    await small.journal.snapshot()
    assert await answers(core, ids) == remembered
    with pytest.raises(UnknownWorkflow):
        await core.result("nobody", 1)
    await small.close()


# --- the journal's own fold -------------------------------------------------------------------


async def journal_answers(j: Journal, ids: list[str]) -> list[Any]:
    return [j.lookup(ids), j.steps_of(ids), j.outcomes("svc"), j.outcomes("svc", 5, 3),
            j.finished_page(None, 100, []), j.finished_page("failed", 2, ["w0"])]


async def fill(j: Journal, n: int) -> list[str]:
    ids = [f"w{i}" for i in range(n)]
    for i, w in enumerate(ids):
        await j.append([from_wire({"k": "submitted", "w": w, "type": "tests:T", "fields": {"x": i}, "t": 1.0})])
        await j.append([from_wire({"k": "outcome", "w": w, "step": 0, "service": "svc", "value": i})])
        end = {"k": "completed", "result": i * 10} if i % 3 else {"k": "failed", "error": {"type": "E", "message": "m"}}
        await j.append([from_wire({"w": w, "t": 2.0 + i, **end})])
    return ids


async def sealed_segments(name: str, n: int) -> tuple[MemoryBackend, list[str], dict[str, Any], list[int]]:
    """A store holding ``n`` finished workflows in small segments: the store, the ids,
    what a lookup of them answered, and the first seq of each sealed segment."""
    store = MemoryBackend(name)
    j = Journal(store, owner="h", segment_bytes=600, cache_size=1)
    j.open()
    ids = await fill(j, n)
    remembered = j.lookup(ids)
    j.close()
    return store, ids, remembered, [r.first_seq for r in store.segments() if r.sealed]


@pytest.fixture(params=[None, 2], ids=["ends-in-memory", "ends-spilled"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int | None:
    """The journal's ends in memory, or spilled to storage two at a time."""
    if request.param:
        monkeypatch.setattr(ends, "CHUNK", request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("cache", [0, 2])
async def test_the_journal_holds_only_the_last_finished_and_reads_the_rest_from_storage(
        cache: int, chunk: int | None) -> None:
    whole = Journal(MemoryBackend(f"whole-{cache}-{chunk}"), owner="a", segment_bytes=400)
    whole.open()
    ids = await fill(whole, 9)
    remembered = await journal_answers(whole, [*ids, "nobody"])
    whole.close()

    j = Journal(MemoryBackend(f"evicting-{cache}-{chunk}"), owner="b", segment_bytes=400, cache_size=cache)
    j.open()
    await fill(j, 9)
    assert sum(wf.state.finished for wf in j.table.workflows.values()) <= cache
    assert await journal_answers(j, [*ids, "nobody"]) == remembered
    # Reserved while kept: a duplicate submitted is answered with the fold read from storage.
    (known,) = await j.append([from_wire({"k": "submitted", "w": "w1", "type": "tests:T", "fields": {}, "t": 9.0})])
    assert known.workflow == remembered[0]["w1"]
    for step in ("restart", "snapshot", "restart"):
        if step == "snapshot":
            await j.snapshot()
        else:
            j.close()
            j = Journal(MemoryBackend(f"evicting-{cache}-{chunk}"), owner="b", segment_bytes=400, cache_size=cache)
            j.open()
        assert await journal_answers(j, [*ids, "nobody"]) == remembered, step
        assert sum(wf.state.finished for wf in j.table.workflows.values()) <= cache
    j.close()


async def test_retention_forgets_workflows_evicted_from_the_journals_memory_and_their_segments(
        chunk: int | None) -> None:
    now = [30.0]
    j = Journal(MemoryBackend(f"retained-{chunk}"), owner="c", segment_bytes=400, cache_size=1, retention_s=50.0,
                clock=lambda: now[0])
    j.open()
    ids = await fill(j, 9)  # ended at t = 2..10
    assert j.lookup(ids).keys() == set(ids)
    await j.snapshot()  # within the retention: all kept
    assert j.lookup(ids).keys() == set(ids)
    now[0] = 1000.0
    await j.snapshot()
    assert j.lookup(ids) == {} and not j.index.finished and not any(j.finished_counts().values())
    assert [r.sealed for r in j.backend.segments()] == [False]  # every sealed segment held only forgotten ones
    assert j.backend.indexes() == []
    (answer,) = await j.append([from_wire({"k": "submitted", "w": "w1", "type": "tests:T", "fields": {}, "t": 1.0})])
    assert answer is None  # the id is free again
    j.close()


async def test_ends_spill_to_storage_and_memory_holds_two_chunks_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ends, "CHUNK", 50)
    store = MemoryBackend("spilling")

    def opened() -> Journal:
        j = Journal(store, owner="s", segment_bytes=4000, cache_size=5)
        j.open()
        return j

    def all_pages(j: Journal, state: str | None = None) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            page = j.page(state, None, cursor, 37)
            out += [d["id"] for d in page["items"]]
            cursor = page["next"]
            if cursor is None:
                return out

    j = opened()
    ids = await fill(j, 1000)
    kept = j.index.finished
    assert len(kept.hot) <= 2 * 50 and len(kept.chunks) >= 18 and len(kept) == 1000
    remembered = j.lookup(ids)
    assert remembered.keys() == set(ids) and all_pages(j) == ids[::-1]
    counts = {"completed": 666, "failed": 334}
    assert {k: n for k, n in j.finished_counts().items() if n} == counts
    assert all_pages(j, "failed") == [w for i, w in enumerate(ids) if i % 3 == 0][::-1]
    (known,) = await j.append([from_wire({"k": "submitted", "w": "w7", "type": "tests:T", "fields": {}, "t": 9.0})])
    assert known.workflow == remembered["w7"]  # reserved: its end is found in a chunk on storage
    for step in ("restart", "snapshot", "damaged hashes", "restart"):
        if step == "snapshot":
            await j.snapshot()
        else:
            j.close()
            if step == "damaged hashes":  # rebuilt from their chunk
                store.put_blob(kept.chunks[0].name + ".h", b"junk")
            j = opened()
        assert len(j.index.finished) == 1000 and j.lookup(ids) == remembered, step
        assert {k: n for k, n in j.finished_counts().items() if n} == counts, step
        assert all_pages(j) == ids[::-1], step
    first = j.index.finished.chunks[0]
    j.index.finished._loaded.clear()
    store.put_blob(first.name, b"junk")
    assert j.lookup(["w0"]).keys() == {"w0"}  # a read goes to the segments, not the ends
    with pytest.raises(JournalCorrupt, match=first.name):
        all_pages(j)
    j.close()


async def test_retention_cutting_through_a_chunk_of_ends_frees_just_the_older_ids(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ends, "CHUNK", 10)
    now = [0.0]
    store = MemoryBackend("cut-chunk")

    def opened() -> Journal:
        j = Journal(store, owner="k", segment_bytes=4000, cache_size=2, retention_s=50.0, clock=lambda: now[0])
        j.open()
        return j

    j = opened()
    await fill(j, 100)  # w{i} ended at 2 + i
    assert len(j.index.finished.chunks) >= 4
    now[0] = 2 + 55.5 + 50  # forgets w0..w55: the watermark falls inside the chunk of w50..w59
    spilled = [c.name for c in j.index.finished.chunks]
    await j.snapshot()
    dropped = set(spilled) - {c.name for c in j.index.finished.chunks}
    assert len(dropped) >= 4
    for name in dropped:
        with pytest.raises(FileNotFoundError):
            store.get_blob(name)
    for step in ("snapshot", "restart"):
        kept = j.index.finished
        assert len(kept) == 44 and sum(j.finished_counts().values()) == 44, step
        assert j.lookup(["w55", "w56"]).keys() == {"w56"}, step
        assert not any(c.max_t < kept.forgotten_before for c in kept.chunks), step  # wholly older ones deleted
        j.close()
        j = opened()
    (free, known) = await j.append([
        from_wire({"k": "submitted", "w": "w55", "type": "tests:T", "fields": {}, "t": 200.0}),
        from_wire({"k": "submitted", "w": "w56", "type": "tests:T", "fields": {}, "t": 200.0})])
    assert free is None and known.workflow["id"] == "w56"
    j.close()


async def test_after_a_restart_an_old_workflow_is_found_by_the_stored_directory_of_each_segment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.journal.segindex import Indexes

    store, ids, remembered, sealed = await sealed_segments("hashed-segments", 60)
    assert len(sealed) >= 10
    loads: list[int] = []
    load = Indexes.load

    def counted(ix: Indexes, ref: Any) -> Any:
        loads.append(ref.first_seq)
        return load(ix, ref)

    monkeypatch.setattr(Indexes, "load", counted)
    j = Journal(store, owner="h", segment_bytes=600, cache_size=1)
    j.open()
    assert j.lookup(["w3"]) == {"w3": remembered["w3"]}
    assert [s for s in loads if s in sealed] == []  # no index read: w3's directory span, one ranged read
    store.put_blob(f"segment-{sealed[0]:020d}.ids", b"damaged")  # read from its index instead
    j.close()
    j = Journal(store, owner="h", segment_bytes=600, cache_size=1)
    j.open()
    assert j.lookup(ids) == remembered
    j.close()


async def test_an_old_workflow_is_read_by_its_own_frames_not_by_scanning_its_segment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixty workflows interleaved in big segments: reading one back decodes its three
    records, not the hundreds around them that its directory's entry spans."""
    from actors.journal import codec

    store = MemoryBackend("frames-of-one")
    j = Journal(store, owner="f", segment_bytes=6000, cache_size=1)
    j.open()
    ids = [f"w{i}" for i in range(60)]
    for step in range(3):  # every workflow's first record, then every second one, ...
        for i, w in enumerate(ids):
            rec = [{"k": "submitted", "w": w, "type": "tests:T", "fields": {"x": i}, "t": 1.0},
                   {"k": "outcome", "w": w, "step": 0, "service": "svc", "value": i},
                   {"w": w, "t": 2.0 + i, "k": "completed", "result": i}][step]
            await j.append([from_wire(rec)])
    j.close()
    assert [r.sealed for r in store.segments()].count(True) >= 1
    j = Journal(store, owner="f", segment_bytes=6000, cache_size=1)
    j.open()
    decoded: list[codec.Record] = []
    unpack = codec.unpack

    def counted(payload: bytes, path: str = "<buffer>", offset: int = 0) -> codec.Record:
        decoded.append(unpack(payload, path, offset))
        return decoded[-1]

    monkeypatch.setattr(codec, "unpack", counted)
    found = j.lookup(["w7"])
    assert found["w7"]["result"] == 7 and found["w7"]["state"] == "completed"
    assert len(decoded) == 3 and {r["w"] for r in decoded} == {"w7"}
    j.close()


async def test_a_directory_of_the_earlier_layout_is_read_through_the_index_and_written_again() -> None:
    import struct
    from array import array

    import crc32c

    from actors.journal.segindex import Directory

    store, ids, remembered, sealed = await sealed_segments("earlier-directory", 30)
    for first in sealed:  # the earlier layout: u32 count, then hashes, span starts, span stops
        name = f"segment-{first:020d}.ids"
        d = Directory.decode(store.get_blob(name))
        starts = array("Q", (d.offsets[d.firsts[i]] for i in range(len(d.hashes))))
        payload = struct.pack("<I", len(d.hashes)) + d.hashes.tobytes() + starts.tobytes() + starts.tobytes()
        store.put_blob(name, struct.pack("<I", crc32c.crc32c(payload)) + payload)
    j = Journal(store, owner="h", segment_bytes=600, cache_size=1)
    j.open()
    assert j.lookup(ids) == remembered
    j.close()
    for first in sealed:
        assert Directory.decode(store.get_blob(f"segment-{first:020d}.ids")).hashes  # the new layout
