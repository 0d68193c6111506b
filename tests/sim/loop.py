"""A deterministic asyncio event loop: virtual time, seeded order of ready callbacks.

`SimLoop` never sleeps and never polls I/O. When no callback is ready it jumps the
clock straight to the next timer. The callbacks ready in one iteration run in an
order drawn from the seed (Trio's and FoundationDB's trick for shaking out
ordering assumptions), so a run is a function of its seed alone.

`run_in_executor` runs the function on the loop itself, never on a thread: either
at once or after a seeded virtual latency (a write that takes time while the loop
goes on), so the journal's fsync thread is modelled without its nondeterminism.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import random
from collections.abc import Callable
from typing import Any

EPOCH = 1_700_000_000.0
"""Virtual time starts here: `clock()` looks like wall time to the code under test."""


class Livelock(RuntimeError):
    """Too many callbacks ran without the virtual clock moving."""


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: every task waits on something that never comes."""


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted function at once, on the caller's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting side, as a thread pool would
            future.set_exception(exc)
        return future


class SimLoop(asyncio.BaseEventLoop):
    def __init__(self, rng: random.Random, *, shuffle: bool = True, io_latency_s: float = 0.002,
                 livelock_callbacks: int = 200_000) -> None:
        super().__init__()
        self.rng = rng
        self.shuffle = shuffle
        self.io_latency_s = io_latency_s
        self.livelock_callbacks = livelock_callbacks
        self._now = 0.0
        self._clock_resolution = 1e-9
        self._same_time = 0
        self.callbacks = 0

    # --- time ------------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def clock(self) -> float:
        """Wall-clock-like virtual time, for the `clock=` of the code under test."""
        return EPOCH + self._now

    # --- what BaseEventLoop leaves to a selector loop --------------------------------

    def _process_events(self, event_list: Any) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``func`` on the loop: now, or after a virtual latency (then or now)."""
        future: asyncio.Future[Any] = self.create_future()

        def call() -> None:
            if future.cancelled():
                return
            try:
                future.set_result(func(*args))
            except BaseException as exc:  # handed to the awaiting side, as a thread pool would
                future.set_exception(exc)

        roll = self.rng.random()
        if roll < 0.3:
            call()
        elif roll < 0.65:
            self.call_later(self.rng.uniform(0, self.io_latency_s), call)
        else:
            # The work is done now; the caller hears of it later.
            result: asyncio.Future[Any] = self.create_future()
            try:
                result.set_result(func(*args))
            except BaseException as exc:  # as above
                result.set_exception(exc)

            def deliver() -> None:
                if not future.cancelled():
                    exc = result.exception()
                    if exc is not None:
                        future.set_exception(exc)
                    else:
                        future.set_result(result.result())

            self.call_later(self.rng.uniform(0, self.io_latency_s), deliver)
        return future

    # --- one iteration ---------------------------------------------------------------

    def _run_once(self) -> None:
        while self._scheduled and self._scheduled[0]._cancelled:
            self._timer_cancelled_count -= 1
            heapq.heappop(self._scheduled)._scheduled = False
        if not self._ready and not self._stopping:
            if not self._scheduled:
                raise Stalled(f"nothing ready and no timer at t={self._now:.6f}")
            when = self._scheduled[0]._when
            if when > self._now:
                self._now = when
                self._same_time = 0
        end_time = self._now + self._clock_resolution
        while self._scheduled and self._scheduled[0]._when < end_time:
            handle = heapq.heappop(self._scheduled)
            handle._scheduled = False
            self._ready.append(handle)
        todo = [self._ready.popleft() for _ in range(len(self._ready))]
        if self.shuffle and len(todo) > 1:
            self.rng.shuffle(todo)
        for handle in todo:
            if not handle._cancelled:
                handle._run()
        self.callbacks += len(todo)
        self._same_time += len(todo)
        if self._same_time > self.livelock_callbacks:
            raise Livelock(f"{self._same_time} callbacks ran at t={self._now:.6f} without the clock moving")


def new_loop(seed: int, **kw: Any) -> SimLoop:
    loop = SimLoop(random.Random(f"loop-{seed}"), **kw)
    loop.set_exception_handler(lambda _loop, _ctx: None)  # a dead generation's tasks may end in errors
    return loop
