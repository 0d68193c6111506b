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
