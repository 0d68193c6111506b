"""The journal on file:// and mem://: recovery, group commit, sealing, dedupe, fencing, tools."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from actors.journal import Journal, MemoryBackend, codec, open_backend, tools
from actors.journal.backends import Backend, SegmentRef
from actors.journal.files import FileBackend
from actors.records import Ended, Kind, Record, from_wire, to_wire
from actors.workflow_state import FINISHED, State, WorkflowTable
from tests.unit.test_codec import is_cut_tail, mutate, mutation
from workflows.errors import Fenced, JournalCorrupt, JournalUnavailable

_owners = itertools.count()
Opener = Callable[..., Journal]


@pytest.fixture
def journals() -> Iterator[Opener]:
    """Opens journals (each with its own owner) and closes every one at the end."""
    made: list[Journal] = []

    def make(storage: str, *, start: bool = True, **kw: Any) -> Journal:
        j = Journal(open_backend(storage), owner=kw.pop("owner", f"owner-{next(_owners)}"), **kw)
        made.append(j)
        if start:
            j.open()
        return j

    yield make
    for j in made:
        j.close()


def reopen(j: Journal, journals: Opener, **kw: Any) -> Journal:
    j.close()
    return journals(j.backend.uri, **kw)


def submitted(w: str) -> Record:
    return from_wire({"k": "submitted", "w": w, "type": "tests:T", "fields": {"x": w}, "t": 1.0})


def outcome(w: str, step: int, value: Any, kind: str = "outcome") -> Record:
    return from_wire({"k": kind, "w": w, "step": step, "service": "svc", "value": value})


def terminal(w: str, kind: str = "completed", **fields: Any) -> Record:
    return from_wire({"k": kind, "w": w, "t": 2.0, **fields})


def user_records(j: Journal) -> list[dict[str, Any]]:
    return [r for r in j.read() if r["k"] != "epoch"]


def active(j: Journal) -> SegmentRef:
    refs = j.backend.segments()
    assert not refs[-1].sealed
    return refs[-1]


def poke(backend: Backend, ref: SegmentRef, offset: int, mask: int = 0xFF) -> None:
    """Flip bits of one stored byte, behind the journal's back."""
    if isinstance(backend, FileBackend):
        with open(backend._path(ref), "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ mask]))
    else:
        assert isinstance(backend, MemoryBackend)
        backend._segments[ref][offset] ^= mask


def frame_starts(buf: bytes) -> list[int]:
    bounds = codec.frame_bounds(buf)
    assert not bounds or bounds[-1][1] == len(buf)
    return [start for start, _ in bounds] + [len(buf)]


async def settled(j: Journal) -> None:
    """Wait until the flusher's work after the batches so far (sealing) is done: an
    empty append is written after it."""
    await j.append([])


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


# --- open, append, reopen ------------------------------------------------------------------


async def test_append_then_reopen_returns_the_same_records(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a"), submitted("b")])
    assert await j.append([outcome("a", 0, {"seat": "1A"}), outcome("b", 0, [1, 2])]) == [{"seat": "1A"}, [1, 2]]
    await j.append([outcome("a", 1, None), terminal("a", result="done")])
    before = j.read()
    assert [r["q"] for r in before] == list(range(len(before)))
    assert [r["k"] for r in before] == ["epoch", "submitted", "submitted", "outcome", "outcome", "outcome", "completed"]
    j = reopen(j, journals)
    assert j.read()[: len(before)] == before
    assert j.read(3, limit=2) == before[3:5]
    assert [r["workflow_id"] for r in j.outcomes("svc", since_seq=4)] == ["b", "a"]
    assert j.live_steps(["a", "b", "zz"]) == {"a": Ended(Kind.COMPLETED, "done", None),
                                              "b": ([(0, "svc", [1, 2])], [])}


async def test_epoch_increments_across_opens_and_is_journaled(uri: str, journals: Opener) -> None:
    j = journals(uri, owner="first")
    assert j.epoch == 1
    for expected in (2, 3):
        j = reopen(j, journals, owner=f"owner-{expected}")
        assert j.epoch == expected
    epochs = [(r["epoch"], r["owner"]) for r in j.read() if r["k"] == "epoch"]
    assert epochs == [(1, "first"), (2, "owner-2"), (3, "owner-3")]


async def test_group_commit_makes_far_fewer_fsyncs_than_appends(uri: str, journals: Opener) -> None:
    j = journals(uri)
    assert j.log._active is not None
    segment = j.log._active
    syncs = 0
    real_sync = segment.sync

    def counting_sync() -> None:
        nonlocal syncs
        syncs += 1
        real_sync()

    segment.sync = counting_sync  # type: ignore[method-assign]
    n = 200
    answers = await asyncio.gather(*(j.append([submitted(f"w{i}")]) for i in range(n)))
    assert answers == [[None]] * n
    assert 1 <= syncs <= 5, syncs  # one fsync per batch, not per append
    j = reopen(j, journals)
    assert {r["w"] for r in user_records(j)} == {f"w{i}" for i in range(n)}


def gate_sync(j: Journal, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold every fsync of ``j`` until ``release`` is set; ``entered`` tells one started."""
    assert j.log._active is not None
    entered, release = threading.Event(), threading.Event()
    real_sync = type(j.log._active).sync

    def gated_sync(self: Any) -> None:
        entered.set()
        assert release.wait(5)
        real_sync(self)

    monkeypatch.setattr(type(j.log._active), "sync", gated_sync)
    return entered, release


async def test_an_append_is_acknowledged_only_after_its_batch_is_synced(uri: str, journals: Opener,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    j = journals(uri)
    entered, release = gate_sync(j, monkeypatch)
    first = asyncio.ensure_future(j.append([submitted("a")]))
    try:
        await wait_for(entered.is_set)
        second = asyncio.ensure_future(j.append([submitted("b")]))  # fills the next batch meanwhile
        await wait_for(lambda: j.next_seq == 3)
        assert not first.done() and not second.done()
    finally:
        release.set()
    assert await first == [None] and await second == [None]


async def test_a_graceful_close_writes_what_was_appended_before_it(uri: str, journals: Opener,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    j = journals(uri)
    entered, release = gate_sync(j, monkeypatch)
    first = asyncio.ensure_future(j.append([submitted("a")]))
    await wait_for(entered.is_set)
    second = asyncio.ensure_future(j.append([submitted("b")]))  # still open when the close begins
    await wait_for(lambda: j.next_seq == 3)
    closing = asyncio.ensure_future(j.drain())
    await asyncio.sleep(0.01)
    assert not closing.done()
    release.set()
    await closing
    assert await first == [None] and await second == [None]
    j = reopen(j, journals)
    assert {r["w"] for r in user_records(j)} == {"a", "b"}


async def test_a_failed_write_fails_the_journal(uri: str, journals: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    j = journals(uri)
    assert j.log._active is not None

    def broken_sync(self: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(type(j.log._active), "sync", broken_sync)
    with pytest.raises(JournalUnavailable, match="disk gone"):
        await j.append([submitted("a")])
    with pytest.raises(JournalUnavailable):
        await j.append([submitted("b")])


# --- torn tails and corruption ---------------------------------------------------------------


async def test_torn_tail_is_cut_on_open_and_the_journal_goes_on(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a"), outcome("a", 0, "x")])
    j.close()
    backend = open_backend(uri)
    ref = active(j)
    good = backend.read(ref)
    late = {"v": 1, "q": 3, "k": "outcome", "w": "a", "step": 1, "service": "svc", "value": "y" * 300}
    torn = codec.encode(late)[:-3]  # the crash came three bytes before the end of the write
    seg = backend.open_active(ref.first_seq)
    seg.append(torn)
    seg.sync()
    seg.close()
    assert len(backend.read(ref)) == len(good) + len(torn)
    with capture_logs() as logs:
        j = journals(uri)
    assert j.torn_bytes == len(torn)
    assert [e for e in logs if e["event"] == "torn_tail_truncated"] == [
        {"event": "torn_tail_truncated", "log_level": "warning", "segment": backend.describe(ref),
         "offset": len(good), "bytes": len(torn)}
    ]
    after = backend.read(ref)
    assert len(after) < len(good) + len(torn) and after.startswith(good)
    assert [r["k"] for r in codec.scan(after[len(good) :])[0]] == ["epoch"]  # cut at the last whole record
    if isinstance(backend, FileBackend):
        assert os.path.getsize(backend._path(ref)) == len(after)
    assert [r["k"] for r in user_records(j)] == ["submitted", "outcome"]
    assert await j.append([outcome("a", 1, "z")]) == ["z"]
    j = reopen(j, journals)
    assert [(r["k"], r.get("value")) for r in user_records(j)] == [("submitted", None), ("outcome", "x"),
                                                                    ("outcome", "z")]
    assert j.torn_bytes == 0


async def test_corruption_inside_the_log_stops_open_and_changes_nothing(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a"), outcome("a", 0, "x"), terminal("a")])
    j.close()
    backend = open_backend(uri)
    ref = active(j)
    starts = frame_starts(backend.read(ref))
    poke(backend, ref, starts[2] + codec.HEADER.size + 3)  # a payload byte of the third of four frames
    damaged = backend.read(ref)
    broken = journals(uri, start=False)
    with pytest.raises(JournalCorrupt) as info:
        broken.open()
    assert info.value.path == backend.describe(ref) and info.value.offset == starts[2]
    assert backend.describe(ref) in str(info.value)
    assert backend.read(ref) == damaged  # nothing cut: every acknowledged record is still there
    with pytest.raises(JournalCorrupt):
        tools.verify(uri)


async def test_a_damaged_sealed_segment_is_corruption_even_at_its_end(uri: str, journals: Opener) -> None:
    j = journals(uri, segment_bytes=200)
    for i in range(6):
        await j.append([submitted(f"w{i}"), outcome(f"w{i}", 0, "v" * 40)])
    j.close()
    backend = open_backend(uri)
    sealed = [r for r in backend.segments() if r.sealed]
    assert len(sealed) >= 2
    buf = backend.read(sealed[0])
    poke(backend, sealed[0], len(buf) - 1)  # its last frame: a torn tail if it were the active one
    with pytest.raises(JournalCorrupt) as info:
        journals(uri, segment_bytes=200)
    assert info.value.path == backend.describe(sealed[0]) and info.value.path.endswith(".seg")
    assert backend.read(sealed[0])[:-1] == buf[:-1]


async def test_a_gap_in_sequence_numbers_is_corruption(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a")])
    j.close()
    backend = open_backend(uri)
    seg = backend.open_active(active(j).first_seq)
    seg.append(codec.encode({"v": 1, "q": 7, "k": "submitted", "w": "b", "type": "t", "fields": {}, "t": 0.0}))
    seg.close()
    with pytest.raises(JournalCorrupt, match="record 7 where 2 was expected"):
        journals(uri)


# --- segments ---------------------------------------------------------------------------------


async def test_sealing_at_segment_bytes_and_reads_span_segments(uri: str, journals: Opener) -> None:
    j = journals(uri, segment_bytes=150)
    for i in range(10):
        await j.append([submitted(f"w{i}")])
        await j.append([outcome(f"w{i}", 0, i)])
    await settled(j)
    refs = j.backend.segments()
    sealed = [r for r in refs if r.sealed]
    assert len(sealed) >= 3 and not refs[-1].sealed
    assert all(len(j.backend.read(r)) >= 150 for r in sealed)
    everything = j.read()
    assert [r["q"] for r in everything] == list(range(21))
    assert [r["value"] for r in j.outcomes("svc")] == list(range(10))
    assert j.read(from_seq=7, limit=5) == everything[7:12]
    j = reopen(j, journals, segment_bytes=150)
    assert j.read()[:21] == everything
    assert [r.first_seq for r in j.backend.segments()] == sorted({r.first_seq for r in j.backend.segments()})


async def test_sealing_while_the_next_batch_is_filling_keeps_sequence_numbers_in_their_segment(
    uri: str, journals: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = journals(uri, segment_bytes=1)  # every write seals its segment
    entered, release = gate_sync(j, monkeypatch)
    first = asyncio.ensure_future(j.append([submitted("a")]))
    try:
        await wait_for(entered.is_set)  # batch 1 is being written; batch 2 is stamped meanwhile
        second = asyncio.ensure_future(j.append([submitted("b"), submitted("c")]))
        await wait_for(lambda: j.next_seq == 4)
    finally:
        release.set()
    await asyncio.gather(first, second)
    await settled(j)
    for ref in j.backend.segments():
        recs, _ = codec.scan(j.backend.read(ref))
        assert [r["q"] for r in recs] == list(range(ref.first_seq, ref.first_seq + len(recs))), ref
    j = reopen(j, journals)
    assert [r["w"] for r in user_records(j)] == ["a", "b", "c"]


# --- one outcome per step, one terminal record -------------------------------------------------


async def test_duplicate_outcome_is_dropped_and_the_first_value_returned(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a")])
    assert await j.append([outcome("a", 0, "first")]) == ["first"]
    assert await j.append([outcome("a", 0, "second"), outcome("a", 1, "next")]) == ["first", "next"]
    assert await j.append([outcome("a", 0, "c", kind="compensation"), outcome("a", 0, "d", kind="compensation")]) \
        == ["c", "c"]
    j = reopen(j, journals)  # the index is rebuilt from the log
    assert await j.append([outcome("a", 1, "third")]) == ["next"]
    steps = [(r["k"], r["step"], r["value"]) for r in user_records(j) if r["k"] != "submitted"]
    assert steps == [("outcome", 0, "first"), ("outcome", 1, "next"), ("compensation", 0, "c")]


async def test_a_step_that_skips_one_is_refused_and_the_call_leaves_nothing_behind(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a"), submitted("b")])
    seq = j.next_seq
    with pytest.raises(ValueError, match="skips step 0"):
        await j.append([outcome("a", 1, "x")])
    with pytest.raises(ValueError, match="skips step 1"):  # the valid records before it are not kept either
        await j.append([submitted("c"), outcome("b", 0, "y"), terminal("a"), outcome("b", 2, "z")])
    with pytest.raises(TypeError):
        await j.append([outcome("b", 0, "y"), outcome("a", 0, {1, 2})])  # a set: msgpack cannot encode it
    assert j.next_seq == seq
    assert await j.append([outcome("b", 0, "later"), outcome("a", 0, "ok")]) == ["later", "ok"]
    j = reopen(j, journals)  # no hole in the sequence numbers
    assert [(r["k"], r["w"]) for r in user_records(j)] == [("submitted", "a"), ("submitted", "b"), ("outcome", "b"),
                                                           ("outcome", "a")]
    assert j.live_steps(["a", "b", "c"]) == {"a": ([(0, "svc", "ok")], []), "b": ([(0, "svc", "later")], [])}


async def test_duplicate_submitted_and_terminal_records_are_dropped(uri: str, journals: Opener) -> None:
    j = journals(uri)
    await j.append([submitted("a"), submitted("a")])
    await j.append([terminal("a", result=1)])
    end = Ended(Kind.COMPLETED, 1, None)  # what the journal holds answers a late writer
    assert await j.append([terminal("a", result=2), terminal("a", "failed", error={}), outcome("a", 0, "late")]) \
        == [end, end, end]
    await j.append([submitted("a")])  # a finished id is not taken again
    j = reopen(j, journals)
    await j.append([terminal("a", "compensated")])
    assert [(r["k"], r.get("result")) for r in user_records(j)] == [("submitted", None), ("completed", 1)]
    assert j.live_steps(["a"]) == {"a": end}


# --- fencing -------------------------------------------------------------------------------------


async def test_a_second_journal_on_the_same_storage_is_fenced(uri: str, journals: Opener) -> None:
    first = journals(uri, owner="first")
    second = journals(uri, owner="second", start=False)
    with pytest.raises(Fenced, match="held by another coordinator") as info:
        second.open()
    assert "first" in str(info.value)
    second.close()  # a refused journal releases nothing it does not hold
    with pytest.raises(Fenced):
        journals(uri, owner="third")
    await first.append([submitted("a")])  # the holder goes on
    first.close()
    after = journals(uri, owner="fourth")
    assert after.epoch == 2 and [r["w"] for r in user_records(after)] == ["a"]


# --- tools -----------------------------------------------------------------------------------------


async def test_tools_verify_and_dump(uri: str, journals: Opener) -> None:
    j = journals(uri, segment_bytes=200)
    for i in range(5):
        await j.append([submitted(f"w{i}"), outcome(f"w{i}", 0, "v" * 30)])
    everything = j.read()
    j.close()
    backend = open_backend(uri)
    report = tools.verify(uri)
    assert report == {"storage": uri, "segments": len(backend.segments()), "records": len(everything),
                      "torn_tail_bytes": 0, "next_seq": len(everything), "ok": True}
    assert list(tools.dump(uri)) == everything
    seg = backend.open_active(active(j).first_seq)
    seg.append(b"\x05\x00\x00")  # a torn tail is reported, not cut
    seg.close()
    assert tools.verify(uri)["torn_tail_bytes"] == 3
    assert backend.read(active(j)).endswith(b"\x05\x00\x00")
    first = backend.segments()[0]
    poke(backend, first, codec.HEADER.size + 2)
    with pytest.raises(JournalCorrupt) as info:
        tools.verify(uri)
    assert info.value.path == backend.describe(first) and info.value.offset == 0
    with pytest.raises(JournalCorrupt):
        list(tools.dump(uri))


# --- recovery from every prefix --------------------------------------------------------------------


async def record_history(storage: str, journals: Opener) -> None:
    """A few workflows through every kind of record, appended in batches, some concurrently."""
    j = journals(storage)
    await j.append([submitted(w) for w in ("done", "parked", "undone", "failed", "blocked")])
    await asyncio.gather(
        j.append([from_wire({"k": "started", "w": "done", "attempt": 1, "t": 1.1}), outcome("done", 0, {"id": 7})]),
        j.append([from_wire({"k": "started", "w": "parked", "attempt": 1, "t": 1.1}), outcome("parked", 0, "p0")]),
        j.append([from_wire({"k": "started", "w": "undone", "attempt": 1, "t": 1.1})]),
    )
    await j.append([outcome("done", 1, [1, 2]), terminal("done", result={"ok": True})])
    await j.append([from_wire({"k": "delayed", "w": "parked", "attempt": 1, "next_retry_at": 5.0, "t": 1.2})])
    await asyncio.gather(
        j.append([outcome("undone", 0, "u0")]),
        j.append([from_wire({"k": "failed", "w": "failed", "error": {"type": "builtins.ValueError"}, "t": 1.3})]),
        j.append([from_wire({"k": "blocked", "w": "blocked", "attempt": 1, "next_retry_at": 9.0, "t": 1.3})]),
        j.append([from_wire({"k": "mode", "mode": "suspended_slow", "held": False, "t": 1.3})]),
    )
    await j.append([from_wire({"k": "compensating", "w": "undone", "error": {"type": "x"}, "t": 1.4})])
    await j.append([outcome("undone", 0, "c0", kind="compensation")])
    await j.append([terminal("undone", "compensated", error={"type": "x"})])
    await j.append([from_wire({"k": "started", "w": "parked", "attempt": 2, "t": 1.5}), outcome("parked", 1, "p1")])
    await j.append([from_wire({"k": "mode", "mode": "normal", "held": False, "t": 1.6})])
    j.close()


def check_fold(recs: list[dict[str, Any]]) -> WorkflowTable:
    """Fold a prefix; every workflow must be in the state its records say, with nothing lost."""
    table = WorkflowTable()
    for r in recs:
        table.apply(from_wire(r), r["q"])
    for wid, wf in table.workflows.items():
        mine = [r for r in recs if r.get("w") == wid]
        ends = [r for r in mine if r["k"] in ("completed", "failed", "compensated")]
        parks = [r for r in mine if r["k"] in ("delayed", "blocked")]
        assert isinstance(wf.state, State)
        if ends:
            assert wf.state is State(ends[0]["k"]) and wf.state in FINISHED and wf.finished_at == ends[0]["t"]
        elif parks:
            assert wf.state is State(parks[-1]["k"]) and wf.next_retry_at == parks[-1]["next_retry_at"]
        else:
            assert wf.state is State.PENDING and wf.next_retry_at is None
        assert [tuple(o) for o in wf.outcomes] == [(r["step"], r["service"], r["value"]) for r in mine
                                                    if r["k"] == "outcome"]
        assert [tuple(o) for o in wf.compensations] == [(r["step"], r["service"], r["value"]) for r in mine
                                                         if r["k"] == "compensation"]
        assert wf.attempts == max([r["attempt"] for r in mine if "attempt" in r], default=0)
        assert wf.compensating == any(r["k"] == "compensating" for r in mine)
    modes = [r for r in recs if r["k"] == "mode"]
    assert table.mode == (modes[-1]["mode"] if modes else "normal")
    return table


async def test_recovery_from_every_prefix_of_a_recorded_journal(tmp_path: Path, journals: Opener,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    await record_history(f"file://{tmp_path / 'original'}", journals)
    original = FileBackend(str(tmp_path / "original"))
    (ref,) = original.segments()
    log = original.read(ref)
    written, end = codec.scan(log)
    assert end == len(log) and len(written) == 24
    bounds = frame_starts(log)
    # A crash leaves some prefix of the file; fsync itself is not under test here, and
    # skipping it keeps ~1,500 recoveries fast.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    copy = tmp_path / "copy"
    segment = copy / "wal" / ref.name
    os.makedirs(segment.parent)
    for cut in range(len(log) + 1):
        segment.write_bytes(log[:cut])
        j = journals(f"file://{copy}", fsync=False)
        whole = sum(1 for b in bounds[1:] if b <= cut)
        assert j.torn_bytes == cut - bounds[whole], cut
        assert os.path.getsize(segment) > bounds[whole]  # cut back to the last whole record, then the new epoch
        recs = j.read()
        assert recs[:-1] == written[:whole], cut  # every record whole before the cut, and nothing else
        assert recs[-1]["k"] == "epoch" and recs[-1]["q"] == whole
        assert recs[-1]["epoch"] == (2 if whole else 1)
        table = check_fold(recs)
        assert j.live_steps(list(table.workflows)) == {  # steps of the unfinished, the end of the others
            w: (wf.outcomes, wf.compensations) if not wf.state.finished
            else Ended(Kind(wf.state.value), wf.result, wf.error)
            for w, wf in table.workflows.items()
        }, cut
        j.close()


# --- any damage to the log ----------------------------------------------------------------------------


def _history() -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = [{"v": 1, "q": 0, "k": "epoch", "epoch": 1, "owner": "o"}]
    for w in ("a", "b"):
        recs.append(to_wire(submitted(w), len(recs)))
        recs.append(to_wire(outcome(w, 0, w * 3), len(recs)))
    recs.append(to_wire(terminal("a", result="r"), len(recs)))
    return recs


HISTORY = _history()
HISTORY_BYTES = b"".join(codec.encode(r) for r in HISTORY)


@settings(max_examples=300, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=3))
def test_any_damage_opens_as_the_records_written_or_raises_corrupt(damages: list[tuple[Any, ...]]) -> None:
    """Damage opens as every record written, or `JournalCorrupt`; as a prefix of them
    only when what was cut is a torn tail (`is_cut_tail`) and nothing before it changed."""
    buf = HISTORY_BYTES
    for d in damages:
        buf = mutate(buf, d)
    name = f"test-damage-{uuid.uuid4().hex}"
    MemoryBackend(name)._segments[SegmentRef(0, False)] = bytearray(buf)
    j = Journal(open_backend(f"mem://{name}"), fsync=False)
    try:
        try:
            j.open()
        except JournalCorrupt:
            return
        recs = j.read()
        kept = recs[:-1]
        assert recs[-1]["k"] == "epoch" and recs[-1]["q"] == len(recs) - 1
        assert kept == HISTORY[: len(kept)]  # never a made-up, altered or skipped record
        if kept != HISTORY:
            end = len(buf) - j.torn_bytes
            assert buf[:end] == HISTORY_BYTES[:end], damages
            assert is_cut_tail(buf[end:], [codec.encode(r) for r in HISTORY]), damages
        j.close()
        j = Journal(open_backend(f"mem://{name}"), fsync=False)
        j.open()  # what the first open kept is a clean log
        assert j.torn_bytes == 0 and j.read()[:-1] == recs
    finally:
        j.close()
        MemoryBackend.drop(name)
