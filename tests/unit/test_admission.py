"""MaxCmds as a counting gate: immediate admission, FIFO back-pressure, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from actors.supervision.admission import Admission
from workflows.errors import AtCapacity


async def wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def full(limit: int, admitted: int | None = None) -> Admission:
    gate = Admission(limit)
    await gate.acquire(limit if admitted is None else admitted, 0)
    return gate


async def test_admits_at_once_under_the_limit() -> None:
    gate = Admission(3)
    await asyncio.wait_for(gate.acquire(2, 60), 1)
    await asyncio.wait_for(gate.acquire(1, 60), 1)
    assert (gate.admitted, gate.waiting) == (3, 0)
    gate.force(2)  # recovered commands count too, even over the limit
    assert gate.admitted == 5


async def test_waits_at_the_limit_then_admits_in_fifo_order() -> None:
    gate = await full(2)
    order: list[str] = []

    async def submit(name: str, n: int = 1) -> None:
        await gate.acquire(n, 5)
        order.append(name)

    tasks = [asyncio.ensure_future(submit(name)) for name in "abc"]
    await wait_for(lambda: gate.waiting == 3)
    assert order == [] and gate.admitted == 2
    gate.release(1)
    await wait_for(lambda: order == ["a"])
    assert gate.admitted == 2 and gate.waiting == 2
    gate.release(2)
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"] and gate.admitted == 2 and gate.waiting == 0


async def test_a_small_request_does_not_overtake_a_waiting_large_one() -> None:
    gate = await full(3, 2)
    large = asyncio.ensure_future(gate.acquire(2, 5))
    await wait_for(lambda: gate.waiting == 1)
    small = asyncio.ensure_future(gate.acquire(1, 5))  # would fit, but waits its turn
    await wait_for(lambda: gate.waiting == 2)
    assert gate.admitted == 2
    gate.release(1)
    await asyncio.wait_for(large, 1)
    assert not small.done() and gate.admitted == 3
    gate.release(1)
    await asyncio.wait_for(small, 1)
    assert gate.admitted == 3 and gate.waiting == 0


async def test_at_capacity_after_the_timeout_with_nothing_leaked() -> None:
    gate = await full(1)
    started = time.monotonic()
    with pytest.raises(AtCapacity, match=r"MaxCmds \(1\).*admission_timeout_s=0.05"):
        await gate.acquire(1, 0.05)
    assert time.monotonic() - started >= 0.04
    assert (gate.admitted, gate.waiting) == (1, 0)
    gate.release(1)
    await asyncio.wait_for(gate.acquire(1, 60), 1)  # the room went to a live caller, not the timed-out one
    assert gate.admitted == 1


async def test_a_timed_out_head_lets_the_smaller_ones_behind_it_in() -> None:
    gate = await full(3, 2)
    large = asyncio.ensure_future(gate.acquire(2, 0.05))
    await wait_for(lambda: gate.waiting == 1)
    small = asyncio.ensure_future(gate.acquire(1, 5))
    with pytest.raises(AtCapacity):
        await large
    await asyncio.wait_for(small, 1)
    assert (gate.admitted, gate.waiting) == (3, 0)


async def test_a_batch_larger_than_the_limit_is_refused_at_once() -> None:
    gate = Admission(3)
    with pytest.raises(AtCapacity, match="4 commands in one batch exceed MaxCmds"):
        await asyncio.wait_for(gate.acquire(4, 60), 1)
    assert (gate.admitted, gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaks_nothing() -> None:
    gate = await full(1)
    waiter = asyncio.ensure_future(gate.acquire(1, 60))
    await wait_for(lambda: gate.waiting == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (gate.admitted, gate.waiting) == (1, 0)
    gate.release(1)
    assert gate.admitted == 0


async def test_a_cancelled_head_lets_the_smaller_ones_behind_it_in() -> None:
    gate = await full(3, 2)
    large = asyncio.ensure_future(gate.acquire(2, 60))
    await wait_for(lambda: gate.waiting == 1)
    small = asyncio.ensure_future(gate.acquire(1, 60))
    await wait_for(lambda: gate.waiting == 2)
    large.cancel()
    await asyncio.wait_for(small, 1)  # room for it was there all along
    assert (gate.admitted, gate.waiting) == (3, 0)


async def test_cancelled_in_the_instant_it_was_admitted_leaks_nothing() -> None:
    gate = await full(1)
    waiter = asyncio.ensure_future(gate.acquire(1, 60))
    await wait_for(lambda: gate.waiting == 1)
    gate.release(1)  # grants the waiter's slot...
    waiter.cancel()  # ...and the caller goes away before it resumes
    results = await asyncio.gather(waiter, return_exceptions=True)
    got_in = results[0] is None  # either it was admitted and holds the slot, or it gave the slot back
    assert gate.admitted == (1 if got_in else 0) and gate.waiting == 0
