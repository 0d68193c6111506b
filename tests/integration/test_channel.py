"""The append channel against a real leader LogActor: used, and left and found again across its restart."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from actors import channel as ch
from actors.channel import Channel
from actors.log import append_within
from actors.records import Submitted
from cluster.client import Client
from tests.support import Coordinator, wait_for
from workflows.testing import Echo, Tracked, read_calls

pytestmark = pytest.mark.ray


def _submitted(wid: str) -> Submitted:
    return Submitted(wid, "workflows.testing:Echo", {"value": wid}, time.time())


def test_the_writers_appends_travel_on_the_channel_and_outlive_the_leaders_restart(
        coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(10)]))
    assert ray.get([c.sup.result.remote(w, 30) for w in ids]) == list(range(10))
    log = ray.get_actor("log-0", namespace=c.options.namespace)
    before = ray.get(log.info.remote())  # a writer's first appends went as Ray calls while it connected
    ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(10)]))
    assert ray.get([c.sup.result.remote(w, 30) for w in ids]) == list(range(10))
    info = ray.get(log.info.remote())
    assert info["appends"] > before["appends"]
    assert info["channel_appends"] - before["channel_appends"] == info["appends"] - before["appends"]  # all
    assert ray.get(c.sup.channel.remote())["served"] > 0  # the CommandActor's reports
    assert sum(ray.get(h.channel.remote())["served"] for h in c.actors()["command"]) > 0  # dispatch batches

    async def driver() -> tuple[int, int, dict[str, Any]]:
        channel = Channel(log)
        assert await channel.connect()
        await append_within(log, [_submitted("direct-1")], 30, channel)
        sent_before = channel.sent
        pid = (await log.info.remote())["pid"]
        ray.kill(log, no_restart=False)  # Ray restarts it: a new process, port and token
        while psutil.pid_exists(pid):  # until it ends, the old process still answers on its connections
            await asyncio.sleep(0.05)
        await append_within(log, [_submitted("direct-2")], 60, channel)  # sent again as a Ray call
        deadline = time.monotonic() + 10 * ch.RETRY_S
        while not await channel.connect() and time.monotonic() < deadline:  # past the pause after the loss
            await asyncio.sleep(0.1)
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


def test_the_supervisors_channel_takes_only_its_hot_calls(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    where = ray.get(c.sup.channel.remote())

    async def send(body: bytes) -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(where["host"], where["port"])
        writer.write(where["token"] + ch.REQUEST.pack(len(body), 1) + body)
        size, _, status = ch.ANSWER.unpack(await reader.readexactly(ch.ANSWER.size))
        answer = pickle.loads(await reader.readexactly(size))
        writer.close()
        return status, answer

    status, error = asyncio.run(send(pickle.dumps([{"not": "a call"}])))
    assert status == 1 and isinstance(error, ValueError) and "not a call of report, submit_many, wait" in str(error)
    status, error = asyncio.run(send(pickle.dumps(("stop", ()))))  # not one the channel carries
    assert status == 1 and isinstance(error, ValueError)
    status, error = asyncio.run(send(pickle.dumps(("report", ([{"not": "a report"}],)))))
    assert status == 1 and isinstance(error, ValueError) and "not a list of reports" in str(error)
    wid = ray.get(c.sup.submit.remote(Echo(1)))
    assert ray.get(c.sup.result.remote(wid, 30)) == 1  # it serves on


def test_a_commandactor_killed_mid_batch_has_its_attempts_run_again(coordinator: Callable[..., Coordinator],
                                                                     tmp_path: Path) -> None:
    """The batch was on the actor's channel when its process ended: sent again, as Ray
    calls are, and every workflow ends once, its journaled steps not called again."""
    c = coordinator()
    warm = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(4)]))  # the channels connect meanwhile
    ray.get([c.sup.result.remote(w, 30) for w in warm])
    calls = str(tmp_path / "calls")
    os.makedirs(calls)
    ids = ray.get(c.sup.submit_many.remote([Tracked(calls, steps=3, sleep_s=0.3) for _ in range(8)]))
    wait_for(lambda: len(read_calls(calls)) >= 8, what="first steps running")
    served = sum(ray.get(h.channel.remote())["served"] for h in c.actors()["command"])
    for handle in c.actors()["command"]:
        ray.kill(handle, no_restart=False)
    results = ray.get([c.sup.result.remote(w, 120) for w in ids])
    assert served > 0
    assert results == [[f"{w}/{i}:{i}" for i in range(3)] for w in ids]
    keys = read_calls(calls)
    assert sorted(set(keys)) == sorted(f"{w}/{i}" for w in ids for i in range(3))  # none missing


def test_the_clients_submits_and_waits_travel_on_the_supervisors_channel(
        coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()

    async def driver() -> tuple[list[Any], list[Any]]:
        client = Client(c.sup)
        try:
            first = await asyncio.gather(*[client.execute(Echo(i)) for i in range(10)])  # it connects meanwhile
            served = ray.get(c.sup.channel.remote())["served"]
            second = await asyncio.gather(*[client.execute(Echo(i)) for i in range(10, 20)])
            assert ray.get(c.sup.channel.remote())["served"] >= served + 2  # a submit_many and a wait, at least
            return first, second
        finally:
            client.close()

    first, second = asyncio.run(driver())
    assert first + second == list(range(20))
    assert len(ray.get(c.sup.list.remote("completed", 100))) == 20  # each once: ids were given before sending
