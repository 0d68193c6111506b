"""SPEC §4.11: memory follows what is live. Finished workflows leave the supervisor's
memory past a bounded cache, and are answered from the journal the same as from memory:
before and after eviction, after a restart, after a snapshot."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import MemoryBackend
from actors.supervision.supervisor import SupervisorCore
from actors.workflow_state import State, Workflow, WorkflowTable
from tests.unit.local import opts
from workflows.errors import CommandFailed, UnknownWorkflow
from workflows.testing import Echo, Fails


def teardown_module() -> None:
    for name in list(MemoryBackend._stores):
        MemoryBackend.drop(name)


def test_the_table_holds_only_the_last_finished() -> None:
    table = WorkflowTable(cache_size=2)
    for i in range(5):
        wf = Workflow(f"w{i}", "T", {}, 0.0, state=State.COMPLETED if i < 4 else State.RUNNING)
        table.put(wf)
    assert sorted(table.workflows) == ["w2", "w3", "w4"]  # the unfinished one is always held


async def answers(core: SupervisorCore, ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for wid in ids:
        try:
            out.append(("value", await core.result(wid, 5)))
        except CommandFailed as exc:
            out.append(("failed", exc.error_type, exc.message))
        status = await core.status(wid)
        # The supervisor stamps finished_at as it learns of the end, the journal holds the
        # terminal record's time: a thousandth apart, the same workflow.
        assert status.pop("finished_at") is not None
        out.append(status)
    out.append(await core.wait(ids, 5))
    out.append(sorted((d["id"], d["state"]) for d in await core.list(limit=1000)))
    return out


@pytest.mark.parametrize("cache", [0, 1, 3])
async def test_answers_from_the_journal_equal_those_from_memory(cache: int) -> None:
    options = opts(result_cache_size=cache)
    big = LocalCoordinator(options.replace(result_cache_size=1000))
    core = await big.start()
    ids = [await core.submit(Echo(f"v{i}"), f"e{i}") for i in range(4)]
    ids.append(await core.submit(Fails(), "bad"))
    for wid in ids:
        with contextlib.suppress(CommandFailed):
            await core.result(wid, 5)
    remembered = await answers(core, ids)
    await big.close()

    small = LocalCoordinator(options)  # a restart, with a small cache
    core = await small.start()
    assert sum(wf.state.finished for wf in core.table.workflows.values()) <= cache
    assert await answers(core, ids) == remembered
    await small.journal.snapshot()
    assert await answers(core, ids) == remembered
    with pytest.raises(UnknownWorkflow):
        await core.result("nobody", 1)
    await small.close()
