"""Signals to workflows and their events: `Signals` is a part of `SupervisorCore`.

``signal(workflow_id, name, payload)`` journals a ``signal`` record once per (workflow,
name): the first payload wins, a second signal is a no-op (False), as is one to a
finished workflow; an unknown workflow is `UnknownWorkflow`. A workflow waiting for
that name (``ctx.wait_for``) is put on the timer heap at once, so it runs again and its
``wait_for`` step journals the payload. A restart reads the signals back from the
journal's fold: a waiting workflow whose signal is journaled runs again at once.

``get_event(workflow_id, key)``: the last value ``ctx.set_event`` journaled (the runner
tells this process of each once it is durable), or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import structlog

from actors.records import Ended, Signalled
from actors.supervision.parking import Parking
from actors.supervision.ports import JournalPort
from actors.supervision.queries import Queries
from actors.workflow_state import State, WorkflowTable
from workflows.errors import InvalidCommand

log = structlog.get_logger("supervisor")


class Signals:
    """Journals signals and wakes the workflows waiting for them; answers events."""

    def __init__(self, journal: JournalPort, table: WorkflowTable, parking: Parking, queries: Queries,
                 clock: Callable[[], float], max_payload_bytes: int) -> None:
        self.journal = journal
        self.table = table
        self.parking = parking
        self.queries = queries
        self.clock = clock
        self.max_payload = max_payload_bytes

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> bool:
        if not isinstance(name, str) or not name:
            raise InvalidCommand("a signal's name is a non-empty string")
        try:
            payload = msgpack.unpackb(msgpack.packb(payload, use_bin_type=True), raw=False)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCommand(f"signal {name!r} payload cannot be encoded with msgpack ({exc})") from None
        if len(msgpack.packb(payload, use_bin_type=True)) > self.max_payload:
            raise InvalidCommand(f"signal {name!r} payload is over the {self.max_payload}-byte limit")
        wf = self.table.workflows.get(workflow_id)
        if wf is None:
            await self.queries.get(workflow_id)  # UnknownWorkflow, or one finished and out of memory
            return False
        if wf.state.finished or name in wf.signals:
            return False
        wf.signals[name] = payload  # before the await: a concurrent duplicate is a no-op
        try:
            answer = (await self.journal.append([Signalled(workflow_id, name, payload, self.clock())]))[0]
        except BaseException:
            wf.signals.pop(name, None)
            raise
        if isinstance(answer, Ended):
            return False
        log.info("workflow_signalled", workflow_id=workflow_id, name=name, state=wf.state.value)
        if wf.state is State.WAITING and wf.reason == name:
            self.parking.schedule(wf, self.clock())
        return True

    async def get_event(self, workflow_id: str, key: str) -> Any:
        wf = self.table.workflows.get(workflow_id)
        if wf is None:
            wf = await self.queries.get(workflow_id)
        return wf.events.get(key)
