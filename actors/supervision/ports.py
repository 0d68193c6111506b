"""The supervisor core's two ports: the journal and the CommandActor pool.

`actors.supervisor` implements them over Ray actors, `actors.inprocess` in-process.
"""

from __future__ import annotations

from typing import Any, Protocol

from actors.records import Dispatch, Ended, Error, Record, Steps
from actors.workflow_state import Workflow
from workflows.context import Outcome


class JournalPort(Protocol):
    async def append(self, records: list[Record]) -> list[Any]:
        """Journal ``records`` durably; per record, what the journal answers: None for
        a kept ``submitted``; for one whose id the journal knows already, `Known`. A
        record of a workflow the journal holds as ended is dropped and answered with
        its terminal record (`Ended`)."""
        ...

    async def state(self, offset: int, limit: int) -> dict[str, Any]: ...
    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Steps | Ended]:
        """Per id the journal holds: ``(outcomes, compensations)`` of an unfinished
        workflow, or the `Ended` of an ended one's durable terminal record. An id whose
        end is not durable yet, or that it does not know, is left out."""
        ...

    async def steps_of(self, workflow_ids: list[str]) -> dict[str, list[Outcome]]:
        """The durable outcomes of each workflow the journal keeps among ``workflow_ids``."""
        ...

    async def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]: ...

    async def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The fold (``Workflow.to_dict``, outcomes included) of each finished workflow
        the journal keeps among ``workflow_ids``, read from its storage if need be."""
        ...

    def finished_here(self, workflow_id: str) -> Workflow | None:
        """The fold of ``workflow_id``, finished long ago, when it can be read at once
        without asking the journal (its storage is on this host) and equals the one
        `lookup` answers; None otherwise."""
        ...

    async def page(self, state: str | None, type_part: str | None, before: int | None,
                   limit: int) -> dict[str, Any]:
        """Finished workflows the journal keeps, the last to end first, from the cursor
        ``before`` (None: the newest): ``{"items": folds, "next": cursor or None, "scanned": n}``."""
        ...

    async def finished_counts(self) -> dict[str, int]:
        """The finished workflows the journal keeps, by state (``""``: not known yet)."""
        ...

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        """The durable records of ``workflow_id``'s last run, in journal order, as maps."""
        ...

    async def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        """Up to ``limit`` folds of finished workflows the journal keeps (in ``state``),
        the last to finish first, leaving out ``exclude``."""
        ...


class PoolPort(Protocol):
    size: int

    async def run(self, worker: int, items: list[Dispatch]) -> None: ...
    async def reset(self, incarnation: str) -> None: ...
    async def stop(self, worker: int, items: list[tuple[str, str, Error]]) -> None:
        """Cancel or terminate running attempts on ``worker``: ``(id, "cancel" or "terminate", error)``."""
        ...
