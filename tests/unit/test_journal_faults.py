"""The journal under storage faults (``mem://`` fault injection): nothing wedges,
nothing unacknowledged is kept, a storage that comes back serves appends again."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from actors.journal import Journal, MemoryBackend, codec, open_backend
from actors.journal.backends import FAULT_OPS, Faults
from actors.records import Completed, Known, Record, Submitted, from_wire
from workflows.errors import Fenced, JournalUnavailable


class Inline(concurrent.futures.Executor):
    """Runs each call at once on the caller's thread (as a deterministic simulation does)."""

    def __init__(self) -> None:
        self.calls = 0
        self.shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.calls += 1
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting caller, as a thread pool does
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shut = True


@pytest.fixture
def name() -> Iterator[str]:
    store = f"test-faults-{uuid.uuid4().hex}"
    yield store
    MemoryBackend.drop(store)


@pytest.fixture
def opened(name: str) -> Iterator[Callable[..., Journal]]:
    made: list[Journal] = []

    def make(**kw: Any) -> Journal:
        kw.setdefault("retry_min_s", 0.005)
        kw.setdefault("retry_max_s", 0.02)
        j = Journal(open_backend(f"mem://{name}"), owner=uuid.uuid4().hex, **kw)
        made.append(j)
        j.open()
        return j

    yield make
    for j in made:
        j.close()


def submitted(w: str) -> Record:
    return from_wire({"k": "submitted", "w": w, "type": "tests:T", "fields": {"x": w}, "t": 1.0})


def outcome(w: str, step: int, value: Any) -> Record:
    return from_wire({"k": "outcome", "w": w, "step": step, "service": "svc", "value": value})


def faults(j: Journal) -> Faults:
    assert isinstance(j.backend, MemoryBackend)
    return j.backend.faults


def stored(name: str) -> list[tuple[str, Any]]:
    """(kind, workflow id) of every record a fresh journal reads back, epochs aside."""
    j = Journal(open_backend(f"mem://{name}"), owner="reader")
    j.open()
    try:
        return [(r["k"], r.get("w")) for r in j.read() if r["k"] != "epoch"]
    finally:
        j.close()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


# --- the Faults API ----------------------------------------------------------------------------


def test_faults_arm_count_down_and_are_shared_by_store_name(name: str) -> None:
    a, b = MemoryBackend(name), MemoryBackend(name)
    assert a.faults is b.faults and MemoryBackend(name + "-other").faults is not a.faults
    a.faults.arm("read", times=2)
    with pytest.raises(OSError, match="injected fault: read") as info:
        b.faults.check("read")
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError):
        a.faults.check("read")
    a.faults.check("read")  # spent
    assert a.faults.fired == {"read": 2}
    a.faults.arm("seal", error=RuntimeError("custom"))
    a.faults.arm("sync")
    a.faults.disarm("seal")
    a.faults.check("seal")
    a.faults.disarm()
    a.faults.check("sync")
    with pytest.raises(ValueError, match="unknown fault point"):
        a.faults.arm("nope")
    MemoryBackend.drop(name)
    assert MemoryBackend(name).faults.fired == {}
    MemoryBackend.drop(name + "-other")


def test_every_fault_point_is_checked_by_the_memory_backend(name: str) -> None:
    backend = MemoryBackend(name)
    calls: dict[str, Callable[[], object]] = {
        "lock": lambda: backend.lock("o"), "segments": backend.segments,
        "open_active": lambda: backend.open_active(0), "read": lambda: backend.read(backend.segments()[0]),
        "truncate": lambda: backend.truncate(backend.segments()[0], 0), "seal": lambda: backend.seal(0),
        "delete": lambda: backend.delete(backend.segments()[0]), "put_snapshot": lambda: backend.put_snapshot("s", b""),
        "get_snapshot": lambda: backend.get_snapshot("s"), "snapshots": backend.snapshots,
        "delete_snapshot": lambda: backend.delete_snapshot("s"),
    }
    seg = backend.open_active(0)
    segment_calls: dict[str, Callable[[], object]] = {"append": lambda: seg.append(b"x"), "sync": seg.sync,
                                                      "flush": seg.flush}
    assert set(calls) | set(segment_calls) == FAULT_OPS
    for op, call in {**segment_calls, **calls}.items():
        backend.faults.arm(op)
        with pytest.raises(OSError, match=f"injected fault: {op}"):
            call()
        call()  # disarmed after one
    assert backend.faults.fired == dict.fromkeys(FAULT_OPS, 1)


# --- failed writes ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["append", "sync"])
async def test_a_failed_write_fails_pending_appends_and_the_next_append_repairs(
    name: str, opened: Callable[..., Journal], op: str
) -> None:
    j = opened()
    await j.append([submitted("a")])
    seq = j.next_seq
    faults(j).arm(op)
    first, second = await asyncio.gather(j.append([submitted("b"), outcome("a", 0, "lost")]),
                                         j.append([outcome("a", 1, "lost too")]), return_exceptions=True)
    assert isinstance(first, JournalUnavailable) and isinstance(second, JournalUnavailable)
    assert "injected fault" in str(first)
    assert j.next_seq == seq  # rolled back: no hole in the sequence
    # Nothing of the failed batches is known: the same step takes a new value.
    assert await j.append([submitted("b"), outcome("a", 0, "kept")]) == [None, "kept"]
    assert [r.get("value") for r in j.read() if r["k"] == "outcome"] == ["kept"]
    j.close()
    assert stored(name) == [("submitted", "a"), ("submitted", "b"), ("outcome", "a")]


async def test_appends_work_again_once_the_storage_is_back(name: str, opened: Callable[..., Journal]) -> None:
    j = opened()
    faults(j).arm("sync", times=3)
    for i in range(3):
        with pytest.raises(JournalUnavailable):
            await j.append([submitted(f"down-{i}")])
    assert await j.append([submitted("up")]) == [None]
    faults(j).arm("open_active")  # the repair itself fails once: the append after it repairs
    faults(j).arm("append")
    with pytest.raises(JournalUnavailable):
        await j.append([submitted("down-again")])
    with pytest.raises(JournalUnavailable):
        await j.append([submitted("down-repair")])
    assert await j.append([submitted("up-again")]) == [None]
    j.close()
    assert stored(name) == [("submitted", "up"), ("submitted", "up-again")]


async def test_fenced_storage_fails_pending_and_later_appends_and_is_never_retried(
    opened: Callable[..., Journal]
) -> None:
    j = opened(snapshot_records=1)
    faults(j).arm("sync", error=Fenced("storage taken over by another coordinator"))
    with pytest.raises(Fenced, match="taken over"):
        await j.append([submitted("a")])
    with pytest.raises(Fenced):
        await j.append([submitted("b")])
    with pytest.raises(Fenced):
        await j.snapshot()
    assert faults(j).fired == {"sync": 1}


async def test_fenced_in_background_work_fences_the_journal(opened: Callable[..., Journal]) -> None:
    j = opened(segment_bytes=1)
    faults(j).arm("seal", error=Fenced("lease lost"))
    await j.append([submitted("a")])  # acknowledged: durable before the seal was tried
    await wait_for(lambda: faults(j).fired["seal"] == 1)
    with pytest.raises(Fenced, match="lease lost"):
        await j.append([submitted("b")])


async def test_a_dead_flusher_fails_pending_appends_and_the_next_append_restarts_it(
    opened: Callable[..., Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = opened()
    real = j._flush
    calls = 0

    async def dying(batch: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the flusher")
        await real(batch)

    monkeypatch.setattr(j, "_flush", dying)
    with pytest.raises(JournalUnavailable, match="flusher died"):
        await asyncio.wait_for(j.append([submitted("a")]), 5)
    assert await asyncio.wait_for(j.append([submitted("a")]), 5) == [None]
    assert [r["w"] for r in j.read() if r["k"] == "submitted"] == ["a"]


# --- background work: sealing and snapshots ---------------------------------------------------


async def test_a_failed_seal_never_fails_appends_and_is_retried(name: str, opened: Callable[..., Journal]) -> None:
    j = opened(segment_bytes=150)
    faults(j).arm("seal", times=3)
    for i in range(8):
        assert await j.append([submitted(f"w{i}"), outcome(f"w{i}", 0, "v" * 40)]) == [None, "v" * 40]
    await wait_for(lambda: not j.log.pending and faults(j).fired["seal"] == 3)
    refs = j.backend.segments()
    assert all(r.sealed for r in refs[:-1]) and not refs[-1].sealed
    everything = j.read()
    assert [r["q"] for r in everything] == list(range(len(everything)))
    j.close()
    assert len(stored(name)) == 16


async def test_a_failed_idle_seal_is_retried(opened: Callable[..., Journal]) -> None:
    j = opened(seal_idle_s=0.01)
    faults(j).arm("seal", times=2)
    await j.append([submitted("a")])
    await wait_for(lambda: any(r.sealed for r in j.backend.segments()))
    assert faults(j).fired["seal"] == 2
    assert await j.append([submitted("b")]) == [None]


@pytest.mark.parametrize("error", [None, ClientError({"Error": {"Code": "SlowDown"}}, "PutObject")],
                         ids=["oserror", "botocore"])
async def test_a_failed_snapshot_costs_nothing_but_is_retried(name: str, opened: Callable[..., Journal],
                                                              error: BaseException | None) -> None:
    j = opened(snapshot_records=4)
    faults(j).arm("put_snapshot", times=2, error=error)
    for i in range(6):
        await j.append([submitted(f"w{i}")])
    await wait_for(lambda: bool(j.backend.snapshots()))
    assert faults(j).fired["put_snapshot"] == 2
    faults(j).arm("put_snapshot", error=error)
    with pytest.raises(type(error) if error is not None else OSError):
        await j.snapshot()  # an explicit snapshot reports its failure
    assert await j.snapshot() >= 6
    assert sorted(j.table.workflows) == [f"w{i}" for i in range(6)]


async def test_an_injected_executor_is_used_and_not_shut_down(name: str, opened: Callable[..., Journal]) -> None:
    pool = Inline()
    j = opened(executor=pool, segment_bytes=100)
    for i in range(4):
        await j.append([submitted(f"w{i}")])
    await j.snapshot()
    assert pool.calls >= 5
    j.close()
    assert not pool.shut
    again = Journal(open_backend(f"mem://{name}"), owner="reader", executor=pool)
    again.open()
    assert list(again.table.workflows) == [f"w{i}" for i in range(4)]  # from the snapshot
    again.close()


# --- what the writer refuses -------------------------------------------------------------------


async def test_a_record_over_the_limit_is_refused_and_leaves_nothing_behind(
    name: str, opened: Callable[..., Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = opened()
    await j.append([submitted("a")])
    seq = j.next_seq
    monkeypatch.setattr(codec, "MAX_RECORD_BYTES", 1024)
    with pytest.raises(codec.RecordTooLarge, match="over the limit of 1024 bytes"):
        await j.append([submitted("b"), outcome("a", 0, "x" * 2000)])
    assert j.next_seq == seq and j.live_steps(["a", "b"]) == {"a": ([], [])}
    assert await j.append([submitted("b"), outcome("a", 0, "small")]) == [None, "small"]
    j.close()
    assert stored(name) == [("submitted", "a"), ("submitted", "b"), ("outcome", "a")]


# --- a duplicate submitted record's answer -------------------------------------------------------


async def test_a_duplicate_submitted_is_answered_with_what_the_journal_holds(opened: Callable[..., Journal]) -> None:
    j = opened()
    assert await j.append([submitted("a")]) == [None]
    await j.append([outcome("a", 0, "o0")])
    (answer,) = await j.append([Submitted("a", "tests:T", {"x": "other"}, 1.0)])
    assert isinstance(answer, Known) and answer.type == "tests:T" and answer.fields == {"x": "a"}
    assert answer.workflow == j.table.workflows["a"].to_dict()
    assert answer.workflow["outcomes"] == [[0, "svc", "o0"]]
    # Not durable yet: the same batch's record answers, without a fold.
    assert await j.append([submitted("b"), submitted("b")]) == [None, Known("tests:T", {"x": "b"}, None)]
    await j.append([Completed("a", 1, 2.0)])
    (finished,) = await j.append([submitted("a")])
    assert finished.workflow["state"] == "completed" and finished.workflow["result"] == 1
