"""LogActor: one journal replica, a thin Ray shell over `cluster.journal.Journal`.

Owns: the storage lock and the active segment. Survives its death: every
acknowledged record (it was fsynced before the ack). Idempotent: ``append`` of the
same step index or terminal record (a retried call) is answered, not journaled twice.
"""

from __future__ import annotations

from typing import Any, cast

import ray

from cluster import logs
from cluster.journal import Journal, open_backend
from cluster.options import Options
from workflows.errors import Fenced, JournalError


class LogActor:
    def __init__(self, options: Options, replica: int = 0) -> None:
        logs.configure(options.log_level, component="log", replica=str(replica))
        self._fault: JournalError | None = None
        self.journal = Journal(open_backend(options.storage), fsync=options.fsync,
                               segment_bytes=options.segment_bytes, owner=f"{options.namespace}/log-{replica}")
        try:
            self.journal.open()
        except (Fenced, JournalError) as exc:  # kept and raised to every caller: never restart into it
            self._fault = exc

    def _check(self) -> Journal:
        if self._fault is not None:
            raise self._fault
        return self.journal

    async def info(self) -> dict[str, Any]:
        j = self._check()
        return {"epoch": j.epoch, "next_seq": j.next_seq, "storage": j.backend.uri, "torn_bytes": j.torn_bytes}

    async def append(self, records: list[dict[str, Any]]) -> list[Any]:
        return await self._check().append(records)

    async def read(self, from_seq: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        return self._check().read(from_seq, limit)

    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Any]:
        return self._check().live_steps(workflow_ids)

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return self._check().outcomes(service, since_seq, limit)

    def close(self) -> None:
        self.journal.close()


RemoteLogActor: Any = cast(Any, ray.remote)(
    num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000
)(LogActor)
