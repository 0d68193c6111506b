"""The Batcher: many callers, few calls, answers to the right caller."""

from __future__ import annotations

import asyncio

import pytest

from actors.batching import Batcher


async def test_concurrent_submits_share_calls_and_get_their_own_answers() -> None:
    calls: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    b: Batcher[int] = Batcher(send)
    answers = await asyncio.gather(*[b.submit([i, i + 100]) for i in range(50)])
    assert answers == [[i * 10, (i + 100) * 10] for i in range(50)]
    assert len(calls) <= 3 and sorted(x for c in calls for x in c) == sorted(list(range(50)) + list(range(100, 150)))
    b.close()


async def test_in_flight_limit_and_errors_reach_their_batch_only() -> None:
    active, peak = 0, 0

    async def send(items: list[int]) -> list[int]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        if -1 in items:
            raise RuntimeError("bad batch")
        return items

    b: Batcher[int] = Batcher(send, max_batch=1, max_in_flight=3)
    results = await asyncio.gather(*[b.submit([i]) for i in range(9)], b.submit([-1]), return_exceptions=True)
    assert results[:9] == [[i] for i in range(9)]
    assert isinstance(results[9], RuntimeError)
    assert peak == 3
    assert await b.submit([7]) == [7]
    b.close()


async def test_max_batch_splits_large_queues() -> None:
    sizes: list[int] = []

    async def send(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    b: Batcher[int] = Batcher(send, max_batch=10)
    await asyncio.gather(*[b.submit([i]) for i in range(35)])
    assert max(sizes) <= 10 and sum(sizes) == 35
    b.close()


@pytest.mark.parametrize("n", [1, 2])
async def test_single_caller_round_trips(n: int) -> None:
    async def send(items: list[str]) -> list[str]:
        return [s.upper() for s in items]

    b: Batcher[str] = Batcher(send, max_in_flight=n)
    assert await b.submit(["a", "b"]) == ["A", "B"]
    b.close()
