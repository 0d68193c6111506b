"""The append channel against a real leader LogActor: used, and left and found again across its restart."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable
from typing import Any

import pytest
import ray

from actors import channel as ch
from actors.channel import Channel
from actors.log import append_within
from actors.records import Submitted
from tests.support import Coordinator, wait_for
from workflows.testing import Echo

pytestmark = pytest.mark.ray


def _submitted(wid: str) -> Submitted:
    return Submitted(wid, "workflows.testing:Echo", {"value": wid}, time.time())


def test_the_writers_appends_travel_on_the_channel_and_outlive_the_leaders_restart(
        coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(10)]))
    assert ray.get([c.sup.result.remote(w, 30) for w in ids]) == list(range(10))
    log = ray.get_actor("log-0", namespace=c.options.namespace)
    info = ray.get(log.info.remote())
    assert info["appends"] > 0 and info["channel_appends"] == info["appends"]  # none as a Ray call
    assert ray.get(c.sup.channel.remote())["served"] > 0  # the CommandActor's reports

    async def driver() -> tuple[int, int, dict[str, Any]]:
        channel = Channel(log)
        await append_within(log, [_submitted("direct-1")], 30, channel)
        sent_before = channel.sent
        ray.kill(log, no_restart=False)  # Ray restarts it: a new process, port and token
        await append_within(log, [_submitted("direct-2")], 60, channel)  # sent again as a Ray call
        await asyncio.sleep(ch.RETRY_S)
        await append_within(log, [_submitted("direct-3")], 30, channel)  # on the new leader's channel
        found: dict[str, Any] = await log.live_steps.remote(["direct-1", "direct-2", "direct-3"])
        channel.close()
        return sent_before, channel.sent, found

    sent_before, sent_after, found = asyncio.run(driver())
    assert (sent_before, sent_after) == (1, 2)
    assert sorted(found) == ["direct-1", "direct-2", "direct-3"]
    more = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(10, 15)]))
    assert ray.get([c.sup.result.remote(w, 60) for w in more]) == list(range(10, 15))
    wait_for(lambda: ray.get(log.info.remote())["channel_appends"] > 0, what="the writers back on the channel")


def test_the_supervisors_channel_takes_only_reports(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    where = ray.get(c.sup.channel.remote())

    async def send(body: bytes) -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(where["host"], where["port"])
        writer.write(where["token"] + ch.REQUEST.pack(len(body), 1) + body)
        size, _, status = ch.ANSWER.unpack(await reader.readexactly(ch.ANSWER.size))
        answer = pickle.loads(await reader.readexactly(size))
        writer.close()
        return status, answer

    status, error = asyncio.run(send(pickle.dumps([{"not": "a report"}])))
    assert status == 1 and isinstance(error, ValueError) and "not a list of reports" in str(error)
    wid = ray.get(c.sup.submit.remote(Echo(1)))
    assert ray.get(c.sup.result.remote(wid, 30)) == 1  # it serves on
