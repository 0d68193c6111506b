"""`Batcher`: many callers, one remote call per event-loop turn.

Each hop between actors costs about a millisecond of CPU, so the CommandActor's
journal appends and reports, and the supervisor's scheduling records, go through a
batcher: items submitted while a call is in flight ride together in the next one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items and sends them in batches, at most ``max_in_flight`` calls at once.

    ``send(items)`` returns one answer per item; `submit` returns its items' answers.
    If a send fails, every caller in that batch gets its exception. With one call in
    flight, batches leave in submission order.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[Any]]], max_batch: int = 5000,
                 max_in_flight: int = 1) -> None:
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._pending: deque[tuple[list[T], asyncio.Future[list[Any]]]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sends: dict[asyncio.Task[None], None] = {}  # insertion-ordered: a close cancels in a fixed order

    async def submit(self, items: list[T]) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((items, future))
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        assert self._wake is not None
        self._wake.set()
        return await future

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[Any]]]]:
        taken: list[tuple[list[T], asyncio.Future[list[Any]]]] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0][0]) <= self._max_batch):
            entry = self._pending.popleft()
            taken.append(entry)
            size += len(entry[0])
        return taken

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending or self._in_flight >= self._max_in_flight:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._deliver(self._take()))
            self._sends[task] = None
            task.add_done_callback(lambda t: self._sends.pop(t, None))

    async def _deliver(self, taken: list[tuple[list[T], asyncio.Future[list[Any]]]]) -> None:
        items = [item for entry, _ in taken for item in entry]
        try:
            answers = await self._send(items)
        except Exception as exc:  # the one catch-all: the batch's callers get the error
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._in_flight -= 1
            assert self._wake is not None
            self._wake.set()
        start = 0
        for entry, future in taken:
            if not future.done():
                future.set_result(answers[start : start + len(entry)])
            start += len(entry)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._sends):
            task.cancel()
