"""Start-up and ``coordinator journal verify`` apply the same checks; journals of the
old frame format still open."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from actors.journal import Journal, codec, open_backend, tools
from actors.journal.backends import Backend, SegmentRef
from actors.records import Parked, Record, Step, from_wire, to_wire
from workflows.errors import JournalCorrupt


def submitted(w: str) -> Record:
    return from_wire({"k": "submitted", "w": w, "type": "tests:T", "fields": {"x": w}, "t": 1.0})


async def write(uri: str, n: int, **kw: Any) -> Journal:
    j = Journal(open_backend(uri), owner="writer", segment_bytes=kw.pop("segment_bytes", 120), **kw)
    j.open()
    for i in range(n):
        await j.append([submitted(f"w{i}")])
    await j.append([])  # the flusher's sealing after the last batch is done
    j.close()
    return j


def opens(uri: str) -> None:
    j = Journal(open_backend(uri), owner=uuid.uuid4().hex)
    try:
        j.open()
    finally:
        j.close()


def both_refuse(uri: str, match: str) -> None:
    """Verify and start-up refuse the journal alike, and verify changed nothing."""
    backend = open_backend(uri)
    before = {ref: backend.read(ref) for ref in backend.segments()}
    with pytest.raises(JournalCorrupt, match=match) as by_tool:
        tools.verify(uri)
    assert {ref: backend.read(ref) for ref in backend.segments()} == before
    with pytest.raises(JournalCorrupt, match=match) as by_start:
        opens(uri)
    assert (by_tool.value.path, by_tool.value.offset) == (by_start.value.path, by_start.value.offset)


def sealed(backend: Backend) -> list[SegmentRef]:
    refs = [r for r in backend.segments() if r.sealed]
    assert len(refs) >= 3
    return refs


def rename(backend: Backend, ref: SegmentRef, first_seq: int) -> None:
    data = backend.read(ref)
    backend.delete(ref)
    seg = backend.open_active(first_seq)
    seg.append(data)
    seg.close()
    backend.seal(first_seq)


async def test_a_deleted_segment_in_the_middle(uri: str) -> None:
    await write(uri, 10)
    backend = open_backend(uri)
    backend.delete(sealed(backend)[1])
    both_refuse(uri, "are missing")


async def test_a_segment_starting_before_the_previous_one_ends(uri: str) -> None:
    await write(uri, 10)
    backend = open_backend(uri)
    refs = sealed(backend)
    rename(backend, refs[1], refs[1].first_seq - 1)
    both_refuse(uri, "before")


async def test_a_gap_in_sequence_numbers_inside_a_segment(uri: str) -> None:
    await write(uri, 3, segment_bytes=1 << 20)
    backend = open_backend(uri)
    (ref,) = backend.segments()
    seg = backend.open_active(ref.first_seq)
    seg.append(codec.encode(to_wire(submitted("late"), 99)))
    seg.close()
    both_refuse(uri, "record 99 where 4 was expected")


async def test_a_damaged_snapshot(uri: str) -> None:
    await write(uri, 10, snapshot_records=5)
    backend = open_backend(uri)
    (name,) = backend.snapshots()
    data = backend.get_snapshot(name)
    backend.put_snapshot(name, data[:-1] + bytes([data[-1] ^ 0xFF]))
    both_refuse(uri, "checksum")
    backend.put_snapshot(name, data[: len(data) // 2])
    both_refuse(uri, "snapshot is damaged")


async def test_verify_reports_what_start_up_repairs_and_repairs_nothing(uri: str) -> None:
    await write(uri, 10, snapshot_records=5)
    backend = open_backend(uri)
    holder = Journal(open_backend(uri), owner="holder")
    holder.open()  # verify takes no lock: it reads beside a running journal
    holder.close()
    active = backend.segments()[-1]
    seg = backend.open_active(active.first_seq)
    seg.append(codec.encode({"v": 1, "q": 10 ** 6, "k": "epoch"})[:-2])
    seg.close()
    report = tools.verify(uri)
    assert report["ok"] and report["torn_tail_bytes"] > 0 and report["snapshot"]["seq"] >= 5
    assert tools.verify(uri) == report  # nothing was cut
    opens(uri)
    assert tools.verify(uri)["torn_tail_bytes"] == 0


async def test_a_journal_of_the_old_frame_format_opens_and_goes_on_in_the_new_one(uri: str) -> None:
    backend: Backend = open_backend(uri)
    backend.lock("old")
    seg = backend.open_active(0)
    old = [{"v": 1, "q": 0, "k": "epoch", "epoch": 1, "owner": "old"}]
    old += [to_wire(submitted(f"old{q}"), q) for q in (1, 2)]
    seg.append(b"".join(codec.legacy_frame(codec.pack(r)) for r in old))
    seg.append(codec.legacy_frame(codec.pack(to_wire(submitted("torn"), 3)))[:-4])  # the old writer's crash
    seg.close()
    backend.unlock()
    assert tools.verify(uri)["records"] == 3
    j = Journal(open_backend(uri), owner="new")
    j.open()
    assert j.torn_bytes > 0 and j.epoch == 2
    await j.append([submitted("new")])
    j.close()
    refs = open_backend(uri).segments()
    assert refs[0].first_seq == 0 and refs[-1].first_seq == 3  # new frames in a segment of their own
    assert not codec.is_legacy(open_backend(uri).read(refs[-1]))
    j = Journal(open_backend(uri), owner="again")
    j.open()
    assert [r.get("w") for r in j.read() if r["k"] == "submitted"] == ["old1", "old2", "new"]
    j.close()
    assert tools.verify(uri)["ok"]



# Records exactly as journals written before the typed records hold them: the maps the
# supervisor and the runner wrote, keys in their order, and the stamp (``v``, ``q``) last.
OLD_RECORDS: list[dict[str, Any]] = [
    {"k": "epoch", "epoch": 1, "owner": "old"},
    {"k": "submitted", "w": "done", "type": "tests:T", "fields": {"x": 1}, "t": 1.0},
    {"k": "submitted", "w": "late", "type": "tests:T", "fields": {"x": 2}, "t": 1.0},
    {"k": "submitted", "w": "undone", "type": "tests:T", "fields": {"x": 3}, "t": 1.0},
    {"k": "mode", "mode": "suspended_slow", "held": True, "t": 1.1},
    {"k": "started", "w": "done", "attempt": 1, "t": 1.2},
    {"k": "outcome", "w": "done", "step": 0, "service": "svc", "value": {"id": 7}},
    {"k": "completed", "w": "done", "t": 1.3, "result": [1, 2]},
    {"k": "started", "w": "late", "attempt": 1, "t": 1.2},
    {"k": "delayed", "w": "late", "attempt": 1, "next_retry_at": 5.0, "t": 1.4},
    {"k": "failed", "w": "late", "error": {"type": "x.DeadlineExceeded", "message": "m", "traceback": ""},
     "t": 1.5},  # the supervisor's failure past a deadline, as it was written
    {"k": "started", "w": "undone", "attempt": 1, "t": 1.2},
    {"k": "outcome", "w": "undone", "step": 0, "service": "svc", "value": "u0"},
    {"k": "compensating", "w": "undone", "error": {"type": "builtins.ValueError"}, "t": 1.6},
    {"k": "compensation", "w": "undone", "step": 0, "service": "svc", "value": "c0"},
    {"k": "compensated", "w": "undone", "t": 1.7, "error": {"type": "builtins.ValueError"}},
]


async def test_a_journal_written_with_the_old_record_maps_reads_back_into_typed_records(uri: str) -> None:
    backend: Backend = open_backend(uri)
    backend.lock("old")
    seg = backend.open_active(0)
    seg.append(b"".join(codec.encode({**r, "v": 1, "q": q}) for q, r in enumerate(OLD_RECORDS)))
    seg.close()
    backend.unlock()
    (ref,) = open_backend(uri).segments()
    typed = [from_wire(r) for r in codec.scan(open_backend(uri).read(ref))[0]]
    assert [type(r).__name__ for r in typed] == [
        "Epoch", "Submitted", "Submitted", "Submitted", "ModeChanged", "Started", "Step", "Completed", "Started",
        "Parked", "Failed", "Started", "Step", "Compensating", "Step", "Compensated"]
    assert typed[9] == Parked("late", False, 1, 5.0, 1.4, "")
    assert typed[14] == Step("undone", 0, "svc", "c0", compensation=True)
    for r, old in zip(typed[1:], OLD_RECORDS[1:], strict=True):  # what it wrote is what it reads
        assert {k: v for k, v in to_wire(r, 0).items() if k not in ("v", "q", "reason")} == old
    j = Journal(open_backend(uri), owner="new")
    j.open()
    try:
        wfs = j.table.workflows
        assert (wfs["done"].state.value, wfs["done"].result, wfs["done"].outcomes) == ("completed", [1, 2],
                                                                                      [(0, "svc", {"id": 7})])
        assert wfs["late"].state.value == "failed" and wfs["late"].error["type"] == "x.DeadlineExceeded"
        assert (wfs["undone"].state.value, wfs["undone"].compensations) == ("compensated", [(0, "svc", "c0")])
        assert (j.table.mode, j.table.held) == ("suspended_slow", True)
        assert await j.append([submitted("done")]) != [None]  # still known: answered, not journaled
    finally:
        j.close()
