"""The append channel over real sockets: answers, errors, and every way back to Ray calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actors import channel as ch
from actors.channel import Channel, ChannelServer, append, call, unpack_records
from workflows.errors import Fenced


class Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn
        self.calls = 0

    def remote(self, *args: Any) -> Awaitable[Any]:
        self.calls += 1
        return self.fn(*args)


class Leader:
    """Stands for the leader LogActor's handle: ``channel`` and ``append`` as Ray calls."""

    def __init__(self, server: ChannelServer | None) -> None:
        self.server = server

        async def where() -> dict[str, Any] | None:
            return None if self.server is None else self.server.describe()

        async def by_ray(wire: list[dict[str, Any]]) -> list[Any]:
            return [("ray", r["w"]) for r in wire]

        self.channel = Method(where)
        self.append = Method(by_ray)


def records(*ids: str) -> list[dict[str, Any]]:
    return [{"k": "started", "w": w, "attempt": 1, "t": 0.0} for w in ids]


async def serving(serve: Callable[[list[dict[str, Any]]], Awaitable[list[Any]]]) -> ChannelServer:
    async def body(data: bytes) -> list[Any]:
        return await serve(unpack_records(data))

    server = ChannelServer(body)
    await server.start("127.0.0.1")
    return server


async def echo(wire: list[dict[str, Any]]) -> list[Any]:
    return [("channel", r["w"]) for r in wire]


async def _hanging_append() -> tuple[ChannelServer, Leader, Channel, asyncio.Future[list[Any]]]:
    """A leader that takes an append and never answers it; the append, once it arrived."""
    arrived = asyncio.Event()

    async def hung(wire: list[dict[str, Any]]) -> list[Any]:
        arrived.set()
        await asyncio.sleep(3600)
        return []

    server = await serving(hung)
    leader = Leader(server)
    channel = Channel(leader)
    assert await channel.connect()
    pending = asyncio.ensure_future(append(leader, channel, records("a")))
    await arrived.wait()
    return server, leader, channel, pending


def test_appends_travel_on_the_connection_and_answer_each_caller() -> None:
    async def main() -> None:
        async def slow_first(wire: list[dict[str, Any]]) -> list[Any]:
            if wire[0]["w"] == "a":
                await asyncio.sleep(0.05)  # answered after the second: matched by request id
            return await echo(wire)

        server = await serving(slow_first)
        leader = Leader(server)
        channel = Channel(leader)
        assert await channel.connect()
        got = await asyncio.gather(append(leader, channel, records("a")), append(leader, channel, records("b", "c")))
        assert got == [[("channel", "a")], [("channel", "b"), ("channel", "c")]]
        assert leader.append.calls == 0 and channel.sent == 2
        assert leader.channel.calls == 1  # the address is asked once, for every append after it
        channel.close()
        server.close()

    asyncio.run(main())


def test_an_appends_error_reaches_its_caller_with_its_type() -> None:
    async def main() -> None:
        async def fenced(wire: list[dict[str, Any]]) -> list[Any]:
            raise Fenced("another coordinator holds the storage")

        server = await serving(fenced)
        leader = Leader(server)
        channel = Channel(leader)
        assert await channel.connect()
        with pytest.raises(Fenced, match="another coordinator"):
            await append(leader, channel, records("a"))
        assert leader.append.calls == 0  # an answer, not a lost batch: not sent again
        channel.close()
        server.close()

    asyncio.run(main())


def test_a_wrong_token_is_refused_and_the_batch_goes_as_a_ray_call() -> None:
    async def main() -> None:
        server = await serving(echo)
        leader = Leader(server)
        real = server.describe()

        async def forged() -> dict[str, Any]:
            return dict(real, token=b"x" * ch.TOKEN_BYTES)

        leader.channel = Method(forged)
        channel = Channel(leader)
        await channel.connect()
        assert await append(leader, channel, records("a")) == [("ray", "a")]
        assert leader.append.calls == 1 and channel.sent == 0
        channel.close()
        server.close()

    asyncio.run(main())


def test_a_leader_that_ends_mid_append_has_the_batch_sent_again_as_a_ray_call() -> None:
    async def main() -> None:
        server, leader, channel, pending = await _hanging_append()
        server.close()  # the leader's process ends: its connections close
        assert await asyncio.wait_for(pending, 5) == [("ray", "a")]
        assert leader.append.calls == 1
        channel.close()

    asyncio.run(main())


def test_an_unanswered_append_asks_ray_and_leaves_a_restarted_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader whose node died without closing the connection: Ray knows a new one."""
    monkeypatch.setattr(ch, "CHECK_S", 0.05)

    async def main() -> None:
        old, leader, channel, pending = await _hanging_append()
        await asyncio.sleep(0.2)
        assert not pending.done()  # the same leader, slow: waited for
        leader.server = await serving(echo)  # restarted: another token
        assert await asyncio.wait_for(pending, 5) == [("ray", "a")]
        channel._retry_at = 0.0  # past the pause: a connection to the new leader
        assert await channel.connect()
        assert await append(leader, channel, records("b")) == [("channel", "b")]
        channel.close()
        old.close()
        leader.server.close()

    asyncio.run(main())


def test_without_a_channel_appends_go_as_ray_calls_and_it_is_tried_again_later() -> None:
    async def main() -> None:
        now = [0.0]
        leader = Leader(None)
        channel = Channel(leader, clock=lambda: now[0])
        assert await append(leader, channel, records("a")) == [("ray", "a")]  # and a connection is tried
        assert not await channel.connect()
        assert await append(leader, channel, records("b")) == [("ray", "b")]
        assert leader.channel.calls == 1  # not asked again before RETRY_S
        now[0] += ch.RETRY_S
        assert not await channel.connect()  # failed again: the pause doubles
        now[0] += ch.RETRY_S
        assert await append(leader, channel, records("c")) == [("ray", "c")] and leader.channel.calls == 2
        leader.server = await serving(echo)
        now[0] += ch.RETRY_S
        assert await channel.connect()
        assert await append(leader, channel, records("d")) == [("channel", "d")]
        channel.close()
        leader.server.close()

    asyncio.run(main())


def test_a_batch_too_large_for_one_frame_goes_as_a_ray_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ch, "LARGE_BATCH_BYTES", 100)

    async def main() -> None:
        server = await serving(echo)
        leader = Leader(server)
        channel = Channel(leader)
        assert await channel.connect()
        assert await append(leader, channel, records(*"abcdef")) == [("ray", w) for w in "abcdef"]
        assert await append(leader, channel, records("a")) == [("channel", "a")]
        channel.close()
        server.close()

    asyncio.run(main())


def test_a_request_that_is_not_a_batch_of_records_is_a_value_error() -> None:
    async def main() -> None:
        server = await serving(echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.describe()["port"])
        writer.write(server.token)
        body = b"\x01"  # msgpack 1: not a list
        writer.write(ch.REQUEST.pack(len(body), 7) + body)
        size, rid, status = ch.ANSWER.unpack(await reader.readexactly(ch.ANSWER.size))
        error = __import__("pickle").loads(await reader.readexactly(size))
        assert (rid, status) == (7, 1) and isinstance(error, ValueError)
        writer.close()
        server.close()

    asyncio.run(main())


def test_a_connection_to_a_leader_ray_replaced_is_left_within_the_verify_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The old leader's process lives on (its node cut off) and still answers: the caller
    learns through Ray that another one leads, and leaves it."""
    monkeypatch.setattr(ch, "CHECK_S", 0.05)

    async def main() -> None:
        now = [0.0]
        old = await serving(echo)
        leader = Leader(old)
        channel = Channel(leader, clock=lambda: now[0])
        assert await channel.connect()
        assert await append(leader, channel, records("a")) == [("channel", "a")]
        leader.server = await serving(echo)  # Ray restarted the leader elsewhere
        assert await append(leader, channel, records("b")) == [("channel", "b")]  # not asked yet
        # Asks Ray within the period: the answer tells of another leader, the connection is
        # left (with "c" on it, if not answered yet: then "c" goes as a Ray call).
        assert await append(leader, channel, records("c")) in ([("channel", "c")], [("ray", "c")])
        await asyncio.sleep(3 * ch.CHECK_S)
        assert await append(leader, channel, records("d")) == [("ray", "d")]  # left: Ray calls for a pause
        now[0] += ch.RETRY_S
        assert await channel.connect()
        assert await append(leader, channel, records("e")) == [("channel", "e")]  # the new leader's channel
        assert leader.server.served == 1
        channel.close()
        old.close()
        leader.server.close()

    asyncio.run(main())


def test_a_call_travels_on_the_channel_and_goes_as_a_ray_call_without_it() -> None:
    async def main() -> None:
        got: list[Any] = []

        async def take(body: bytes) -> None:
            method, args = __import__("pickle").loads(body)
            assert method == "report"
            got.extend(*args)

        server = ChannelServer(take)
        await server.start("127.0.0.1")
        supervisor = Leader(server)
        supervisor.report = Method(lambda reports: _record(got, ("ray", reports)))  # type: ignore[attr-defined]
        channel = Channel(supervisor)
        assert await channel.connect()
        await call(supervisor, channel, "report", ["r1", "r2"])
        server.close()
        await asyncio.sleep(0.05)
        await call(supervisor, channel, "report", ["r3"])  # the supervisor went away: as a Ray call
        assert got == ["r1", "r2", ("ray", ["r3"])] and server.served == 1
        channel.close()

    asyncio.run(main())


async def _record(into: list[Any], item: Any) -> None:
    into.append(item)
