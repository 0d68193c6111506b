"""`Client`: the driver's side of a coordinator, batching its calls.

A Ray call costs about a millisecond of CPU on each side, so a driver with many
workflows in flight should not pay two calls per workflow. `Client` keeps the
per-workflow API (``submit``, ``result``, ``execute``) and sends what is asked in the
same event-loop turn together: submits as one ``submit_many``, result waits as
``wait`` long-polls that each cover many workflows.

Errors keep their meaning: a batch the supervisor refuses as a whole is sent again
one command at a time, so each caller gets its own answer (`InvalidCommand`,
`Suspended`, `AtCapacity`); ``result`` raises `CommandFailed`, `UnknownWorkflow`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from actors.batching import Batcher
from actors.channel import Channel, call
from workflows.errors import CommandFailed, CoordinatorError

POLL_S = 30.0


class Client:
    """Batches one driver's calls to a SupervisorActor; use from one asyncio loop."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor
        self._channel = Channel(supervisor)
        """The supervisor's channel (`actors.channel`): ``submit_many`` and ``wait`` go on it,
        as Ray calls while it is not up."""
        self._submits: Batcher[tuple[Any, str | None]] = Batcher(self._submit_batch, max_in_flight=2)
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._uncovered: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()

    # --- submit ---------------------------------------------------------------------

    async def submit(self, cmd: Any, workflow_id: str | None = None) -> str:
        """Journal ``cmd`` (with the next ones asked for in this turn); its workflow id."""
        answer = (await self._submits.submit([(cmd, workflow_id)]))[0]
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    async def _submit_batch(self, items: list[tuple[Any, str | None]]) -> list[Any]:
        # An id for each command here: a batch lost with its connection is sent again,
        # and runs once.
        items = [(c, w if w is not None else uuid.uuid4().hex) for c, w in items]
        try:
            ids: list[Any] = await call(self.supervisor, self._channel, "submit_many", [c for c, _ in items],
                                        [w for _, w in items])
            return ids
        except CoordinatorError:
            if len(items) == 1:
                raise
        # Refused as a whole: ask one by one, so each caller gets its own answer.
        return list(await asyncio.gather(*[self.supervisor.submit.remote(c, w) for c, w in items],
                                         return_exceptions=True))

    # --- results ----------------------------------------------------------------------

    async def result(self, workflow_id: str) -> Any:
        """The workflow's result once it finished; `CommandFailed` if it failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        known = workflow_id in self._waiters
        self._waiters.setdefault(workflow_id, []).append(future)
        if not known:
            self._uncovered.add(workflow_id)
            self._kick()
        done = await future
        if done["state"] == "completed":
            return done["result"]
        err = done["error"] or {}
        raise CommandFailed(workflow_id, err.get("type", "unknown"), err.get("message", ""), err.get("traceback", ""))

    async def execute(self, cmd: Any, workflow_id: str | None = None) -> Any:
        """Submit and wait for the result: the whole saga, two batched calls."""
        return await self.result(await self.submit(cmd, workflow_id))

    def _kick(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._poll_loop())
        assert self._wake is not None
        self._wake.set()

    async def _poll_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._uncovered:
                group, self._uncovered = sorted(self._uncovered), set()
                task = asyncio.get_running_loop().create_task(self._poll(group))
                self._polls.add(task)
                task.add_done_callback(self._polls.discard)

    async def _poll(self, group: list[str]) -> None:
        try:
            done: dict[str, dict[str, Any]] = await call(self.supervisor, self._channel, "wait", group, POLL_S)
        except CoordinatorError:
            done = await self._one_by_one(group)
        for wid, outcome in done.items():
            for future in self._waiters.pop(wid, []):
                if not future.done():
                    future.set_result(outcome)
        self._uncovered.update(w for w in group if w in self._waiters)
        assert self._wake is not None
        self._wake.set()

    async def _one_by_one(self, group: list[str]) -> dict[str, dict[str, Any]]:
        """A wait refused as a whole (an unknown id): find which, answer it, keep the rest."""
        answers = await asyncio.gather(*[self.supervisor.status.remote(w) for w in group], return_exceptions=True)
        done: dict[str, dict[str, Any]] = {}
        for wid, answer in zip(group, answers, strict=True):
            if isinstance(answer, BaseException):
                for future in self._waiters.pop(wid, []):
                    if not future.done():
                        future.set_exception(answer)
        return done

    def close(self) -> None:
        self._submits.close()
        self._channel.close()
        for task in [self._loop_task, *self._polls]:
            if task is not None:
                task.cancel()
