"""SPEC §4.12-4.13 on the core, in one process: ids and limits, ids the journal still
keeps, concurrent submits of one id, fields normalised through msgpack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from actors import records
from actors.inprocess import LocalCoordinator
from actors.journal import MemoryBackend
from actors.options import Options
from actors.records import Submitted
from tests.unit.local import FAST, opts
from tests.unit.test_journal import gate_sync
from workflows.errors import AtCapacity, InvalidCommand, UnknownWorkflow
from workflows.testing import Echo, Flaky


async def restart(c: LocalCoordinator) -> LocalCoordinator:
    await c.close()
    fresh = LocalCoordinator(c.options)
    await fresh.start()
    return fresh


def submitted(c: LocalCoordinator, wid: str) -> list[dict[str, Any]]:
    return [r for r in c.journal.read() if r["k"] == "submitted" and r["w"] == wid]


def teardown_module() -> None:
    for name in list(MemoryBackend._stores):
        MemoryBackend.drop(name)


# --- ids and limits ------------------------------------------------------------------

BAD_IDS = ["", 7, "a\x00b", "line\nbreak", "tab\t", "zero\u200bwidth", "bidi\u202e", "x/compensate",
           "trip/1/compensate", "é" * 513, "i" * 1025]


@pytest.mark.parametrize("wid", BAD_IDS, ids=range(len(BAD_IDS)))
async def test_a_bad_id_is_invalid_and_journals_nothing(coord: LocalCoordinator, wid: Any) -> None:
    before = coord.journal.next_seq
    with pytest.raises(InvalidCommand, match="workflow id"):
        await coord.core.submit(Echo("x"), wid)
    with pytest.raises(InvalidCommand, match="workflow id"):
        await coord.core.submit_many([Echo("ok"), Echo("x")], ["fine", wid])
    assert coord.journal.next_seq == before


async def test_ids_up_to_the_limit_are_taken(coord: LocalCoordinator) -> None:
    for wid in ("é" * 512, "i" * 1024, "a/compensate/b", "trip/1", "compensate", "日本/旅行"):
        assert await coord.core.result(await coord.core.submit(Echo(wid), wid), 5) == wid


async def test_a_huge_id_is_refused_and_restart_still_works(tmp_path: Path) -> None:
    c = LocalCoordinator(Options(storage=str(tmp_path), **FAST))
    await c.start()
    with pytest.raises(InvalidCommand, match="1024-byte limit"):
        await c.core.submit(Echo("x"), "i" * (65 << 20))
    wid = await c.core.submit(Echo("after"))
    c = await restart(c)
    assert await c.core.result(wid, 5) == "after"
    await c.close()


async def test_a_record_over_the_journal_limit_is_invalid(coord: LocalCoordinator,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = coord.journal.next_seq
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 4096)
    with pytest.raises(InvalidCommand, match="4096-byte limit"):
        await coord.core.submit(Echo("x" * 5000))
    assert coord.journal.next_seq == before
    assert await coord.core.result(await coord.core.submit(Echo("x" * 100)), 5) == "x" * 100


# --- an id stays reserved while the journal keeps it -------------------------------------


async def test_an_id_stays_reserved_while_the_journal_keeps_it_then_is_free() -> None:
    offset = [0.0]
    c = LocalCoordinator(opts(retention_s=3600.0), clock=lambda: time.time() + offset[0])
    await c.start()
    try:
        assert await c.core.result(await c.core.submit(Echo("first"), "trip"), 5) == "first"
        offset[0] += 7200.0
        c.core.table.forget(c.core.clock() - 3600.0)  # the supervisor's cache lets it go first
        assert "trip" not in c.core.table.workflows
        # Kept by the journal: the same command answers the old result, another is refused.
        assert await c.core.submit(Echo("first"), "trip") == "trip"
        assert await c.core.result("trip", 5) == "first"
        assert (await c.core.status("trip"))["state"] == "completed"
        c.core.table.forget(c.core.clock() - 3600.0)
        with pytest.raises(InvalidCommand, match="another command"):
            await c.core.submit(Echo("second"), "trip")
        assert len(submitted(c, "trip")) == 1 and c.core.stats()["in_flight"] == 0
        # Compacted away by the journal: the id is free, and a new run is journaled.
        await c.journal.snapshot()
        assert await c.core.result(await c.core.submit(Echo("second"), "trip"), 5) == "second"
        assert [r["fields"]["value"] for r in submitted(c, "trip")] == ["second"]
        assert [r["value"]["value"] for r in c.journal.read() if r["k"] == "outcome"] == ["second"] * 2
    finally:
        await c.close()


async def test_an_unfinished_workflow_the_journal_keeps_is_scheduled_again() -> None:
    c = LocalCoordinator(opts())
    await c.start()
    try:
        wid = await c.core.submit(Flaky(failures=2))
        await asyncio.sleep(0)
        del c.core.table.workflows[wid]  # a cache that lost it (it never does on its own)
        c.core.admission.release(1)
        assert await c.core.submit(Flaky(failures=2), wid) == wid
        assert (await c.core.result(wid, 5))["attempts"] == 3
        assert c.core.stats()["in_flight"] == 0
    finally:
        await c.close()


# --- concurrent submits of one id ---------------------------------------------------------


async def test_a_concurrent_duplicate_submit_gets_the_first_ones_error() -> None:
    c = LocalCoordinator(opts(max_cmds=1, admission_timeout_s=0.2))
    await c.start()
    try:
        await c.core.submit(Flaky(failures=1000))  # holds the only slot
        first = asyncio.ensure_future(c.core.submit(Echo("x"), "dup"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(c.core.submit(Echo("x"), "dup"))
        answers = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(a) for a in answers] == [AtCapacity, AtCapacity]
        assert submitted(c, "dup") == [] and not c.core.intake.submitting
        with pytest.raises(UnknownWorkflow):
            await c.core.result("dup", 0.01)
    finally:
        await c.close()


async def test_a_concurrent_duplicate_submit_returns_once_it_is_durable() -> None:
    c = LocalCoordinator(opts(max_cmds=1, admission_timeout_s=5))
    await c.start()
    try:
        await c.core.submit(Flaky(failures=2))  # finishes in a few retries, making room
        first = asyncio.ensure_future(c.core.submit(Echo("x"), "dup"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(c.core.submit(Echo("x"), "dup"))
        durable_at_answer: list[bool] = []
        second.add_done_callback(lambda _: durable_at_answer.append(bool(submitted(c, "dup"))))
        assert list(await asyncio.gather(first, second)) == ["dup", "dup"]
        assert durable_at_answer == [True]
        assert await c.core.result("dup", 5) == "x" and len(submitted(c, "dup")) == 1
    finally:
        await c.close()


async def test_a_duplicate_whose_first_submitter_went_away_is_submitted_itself() -> None:
    c = LocalCoordinator(opts(max_cmds=1, admission_timeout_s=5))
    await c.start()
    try:
        await c.core.submit(Flaky(failures=2))
        first = asyncio.ensure_future(c.core.submit(Echo("x"), "dup"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(c.core.submit(Echo("x"), "dup"))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == "dup"
        assert await c.core.result("dup", 5) == "x" and len(submitted(c, "dup")) == 1
    finally:
        await c.close()


# --- fields are what the journal holds ----------------------------------------------------


async def test_fields_run_and_compare_as_the_journal_holds_them(tmp_path: Path) -> None:
    c = LocalCoordinator(Options(storage=str(tmp_path), **FAST))
    await c.start()
    wid = await c.core.submit(Echo((1, (2, 3))), "tuple")
    assert await c.core.result(wid, 5) == [1, [2, 3]]  # the first attempt sees what a retry would
    c = await restart(c)
    # A re-submit after a restart (Ray re-sends one to a restarted supervisor) finds its command.
    assert await c.core.submit(Echo((1, (2, 3))), "tuple") == "tuple"
    assert await c.core.submit_many([Echo((1, [2, 3]))], ["tuple"]) == ["tuple"]
    with pytest.raises(InvalidCommand, match="another command"):
        await c.core.submit(Echo((1, 2)), "tuple")
    assert len(submitted(c, "tuple")) == 1
    await c.close()


async def test_a_submit_whose_record_an_abandoned_append_is_still_journaling_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A submit that timed out waiting for the journal may still be journaled later. A
    second submit of its id, answered "known, not durable yet", must run the workflow
    it was acknowledged for, not return an id the supervisor does not know."""
    c = LocalCoordinator(opts())
    await c.start()
    try:
        entered, release = gate_sync(c.journal, monkeypatch)
        record = Submitted("late", "workflows.testing:Echo", {"value": "late", "steps": 2}, time.time())
        abandoned = asyncio.ensure_future(c.journal.append([record]))  # its caller gave up
        while not entered.is_set():
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(c.core.submit(Echo("late"), "late"))
        await asyncio.sleep(0.05)
        release.set()
        assert await second == "late"
        await abandoned
        assert await c.core.result("late", 5) == "late"
    finally:
        await c.close()
