"""The coordinator in one process, without Ray: the same core, journal and runner.

`LocalCoordinator` wires `SupervisorCore` to an in-process `Journal` and a pool of
in-process `Runner`s. Unit tests drive every semantic through it in milliseconds;
the Ray actors wire the same classes across processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors.batching import Batcher
from actors.journal import Journal, open_backend
from actors.options import Options
from actors.records import Dispatch, Ended, Error, Record, Report, Steps
from actors.runner import Runner, build_gateway
from actors.supervision.supervisor import SupervisorCore
from actors.workflow_state import Workflow
from workflows.context import Outcome
from workflows.errors import WorkerLost


class LocalJournal:
    """`JournalPort` over an in-process `Journal`; step lists are copied as Ray would (records are frozen)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def append(self, records: list[Record]) -> list[Any]:
        return await self.journal.append(list(records))

    async def state(self, offset: int, limit: int) -> dict[str, Any]:
        return self.journal.state(offset, limit)

    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Steps | Ended]:
        return {w: e if isinstance(e, Ended) else (list(e[0]), list(e[1]))
                for w, e in self.journal.live_steps(workflow_ids).items()}

    async def steps_of(self, workflow_ids: list[str]) -> dict[str, list[Outcome]]:
        return self.journal.steps_of(workflow_ids)

    async def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]:
        return self.journal.outcomes(service, since_seq, limit)

    async def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.journal.lookup(workflow_ids)

    def finished_here(self, workflow_id: str) -> Workflow | None:
        return None  # the journal is in this process: `lookup` is as quick

    async def page(self, state: str | None, type_part: str | None, before: int | None,
                   limit: int) -> dict[str, Any]:
        return self.journal.page(state, type_part, before, limit)

    async def finished_counts(self) -> dict[str, int]:
        return self.journal.finished_counts()

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        return self.journal.history(workflow_id)

    async def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        return self.journal.finished_page(state, limit, exclude)


class LocalPool:
    """`PoolPort` over in-process runners. Faults for tests: a worker in ``lost`` fails
    its next batch with `WorkerLost`; `fail` makes its next batch raise any error."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.runners: list[Runner] = []
        self.lost: set[int] = set()
        self.failures: dict[int, list[BaseException]] = {}

    def bind(self, runners: list[Runner]) -> None:
        self.runners = runners

    def fail(self, worker: int, error: BaseException) -> None:
        """Make the next batch sent to ``worker`` raise ``error`` without running."""
        self.failures.setdefault(worker, []).append(error)

    async def run(self, worker: int, items: list[Dispatch]) -> None:
        if worker in self.lost:
            self.lost.discard(worker)
            raise WorkerLost(f"worker {worker} lost")
        if self.failures.get(worker):
            raise self.failures[worker].pop(0)
        await self.runners[worker].run(items)

    async def reset(self, incarnation: str) -> None:
        for runner in self.runners:
            runner.cancel_all()

    async def stop(self, worker: int, items: list[tuple[str, str, Error]]) -> None:
        self.runners[worker].stop(items)


class LocalCoordinator:
    """A whole coordinator in this process and event loop; call `start`, then use `core`."""

    def __init__(self, options: Options, gateway: Any = None, clock: Callable[[], float] = time.time) -> None:
        """``clock`` is the supervisor's and the journal's (retention, retry times)."""
        self.options = options
        self.journal = Journal(open_backend(options.storage), fsync=options.fsync,
                               segment_bytes=options.segment_bytes, owner=f"{options.namespace}/local",
                               snapshot_records=options.snapshot_records, retention_s=options.retention_s,
                               seal_idle_s=options.seal_idle_s, clock=clock, cache_size=options.result_cache_size)
        actors = options.command_actors or 1  # None: one per node, and here is one node
        self.pool = LocalPool(actors)
        self.core = SupervisorCore(options, LocalJournal(self.journal), self.pool, clock=clock)
        gateway = gateway if gateway is not None else build_gateway(options)
        port = LocalJournal(self.journal)
        self._batchers: list[Batcher[Record]] = []
        runners = []
        for _ in range(actors):
            batcher: Batcher[Record] = Batcher(port.append)
            self._batchers.append(batcher)
            runners.append(Runner(batcher.submit, port.live_steps, self._report, gateway, options.max_payload_bytes))
        self.pool.bind(runners)

    async def _report(self, report: Report) -> None:
        await self.core.report([report])

    async def start(self) -> SupervisorCore:
        self.journal.open()
        await self.core.start()
        return self.core

    async def close(self) -> None:
        self.core.close()
        await self.pool.reset("")
        for batcher in self._batchers:
            batcher.close()
        await self.journal.drain()
        self.journal.close()
