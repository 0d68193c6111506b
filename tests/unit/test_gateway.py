"""The HTTP gateway against real demo services on 127.0.0.1 (no Ray)."""

from __future__ import annotations

import asyncio
import functools
import pickle
import socket
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from cluster.demo.services import ServiceHost
from workflows.context import Context, Outcome
from workflows.errors import Blocked, CoordinatorError, Delayed
from workflows.examples import BookTrip
from workflows.gateway import BreakerState, HttpGateway, LocalGateway, ServiceRejected, UnknownService

T = TypeVar("T")


class Key:
    """A stand-in for a Context: only ``key()``."""

    def __init__(self, key: str) -> None:
        self.value = key

    def key(self) -> str:
        return self.value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryRecorder:
    """Journals outcomes in a list, as the real recorder would, keeping the first per step."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, int, str, Any]] = []

    async def record(self, workflow_id: str, kind: str, step: int, service: str, value: Any) -> Any:
        self.records.append((workflow_id, kind, step, service, value))
        return value


@pytest.fixture(scope="module")
def host() -> Iterator[ServiceHost]:
    with ServiceHost() as running:
        yield running


@pytest.fixture(autouse=True)
def clean(host: ServiceHost) -> None:
    host.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gateway(host: ServiceHost, clock: FakeClock) -> HttpGateway:
    options = SimpleNamespace(services=host.urls())
    return HttpGateway(options, timeout_s=0.3, breaker_failures=3, breaker_cooldown_s=1.0, clock=clock)


def run(gateway: HttpGateway, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` on a fresh event loop, closing the gateway's session after it."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await gateway.close()

    return asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_call_returns_result_and_sends_the_key(host: ServiceHost, gateway: HttpGateway) -> None:
    result = run(gateway, lambda: gateway.bind(Key("w-1/0")).flights.reserve("t-1"))
    assert result == {"service": "flights", "op": "reserve", "ref": "flights-1", "args": ["t-1"]}
    assert host.state.services["flights"].executed == {"w-1/0"}


def test_same_key_executes_once(host: ServiceHost, gateway: HttpGateway) -> None:
    async def body() -> list[Any]:
        flights = gateway.bind(Key("w-1/0")).flights
        return [await flights.reserve("t-1"), await flights.reserve("t-1"), await flights.reserve("t-1")]

    first, *again = run(gateway, body)
    assert again == [first, first]
    stats = host.stats()["flights"]
    assert (stats["calls"], stats["executions"], stats["replays"], stats["duplicates"]) == (3, 1, 2, 0)


def test_outage_delays_then_blocks_without_calling(host: ServiceHost, gateway: HttpGateway) -> None:
    host.set_faults("hotels", outage=True)
    hotels = gateway.bind(Key("w-1/1")).hotels

    async def body() -> list[type[BaseException]]:
        raised: list[type[BaseException]] = []
        for _ in range(4):
            with pytest.raises((Delayed, Blocked)) as info:
                await hotels.reserve("t-1")
            raised.append(info.type)
        return raised

    assert run(gateway, body) == [Delayed, Delayed, Blocked, Blocked]
    assert host.stats()["hotels"]["calls"] == 3  # the open breaker refused the fourth call itself
    assert gateway.breaker("hotels").state is BreakerState.OPEN


def test_delayed_names_service_op_and_cause(host: ServiceHost, gateway: HttpGateway) -> None:
    host.set_faults("hotels", outage=True)
    with pytest.raises(Delayed, match=r"hotels\.reserve did not answer: HTTP 503: hotels is out"):
        run(gateway, lambda: gateway.bind(Key("w-1/1")).hotels.reserve("t-1"))


def test_half_open_probe_success_closes(host: ServiceHost, gateway: HttpGateway, clock: FakeClock) -> None:
    host.set_faults("hotels", outage=True)
    hotels = gateway.bind(Key("w-1/1")).hotels

    async def body() -> Any:
        for _ in range(3):
            with pytest.raises((Delayed, Blocked)):
                await hotels.reserve("t-1")
        host.set_faults("hotels", outage=False)
        with pytest.raises(Blocked):  # still cooling down
            await hotels.reserve("t-1")
        clock.now += 1.0
        return await hotels.reserve("t-1")

    assert run(gateway, body)["ref"] == "hotels-1"
    assert gateway.breaker("hotels").state is BreakerState.CLOSED
    assert gateway.breaker("hotels").consecutive == 0


def test_half_open_probe_failure_reopens(host: ServiceHost, gateway: HttpGateway, clock: FakeClock) -> None:
    host.set_faults("hotels", outage=True)
    hotels = gateway.bind(Key("w-1/1")).hotels

    async def body() -> None:
        for _ in range(3):
            with pytest.raises((Delayed, Blocked)):
                await hotels.reserve("t-1")
        clock.now += 1.0
        with pytest.raises(Blocked, match="opened"):  # the probe went out and failed
            await hotels.reserve("t-1")
        with pytest.raises(Blocked, match="is open"):  # a new cooldown began
            await hotels.reserve("t-1")

    run(gateway, body)
    assert host.stats()["hotels"]["calls"] == 4


def test_half_open_lets_one_probe_through(host: ServiceHost, gateway: HttpGateway, clock: FakeClock) -> None:
    host.set_faults("hotels", outage=True)

    async def body() -> list[Any]:
        for i in range(3):
            with pytest.raises((Delayed, Blocked)):
                await gateway.bind(Key(f"w-{i}/1")).hotels.reserve("t")
        host.set_faults("hotels", outage=False, delay_ms=100)
        clock.now += 1.0
        calls = [gateway.bind(Key(f"p-{i}/1")).hotels.reserve("t") for i in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = run(gateway, body)
    assert [type(o) for o in outcomes].count(dict) == 1
    assert [type(o) for o in outcomes].count(Blocked) == 2


def test_success_resets_the_failure_count(host: ServiceHost, gateway: HttpGateway) -> None:
    async def body() -> None:
        for i in range(4):
            host.set_faults("hotels", outage=True)
            with pytest.raises(Delayed):
                await gateway.bind(Key(f"w-{i}/a")).hotels.reserve("t")
            host.set_faults("hotels", outage=False)
            await gateway.bind(Key(f"w-{i}/b")).hotels.reserve("t")

    run(gateway, body)
    assert gateway.breaker("hotels").state is BreakerState.CLOSED


def test_drop_first_delays_then_succeeds(host: ServiceHost, gateway: HttpGateway) -> None:
    host.set_faults("flights", drop_first=1)
    flights = gateway.bind(Key("w-1/0")).flights

    async def body() -> Any:
        with pytest.raises(Delayed):
            await flights.reserve("t-1")
        return await flights.reserve("t-1")

    assert run(gateway, body)["ref"] == "flights-1"
    assert host.stats()["flights"]["dropped"] == 1


def test_timeout_is_delayed_and_the_retry_replays(host: ServiceHost, gateway: HttpGateway) -> None:
    host.set_faults("flights", delay_ms=600)
    flights = gateway.bind(Key("w-1/0")).flights

    async def body() -> Any:
        with pytest.raises(Delayed):
            await flights.reserve("t-1")  # executed, but the answer came too late
        host.set_faults("flights", delay_ms=0)
        return await flights.reserve("t-1")

    assert run(gateway, body)["ref"] == "flights-1"
    stats = host.stats()["flights"]
    assert (stats["executions"], stats["replays"], stats["duplicates"]) == (1, 1, 0)


def test_connection_refused_is_delayed(clock: FakeClock) -> None:
    options = SimpleNamespace(services={"flights": f"http://127.0.0.1:{free_port()}/flights"})
    gateway = HttpGateway(options, timeout_s=0.3, clock=clock)
    with pytest.raises(Delayed, match=r"flights\.reserve did not answer") as info:
        run(gateway, lambda: gateway.bind(Key("w/0")).flights.reserve("t"))
    assert info.value.__cause__ is not None


def test_4xx_is_rejected_with_status_and_text(host: ServiceHost, gateway: HttpGateway) -> None:
    host.set_faults("payments", reject_over=1000)
    with pytest.raises(ServiceRejected) as info:
        run(gateway, lambda: gateway.bind(Key("w-1/2")).payments.charge("t-1", 5000))
    assert info.value.status == 422
    assert "over the limit" in info.value.error
    assert not isinstance(info.value, (Delayed, Blocked))
    assert gateway.breaker("payments").consecutive == 0


def test_unknown_service_lists_the_known_ones(gateway: HttpGateway) -> None:
    with pytest.raises(UnknownService, match="flights, hotels, payments") as info:
        _ = gateway.bind(Key("w/0")).trains
    assert isinstance(info.value, CoordinatorError)
    assert not isinstance(info.value, (Delayed, Blocked))


def test_errors_pickle_round_trip() -> None:
    for error in (ServiceRejected("payments", "charge", 422, "too much"), UnknownService("x", ("a", "b"))):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert copy.args == error.args
        assert str(copy) == str(error)
    rejected = pickle.loads(pickle.dumps(ServiceRejected("payments", "charge", 422, "too much")))
    assert (rejected.service, rejected.op, rejected.status, rejected.error) == ("payments", "charge", 422, "too much")


def test_gateway_pickles_fresh_and_serves_several_loops(host: ServiceHost, gateway: HttpGateway) -> None:
    copy = pickle.loads(pickle.dumps(gateway))
    assert copy.services == gateway.services
    assert copy.timeout_s == gateway.timeout_s
    for key in ("w-1/0", "w-2/0"):  # a new event loop each time: a session per loop
        assert run(copy, functools.partial(copy.bind(Key(key)).flights.reserve, "t"))["op"] == "reserve"


def test_book_trip_runs_and_compensates_in_reverse(host: ServiceHost, gateway: HttpGateway) -> None:
    host.set_faults("payments", reject_over=1000)
    recorder = MemoryRecorder()
    cmd = BookTrip("t-9", 5000)
    outcomes: list[Outcome] = []

    async def body() -> BaseException:
        ctx = Context("w-9", 1, outcomes, recorder, gateway)
        with pytest.raises(ServiceRejected) as info:
            await cmd.exec(ctx)
        undo = Context("w-9", 1, outcomes, recorder, gateway, compensating=True)
        await cmd.compensate(undo, info.value)
        return info.value

    run(gateway, body)
    assert [(kind, step, service) for _, kind, step, service, _ in recorder.records] == [
        ("outcome", 0, "flights"),
        ("outcome", 1, "hotels"),
        ("compensation", 0, "hotels"),
        ("compensation", 1, "flights"),
    ]
    assert host.state.services["hotels"].executed == {"w-9/1", "w-9/compensate/0"}
    assert host.state.services["flights"].executed == {"w-9/0", "w-9/compensate/1"}


def test_local_gateway_passes_the_key() -> None:
    class Flights:
        async def reserve(self, trip: str, *, key: str) -> str:
            return f"{trip}@{key}"

    gateway = LocalGateway({"flights": Flights()})
    assert asyncio.run(gateway.bind(Key("w/0")).flights.reserve("t")) == "t@w/0"
    with pytest.raises(UnknownService):
        _ = gateway.bind(Key("w/0")).hotels
