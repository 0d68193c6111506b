"""The saga on DBOS Transact: ``@DBOS.workflow`` over three ``@DBOS.step`` calls.

DBOS runs on one of two system databases: SQLite (its default; a file in the run's
directory) or PostgreSQL (a database of the bench's private server, `bench.postgres`).
Imported only in the DBOS subprocess (see `bench.local`): DBOS keeps a process-wide
registry of decorated functions, so the workflow and step live at module level and
find the process's services through `SERVICES_OF_PROCESS`, set once at start.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from bench.sagas import HOLD_STEP, SERVICES, Services


class _Holder:
    services: Services | None = None


SERVICES_OF_PROCESS = _Holder()
"""The services of this DBOS process; a workflow step cannot be handed them as an argument."""


@DBOS.step()
async def dbos_call(service: str, key: str, io_ms: int, hold: str) -> dict[str, Any]:
    services = SERVICES_OF_PROCESS.services
    assert services is not None, "bench.dbos_saga.launch was not called"
    return await services.call(service, key, io_ms, hold)


@DBOS.workflow()
async def dbos_saga3(io_ms: int, hold: str) -> list[dict[str, Any]]:
    wid = DBOS.workflow_id
    out = []
    for i, name in enumerate(SERVICES):
        out.append(await dbos_call(name, f"{wid}/{i}", io_ms, hold if i == HOLD_STEP else ""))
    return out


def launch(run_dir: str, keylog: str, database_url: str = "") -> None:
    """Start DBOS on ``database_url`` (default ``run_dir/dbos.sqlite``); recovers its pending workflows."""
    SERVICES_OF_PROCESS.services = Services(keylog)
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": database_url or f"sqlite:///{os.path.join(run_dir, 'dbos.sqlite')}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


def shutdown() -> None:
    DBOS.destroy()


async def run_one(workflow_id: str, io_ms: int) -> list[dict[str, Any]]:
    """Run one saga in this event loop, as a DBOS application calls a workflow."""
    with SetWorkflowID(workflow_id):
        return await dbos_saga3(io_ms, "")


async def start_held(workflow_id: str, hold: str) -> None:
    """Start a saga that will wait at step 1 while ``hold`` exists (for `recovery`)."""
    with SetWorkflowID(workflow_id):
        await DBOS.start_workflow_async(dbos_saga3, 0, hold)


async def wait_all(workflow_ids: list[str], poll_s: float = 0.05) -> dict[str, float]:
    """Poll the system database until every workflow succeeded; return when each was seen done."""
    loop = asyncio.get_running_loop()
    seen: dict[str, float] = {}
    left = list(workflow_ids)
    while left:
        done = await DBOS.list_workflows_async(workflow_ids=left, status="SUCCESS", load_input=False,
                                               load_output=False)
        now = loop.time()
        for status in done:
            seen[status.workflow_id] = now
        left = [w for w in left if w not in seen]
        if left:
            await asyncio.sleep(poll_s)
    return seen


async def results(workflow_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for wid in workflow_ids:
        handle: Any = await DBOS.retrieve_workflow_async(wid)
        out[wid] = await handle.get_result()
    return out
