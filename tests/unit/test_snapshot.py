"""Snapshots and compaction: start-up from live state, retention, deleted segments."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import Journal, codec, open_backend
from actors.options import Options
from actors.records import Record, from_wire
from workflows.errors import JournalCorrupt, UnknownWorkflow
from workflows.testing import Echo, Flaky


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sub(w: str) -> Record:
    return from_wire({"k": "submitted", "w": w, "type": "workflows.testing:Echo", "fields": {"value": w}, "t": 1.0})


def out(w: str, step: int) -> Record:
    return from_wire({"k": "outcome", "w": w, "step": step, "service": "svc", "value": f"{w}-{step}"})


def done(w: str, t: float) -> Record:
    return from_wire({"k": "completed", "w": w, "result": w, "t": t})


def journal(uri: str, clock: Clock, **kw: Any) -> Journal:
    j = Journal(open_backend(uri), segment_bytes=kw.pop("segment_bytes", 400), owner=uuid.uuid4().hex,
                clock=clock, **kw)
    j.open()
    return j


async def fill(j: Journal, clock: Clock, n: int, finish: bool = True) -> None:
    for i in range(n):
        w = f"w{i}"
        await j.append([sub(w)])
        await j.append([out(w, 0)])
        if finish:
            await j.append([done(w, clock.now)])


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'journal'}"


async def test_snapshot_compacts_and_reopen_starts_from_it(uri: str) -> None:
    clock = Clock()
    j = journal(uri, clock, snapshot_records=50)
    await fill(j, clock, 40)
    await fill_live(j, 3)
    assert j.backend.snapshots(), "a snapshot is taken after snapshot_records records"
    seq = await j.snapshot()
    sealed = [r for r in j.backend.segments() if r.sealed]
    assert all(r.first_seq > seq for r in sealed)  # everything the snapshot covers is deleted
    state = j.state()
    j.close()
    again = journal(uri, clock)
    assert again.snapshot_seq == seq
    assert again.state()["workflows"] == state["workflows"]
    assert again.live_steps(["live0"]) == {"live0": ([(0, "svc", "live0-0")], [])}
    assert [o["workflow_id"] for o in again.outcomes("svc", 0, 1000)][:2] == ["w0", "w1"]
    # Appends go on after the snapshot's sequence number, and a duplicate step is still caught.
    assert await again.append([out("live0", 0)]) == ["live0-0"]
    await again.append([out("live0", 1)])
    again.close()


async def fill_live(j: Journal, n: int) -> None:
    for i in range(n):
        await j.append([sub(f"live{i}"), out(f"live{i}", 0)])


async def test_retention_forgets_finished_workflows_only(uri: str) -> None:
    clock = Clock()
    j = journal(uri, clock, snapshot_records=10**9, retention_s=60.0)
    await fill(j, clock, 10)
    await fill_live(j, 2)
    clock.now += 61
    await fill(j, clock, 0)
    await j.append([sub("recent"), done("recent", clock.now)])
    await j.snapshot()
    kept = {d["id"] for d in j.state()["workflows"]}
    assert kept == {"live0", "live1", "recent"}
    j.close()
    again = journal(uri, clock)
    assert {d["id"] for d in again.state()["workflows"]} == kept
    assert again.read(0) == again.read(again.snapshot_seq + 1)  # history below the snapshot is gone
    again.close()


async def test_start_up_reads_live_state_not_history(uri: str) -> None:
    clock = Clock()
    j = journal(uri, clock, snapshot_records=10**9, retention_s=0.0, segment_bytes=4000)
    await fill(j, clock, 300)
    await fill_live(j, 5)
    clock.now += 1
    await j.snapshot()
    j.close()
    again = journal(uri, clock)
    assert again.state()["total"] == 5
    assert sum(1 for _ in again.records(0)) <= 2  # the epoch record, at most one more
    again.close()


async def test_a_damaged_snapshot_stops_start_up(uri: str, tmp_path: Path) -> None:
    clock = Clock()
    j = journal(uri, clock, snapshot_records=10**9)
    await fill(j, clock, 5)
    await j.snapshot()
    j.close()
    [snap] = (tmp_path / "journal" / "snapshots").iterdir()
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="snapshot"):
        journal(uri, clock)


async def test_coordinator_restarts_from_a_snapshot(tmp_path: Path) -> None:
    options = Options(storage=str(tmp_path / "j"), gateway=None, slow_retry_interval_s=0.05, jitter_s=0.0,
                      snapshot_records=20, retention_s=3600.0)
    c = LocalCoordinator(options)
    await c.start()
    ids = [await c.core.submit(Echo(i)) for i in range(15)]
    assert [await c.core.result(w, 5) for w in ids] == list(range(15))
    parked = await c.core.submit(Flaky(failures=1000))
    await c.journal.snapshot()
    await c.close()
    c = LocalCoordinator(options.replace(retention_s=0.0))
    await c.start()
    assert c.journal.snapshot_seq > 0
    # Unfinished work resumes; finished ones past the retention are forgotten.
    assert (await c.core.status(parked))["state"] in ("pending", "running", "delayed")
    await c.journal.snapshot()
    for _ in range(100):
        if ids[0] not in c.core.table.workflows:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(UnknownWorkflow):
        await c.core.result(ids[0])
    await c.close()


async def test_an_idle_log_seals_its_tail(uri: str) -> None:
    clock = Clock()
    j = Journal(open_backend(uri), owner="idle", clock=clock, seal_idle_s=0.05)
    j.open()
    await j.append([sub("a")])
    for _ in range(300):  # sealing renames, then opens the next segment: wait for both
        if [r.sealed for r in j.backend.segments()] == [True, False]:
            break
        await asyncio.sleep(0.01)
    assert [r.sealed for r in j.backend.segments()] == [True, False]
    await j.append([sub("b")])
    j.close()
    again = journal(uri, clock)
    assert {r["w"] for r in again.read() if r["k"] == "submitted"} == {"a", "b"}
    again.close()


async def test_a_snapshot_bigger_than_one_record_is_written_and_read_back(uri: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    j = journal(uri, clock, segment_bytes=1 << 20)
    await fill(j, clock, 40, finish=False)
    monkeypatch.setattr(codec, "MAX_RECORD_BYTES", 1024)  # far below the fold of 40 workflows
    seq = await j.snapshot()
    (name,) = j.backend.snapshots()
    assert len(j.backend.get_snapshot(name)) > 4 * 1024
    j.close()
    j = journal(uri, clock, segment_bytes=1 << 20)
    assert j.snapshot_seq == seq and sorted(j.table.workflows) == sorted(f"w{i}" for i in range(40))
    assert j.live_steps(["w7"]) == {"w7": ([(0, "svc", "w7-0")], [])}
    j.close()
