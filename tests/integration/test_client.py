"""The batching Client: per-workflow calls, batched on the wire, each caller its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cluster.client import Client
from tests.support import Coordinator
from workflows.errors import CommandFailed, InvalidCommand, UnknownWorkflow
from workflows.testing import Echo, Fails, Flaky

pytestmark = pytest.mark.ray


def test_client_batches_and_answers_each_caller(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(slots_per_actor=32, command_actors=1, max_cmds=500)

    async def main() -> None:
        client = Client(c.sup)
        results = await asyncio.gather(*[client.execute(Echo(i)) for i in range(200)])
        assert results == list(range(200))
        mixed = await asyncio.gather(client.execute(Echo("ok")), client.submit(Echo(object())),
                                     client.execute(Fails(steps=1)), client.execute(Flaky(failures=1)),
                                     client.result("no-such-workflow"), return_exceptions=True)
        assert mixed[0] == "ok"
        assert isinstance(mixed[1], InvalidCommand)
        assert isinstance(mixed[2], CommandFailed) and "rejected" in str(mixed[2])
        assert mixed[3]["attempts"] == 2
        assert isinstance(mixed[4], UnknownWorkflow)
        same = await client.submit(Echo(5), "fixed-id")
        assert await asyncio.gather(client.result(same), client.result(same)) == [5, 5]
        client.close()

    asyncio.run(main())
