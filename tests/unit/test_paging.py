"""Paging workflows by cursor from the journal's order of ends: a page is right and costs
its length, not the number of workflows the journal keeps."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import Journal, MemoryBackend
from actors.journal.ends import EndLog
from actors.journal.segindex import Indexes
from actors.records import Completed, Failed, Record, Submitted
from tests.unit.local import opts, wait_state
from workflows.testing import Echo, Fails, Flaky

N = 50_000
FAILED_EVERY = 1000
TYPES = ("shop:BookTrip", "shop:Refund")


def ids_of(page: dict[str, Any]) -> list[str]:
    return [d["id"] for d in page["items"]]


def test_the_end_log_pages_newest_first_by_state_and_type() -> None:
    log = EndLog()
    current: dict[str, float] = {}
    for i in range(10):
        kind = "failed" if i % 3 == 0 else "completed"
        log.add(f"w{i}", float(i), kind, TYPES[i % 2])
        current[f"w{i}"] = float(i)

    def now(w: str, t: float) -> bool:
        return current.get(w) == t

    first = log.page(now, 4)
    assert first.ids == ["w9", "w8", "w7", "w6"] and first.scanned == 4
    second = log.page(now, 4, first.next)
    assert second.ids == ["w5", "w4", "w3", "w2"]
    last = log.page(now, 4, second.next)
    assert last.ids == ["w1", "w0"] and last.next is None
    assert log.page(now, 10, kind="failed").ids == ["w9", "w6", "w3", "w0"]
    refunds = log.page(now, 2, kind="failed", type_part="refund")
    assert refunds.ids == ["w9", "w3"] and log.page(now, 2, refunds.next, "failed", "refund").ids == []
    del current["w8"]  # forgotten: skipped, then dropped by a compaction that keeps cursors valid
    log.forgotten()
    log.add("w8", 20.0, "completed", TYPES[0])  # the freed id run again: ended last
    current["w8"] = 20.0
    assert log.page(now, 3).ids == ["w8", "w9", "w7"]
    cursor = log.page(now, 3).next
    log.stale = 10_000
    assert log.compact(now) and len(log) == 10
    assert log.page(now, 3, cursor).ids == ["w6", "w5", "w4"]


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[Journal, list[str]]]:
    """A journal that kept `N` finished workflows, built through the Journal API, that
    holds 100 of them in memory (the rest on storage, in many sealed segments)."""
    import asyncio

    name = f"paging-{uuid.uuid4().hex}"
    j = Journal(MemoryBackend(name), owner="p", fsync=False, segment_bytes=1 << 20, cache_size=100)
    j.open()
    ids = [f"wf-{i:06d}" for i in range(N)]

    async def fill() -> None:
        batch: list[Record] = []
        for i, w in enumerate(ids):
            batch.append(Submitted(w, TYPES[i % 2], {"i": i}, float(i)))
            end = Failed(w, {"type": "E", "message": "no"}, float(i) + 0.5) if i % FAILED_EVERY == 0 \
                else Completed(w, i, float(i) + 0.5)
            batch.append(end)
            if len(batch) >= 10_000:
                await j.append(batch)
                batch = []
        await j.append(batch)

    began = time.monotonic()
    asyncio.run(fill())
    assert time.monotonic() - began < 30
    try:
        yield j, ids
    finally:
        j.close()
        MemoryBackend.drop(name)


class Reads:
    """Counts what a page reads from storage: indexes loaded and records fetched."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads = self.records = 0
        load, fetch = Indexes.load, Indexes.fetch

        def counted_load(ix: Indexes, ref: Any) -> Any:
            self.loads += 1
            return load(ix, ref)

        def counted_fetch(ix: Indexes, ref: Any, offsets: Any) -> Any:
            found = fetch(ix, ref, offsets)
            self.records += len(found)
            return found

        monkeypatch.setattr(Indexes, "load", counted_load)
        monkeypatch.setattr(Indexes, "fetch", counted_fetch)


def test_a_page_of_many_finished_workflows_reads_only_that_page(
        big: tuple[Journal, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    j, ids = big
    assert len(j.index.finished) == N and len(j.table.workflows) <= 100 and len(j.log.segments) > 3
    reads = Reads(monkeypatch)
    first = j.page(None, None, None, 50)
    assert ids_of(first) == ids[::-1][:50] and first["scanned"] == 50
    assert first["items"][0]["state"] == "completed" and first["items"][0]["result"] == N - 1
    second = j.page(None, None, first["next"], 50)
    assert ids_of(second) == ids[::-1][50:100]  # past the 100 held in memory: read from storage
    assert reads.records <= 2 * 50 and reads.loads <= 4  # the page's records, from a segment or two

    reads.loads = reads.records = 0
    failed = j.page("failed", None, None, 20)
    assert ids_of(failed) == [ids[i] for i in range(N - 1, -1, -1) if i % FAILED_EVERY == 0][:20]
    assert failed["scanned"] == 20 and reads.records <= 2 * 20  # its kind's ends only
    rest = j.page("failed", None, failed["next"], 100)
    assert len(rest["items"]) == N // FAILED_EVERY - 20 and rest["next"] is None

    refunds = j.page(None, "refund", None, 10)
    assert ids_of(refunds) == [ids[i] for i in range(N - 1, 0, -2)][:10] and refunds["scanned"] <= 20


def test_a_cursor_deep_in_the_history_costs_the_same(big: tuple[Journal, list[str]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    j, ids = big
    cursor = j.index.finished.position_of(ids[1000])  # the page after the 48,999 newest
    reads = Reads(monkeypatch)
    page = j.page(None, None, cursor, 50)
    assert ids_of(page) == ids[999:949:-1] and page["scanned"] == 50 and reads.records <= 100


async def test_the_supervisor_pages_in_flight_first_then_finished_ones() -> None:
    c = LocalCoordinator(opts(result_cache_size=5, slow_retry_interval_s=60.0))
    await c.start()
    try:
        done = [await c.core.submit(Echo(i, steps=1), f"done-{i}") for i in range(12)]
        for w in done:
            await c.core.result(w, 5)
        failed = await c.core.submit(Fails(steps=1), "refused")
        await wait_state(c, failed, "compensated")
        parked = await c.core.submit(Flaky(failures=5), "parked")
        await wait_state(c, parked, "delayed")
        q = c.core
        first = await q.page(limit=4)
        assert ids_of(first) == ["parked", "refused", "done-11", "done-10"]
        assert first["items"][0]["state"] == "delayed" and first["items"][2]["outcomes"] == [[0, "echo",
                                                                                              {"i": 0, "value": 11}]]
        seen = ids_of(first)
        cursor = first["next"]
        while cursor is not None:
            page = await q.page(limit=4, cursor=cursor)
            seen += ids_of(page)
            cursor = page["next"]
        assert seen == ["parked", "refused", *[f"done-{i}" for i in range(11, -1, -1)]]
        assert ids_of(await q.page("delayed")) == ["parked"]
        assert ids_of(await q.page("compensated")) == ["refused"]
        assert ids_of(await q.page(type_part="echo", limit=3)) == ["done-11", "done-10", "done-9"]
        with pytest.raises(ValueError, match="cursor"):
            await q.page(cursor="x1")
    finally:
        await c.close()


async def eight_ends(j: Journal) -> None:
    """w0..w7, each submitted then ended at 10 + i: the odd ones failed, types alternating."""
    for i in range(8):
        end: Record = Failed(f"w{i}", {"type": "E", "message": ""}, 10.0 + i) if i % 2 else Completed(f"w{i}", i,
                                                                                                      10.0 + i)
        await j.append([Submitted(f"w{i}", TYPES[i % 2], {}, float(i)), end])


async def test_ends_keep_their_order_kind_and_type_across_a_snapshot_and_a_restart() -> None:
    name = f"paging-restart-{uuid.uuid4().hex}"
    j = Journal(MemoryBackend(name), owner="r", segment_bytes=400, cache_size=2)
    j.open()
    await eight_ends(j)
    before = [ids_of(j.page(None, None, None, 20)), ids_of(j.page("failed", "refund", None, 20))]
    assert before == [[f"w{i}" for i in range(7, -1, -1)], ["w7", "w5", "w3", "w1"]]
    await j.snapshot()
    j.close()
    j = Journal(MemoryBackend(name), owner="r", segment_bytes=400, cache_size=2)
    j.open()
    try:
        assert [ids_of(j.page(None, None, None, 20)), ids_of(j.page("failed", "refund", None, 20))] == before
    finally:
        j.close()
        MemoryBackend.drop(name)


async def test_ends_from_a_snapshot_that_kept_no_kinds_are_checked_against_their_folds() -> None:
    from actors.journal import recovery

    name = f"paging-old-{uuid.uuid4().hex}"
    j = Journal(MemoryBackend(name), owner="o", segment_bytes=400, cache_size=1)
    j.open()
    await eight_ends(j)
    await j.snapshot()
    j.close()
    backend = MemoryBackend(name)
    [snapshot] = backend.snapshots()
    snap = recovery.decode_snapshot(snapshot, backend.get_snapshot(snapshot))
    assert snap.finished_meta is not None and len(snap.finished_meta) == 7
    old = recovery.encode_snapshot(snap.seq, snap.epoch, snap.mode, snap.held, snap.workflows, snap.deployments,
                                   snap.finished)  # as written before the kinds and types were kept
    backend.put_snapshot(snapshot, old)
    j = Journal(MemoryBackend(name), owner="o", segment_bytes=400, cache_size=1)
    j.open()
    try:
        assert sum(1 for k in j.index.finished.log.kinds if k == 0) == 7
        got, cursor = [], None
        while True:  # a page may come out short: its unsure ends that did not match are left out
            page = j.page("failed", "refund", cursor, 3)
            got += ids_of(page)
            cursor = page["next"]
            if cursor is None:
                break
        assert got == ["w7", "w5", "w3", "w1"]
        assert ids_of(j.page("completed", None, None, 20)) == ["w6", "w4", "w2", "w0"]
        assert ids_of(j.page(None, None, None, 20)) == [f"w{i}" for i in range(7, -1, -1)]
        assert sum(1 for k in j.index.finished.log.kinds if k == 0) == 0  # learned from their folds
    finally:
        j.close()
        MemoryBackend.drop(name)


def nonzero(j: Journal) -> dict[str, int]:
    return {k: n for k, n in j.finished_counts().items() if n}


async def test_finished_counts_follow_ends_retention_and_failed_batches() -> None:
    now = [100.0]
    name = f"paging-counts-{uuid.uuid4().hex}"
    j = Journal(MemoryBackend(name), owner="n", segment_bytes=400, cache_size=1, retention_s=50.0,
                clock=lambda: now[0])
    j.open()
    try:
        for i in range(6):
            end: Record = Failed(f"w{i}", {"type": "E", "message": ""}, 10.0 * i) if i % 3 == 0 \
                else Completed(f"w{i}", i, 10.0 * i)
            await j.append([Submitted(f"w{i}", TYPES[0], {}, 10.0 * i), end])
        assert nonzero(j) == {"completed": 4, "failed": 2}
        # A batch that is never written takes its end back.
        undo: list[Any] = []
        j.index.admit(Submitted("w9", TYPES[0], {}, 99.0), undo)
        j.index.admit(Completed("w9", 9, 99.0), undo)
        assert nonzero(j) == {"completed": 5, "failed": 2}
        for step in reversed(undo):
            step()
        assert nonzero(j) == {"completed": 4, "failed": 2}
        await j.snapshot()  # retention forgets those that ended before 50: w0..w4
        assert nonzero(j) == {"completed": 1} and len(j.index.finished) == 1
    finally:
        j.close()
        MemoryBackend.drop(name)
