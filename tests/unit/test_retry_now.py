"""`retry_now`: a delayed or blocked workflow runs at once instead of at its retry time;
journaled, so a restart keeps it; a no-op in any other state."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.inprocess import LocalCoordinator
from tests.unit.local import kinds, opts, wait_state
from workflows.errors import UnknownWorkflow
from workflows.testing import Echo, Flaky, Stalls

LONG = 60.0
"""A retry interval no test waits for: a workflow that finishes ran because of retry_now."""


async def test_a_delayed_workflow_runs_at_once() -> None:
    c = LocalCoordinator(opts(slow_retry_interval_s=LONG))
    await c.start()
    try:
        wid = await c.core.submit(Flaky(failures=1))
        status = await wait_state(c, wid, "delayed")
        assert status["next_retry_at"] > time.time() + LONG / 2
        began = time.monotonic()
        assert await c.core.retry_now(wid) is True
        assert await c.core.result(wid, 5) == {"first_attempt": 1, "attempts": 2}
        assert time.monotonic() - began < 5
        assert kinds(c, wid).count("delayed") == 2  # the attempt's park, and the retry due at once
        assert await c.core.retry_now(wid) is False  # finished: a no-op
    finally:
        await c.close()


async def test_a_blocked_workflow_runs_at_once_and_intake_reopens() -> None:
    c = LocalCoordinator(opts(slow_retry_interval_s=LONG))
    await c.start()
    try:
        wid = await c.core.submit(Flaky(failures=1, kind="blocked"))
        await wait_state(c, wid, "blocked")
        assert c.core.mode.value == "suspended_slow"
        assert await c.core.retry_now(wid) is True
        assert (await c.core.result(wid, 5))["attempts"] == 2
        for _ in range(200):
            if c.core.mode.value == "normal":
                break
            await asyncio.sleep(0.01)
        assert c.core.mode.value == "normal"
        assert kinds(c, wid).count("blocked") == 2
    finally:
        await c.close()


async def test_other_states_are_a_no_op_and_an_unknown_id_raises(coord: LocalCoordinator) -> None:
    done = await coord.core.submit(Echo(1))
    await coord.core.result(done, 5)
    paused = await coord.core.submit(Stalls())
    await wait_state(coord, paused, "paused")
    before = len(coord.journal.read())
    assert await coord.core.retry_now(done) is False
    assert await coord.core.retry_now(paused) is False
    assert (await coord.core.status(paused))["state"] == "paused"
    assert len(coord.journal.read()) == before  # nothing journaled
    with pytest.raises(UnknownWorkflow):
        await coord.core.retry_now("no-such-workflow")


async def test_a_finished_workflow_out_of_memory_is_a_no_op() -> None:
    c = LocalCoordinator(opts(result_cache_size=2))
    await c.start()
    try:
        first = await c.core.submit(Echo(0))
        await c.core.result(first, 5)
        for i in range(4):
            await c.core.result(await c.core.submit(Echo(i + 1)), 5)
        assert first not in c.core.table.workflows
        assert await c.core.retry_now(first) is False
    finally:
        await c.close()


async def test_a_restart_keeps_the_retry_due_at_once() -> None:
    options = opts(slow_retry_interval_s=LONG)
    c = LocalCoordinator(options)
    await c.start()
    wid = await c.core.submit(Flaky(failures=1))
    await wait_state(c, wid, "delayed")
    assert await c.core.retry_now(wid) is True
    await c.close()  # stops the timers before they run it: only the journal knows
    fresh = LocalCoordinator(options)
    await fresh.start()
    try:
        assert (await fresh.core.result(wid, 5))["attempts"] == 2
    finally:
        await fresh.close()


def test_the_cli_sends_retry_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """``coordinator retry-now ID`` calls the supervisor's ``retry_now(ID)`` and prints its answer."""
    ray = pytest.importorskip("ray")
    import cluster
    from cluster.cli import ops
    from cluster.cli.args import parser, settle

    calls: list[str] = []

    class Method:
        def remote(self, workflow_id: str) -> str:
            calls.append(workflow_id)
            return "ref"

    class Handle:
        retry_now = Method()

    monkeypatch.setattr(ops, "connect_ray", lambda *a, **k: None)
    monkeypatch.setattr(cluster, "connect", lambda namespace: Handle())
    monkeypatch.setattr(ray, "get", lambda ref: ref == "ref")
    args = settle(parser().parse_args(["retry-now", "wf-9"]), {}, False)
    answer = ops.operate(args)
    assert calls == ["wf-9"] and answer.data is True
