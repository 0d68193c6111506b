"""Options and a coordinator for unit tests: the whole coordinator in this process, on `mem://`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from actors.inprocess import LocalCoordinator
from actors.options import Options

FAST: dict[str, Any] = {"slow_retry_interval_s": 0.05, "fast_retry_interval_s": 0.0, "jitter_s": 0.01, "gateway": None,
                        "command_actors": 2, "slots_per_actor": 1}
"""Short retries, so tests wait milliseconds, not the defaults' tenths of seconds; a pool
of two one-slot workers, so tests see dispatch spread and slots run out."""


def opts(**kw: Any) -> Options:
    """`FAST` options on a fresh in-memory store, with ``kw`` on top."""
    return Options(storage=f"mem://{uuid.uuid4().hex}", **{**FAST, **kw})


async def wait_state(c: LocalCoordinator, wid: str, state: str) -> dict[str, Any]:
    """The status of ``wid`` once it is in ``state`` (polled for about 5 s)."""
    status: dict[str, Any] = {}
    for _ in range(500):
        status = await c.core.status(wid)
        if status["state"] == state:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"{wid} never reached {state}: {status}")


def kinds(c: LocalCoordinator, wid: str) -> list[str]:
    """The kinds of ``wid``'s journaled records, in journal order."""
    return [r["k"] for r in c.journal.read() if r.get("w") == wid]
