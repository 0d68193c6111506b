"""Admission control: MaxCmds as a counting gate with FIFO back-pressure."""

from __future__ import annotations

import asyncio
from collections import deque

from workflows.errors import AtCapacity


class Admission:
    """Counts admitted, unfinished commands; `acquire` waits for room, FIFO, with a deadline."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def force(self, n: int) -> None:
        """Count ``n`` commands that are admitted already (recovered from the journal)."""
        self.admitted += n

    async def acquire(self, n: int, timeout_s: float) -> None:
        if n > self.limit:
            raise AtCapacity(f"{n} commands in one batch exceed MaxCmds ({self.limit})")
        if not self._waiters and self.admitted + n <= self.limit:
            self.admitted += n
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.CancelledError:
            self._abandon(entry)
            raise
        except TimeoutError:
            if future.done() and not future.cancelled():
                return  # admitted in the same instant the wait ran out
            self._waiters.remove(entry)
            future.cancel()
            self._grant()
            raise AtCapacity(
                f"{self.admitted} unfinished commands at MaxCmds ({self.limit}); none finished "
                f"within admission_timeout_s={timeout_s}"
            ) from None

    def _abandon(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        n, future = entry
        if future.done() and not future.cancelled():
            self.release(n)
        elif entry in self._waiters:
            self._waiters.remove(entry)
            future.cancel()
            self._grant()  # it may have held back smaller requests behind it (FIFO)

    def release(self, n: int = 1) -> None:
        self.admitted -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.admitted + self._waiters[0][0] <= self.limit:
            n, future = self._waiters.popleft()
            if not future.done():
                self.admitted += n
                future.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
