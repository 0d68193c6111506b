"""Intake reopens once the parked backlog drained, even when the mode change that
reopens it could not be journaled at first (no later report may come to retry it)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.inprocess import LocalCoordinator
from actors.records import ModeChanged, Record
from tests.unit.local import opts
from workflows.errors import JournalUnavailable
from workflows.testing import Flaky


async def test_intake_reopens_after_the_drained_mode_change_failed_once() -> None:
    c = LocalCoordinator(opts())
    await c.start()
    journal = c.core.parking.journal
    real = journal.append
    refused: list[list[Record]] = []

    async def append(records: list[Record]) -> list[Any]:
        if not refused and any(isinstance(r, ModeChanged) and r.mode == "normal" for r in records):
            refused.append(records)
            raise JournalUnavailable("a storage hiccup")
        return await real(records)

    journal.append = append  # type: ignore[method-assign]
    try:
        wid = await c.core.submit(Flaky(failures=1, kind="blocked"))
        assert (await c.core.result(wid, 5))["attempts"] == 2
        for _ in range(200):
            if c.core.mode.value == "normal":
                break
            await asyncio.sleep(0.01)
        assert refused and c.core.mode.value == "normal" and c.core.stats()["parked"] == 0
        assert [r["mode"] for r in c.journal.read() if r["k"] == "mode"][-1] == "normal"
    finally:
        await c.close()


async def test_concurrent_mode_signals_take_effect_in_journal_order() -> None:
    """A suspend and a resume in flight together: the mode in memory is the last one journaled
    (the suspend is journaled first but its answer comes back last, as two concurrent
    appends may: without one signal at a time the suspend would be applied last while
    the journal's last word is the resume, and a restart would come back in another mode)."""
    c = LocalCoordinator(opts())
    await c.start()
    journal = c.core.parking.journal
    real = journal.append

    async def append(records: list[Record]) -> list[Any]:
        answer = await real(records)
        if any(isinstance(r, ModeChanged) and r.held for r in records):
            await asyncio.sleep(0.05)  # the suspend's answer is slow
        return answer

    journal.append = append  # type: ignore[method-assign]
    try:
        suspend = asyncio.ensure_future(c.core.suspend())
        await asyncio.sleep(0)
        await c.core.resume()
        await suspend
        last = [r for r in c.journal.read() if r["k"] == "mode"][-1]
        assert (c.core.mode.value, c.core.held) == (last["mode"], last["held"])
    finally:
        await c.close()
