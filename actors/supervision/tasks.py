"""Background tasks a part of the supervisor starts, kept until they end, cancelled at close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Tasks:
    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], None] = {}  # insertion-ordered: a close cancels in a fixed order

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[task] = None  # held: the loop keeps only a weak reference
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
