"""Two coordinators side by side on one Ray instance: two namespaces, two journals, two
sets of real HTTP services. Stopping one leaves the other serving; starting it again
resumes its own journal only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import cluster
from cluster.demo.services import DEFAULT_SERVICES, ServiceHost
from tests.support import Coordinator, wait_for
from workflows.errors import NotRunning, UnknownWorkflow
from workflows.examples import BookTrip

pytestmark = pytest.mark.ray

HTTP = {"gateway": "workflows.gateway:HttpGateway", "command_actors": 1, "slots_per_actor": 8}


@pytest.fixture
def hosts() -> Iterator[dict[str, ServiceHost]]:
    made = {name: ServiceHost().start() for name in ("a", "b")}
    yield made
    for host in made.values():
        host.stop()


def _submit(sup: Any, prefix: str, n: int) -> list[str]:
    ids: list[str] = ray.get([sup.submit.remote(BookTrip(f"{prefix}-{i}", 100 + i), f"{prefix}-{i}")
                              for i in range(n)])
    return ids


def _executed(host: ServiceHost) -> set[str]:
    """Idempotency keys the host's services executed (read once the calls are over)."""
    return {key for name in DEFAULT_SERVICES for key in list(host.state.services[name].executed)}


def _owners(keys: set[str]) -> set[str]:
    return {key.split("-", 1)[0] for key in keys}


def _state(sup: Any, wid: str) -> str:
    return str(ray.get(sup.status.remote(wid))["state"])


def test_two_coordinators_serve_side_by_side_and_one_stops_alone(
        ray_session: str, tmp_path: Path, hosts: dict[str, ServiceHost]) -> None:
    a = Coordinator(tmp_path / "journal-a", services=hosts["a"].urls(), **HTTP)
    b = Coordinator(tmp_path / "journal-b", services=hosts["b"].urls(), **HTTP)
    try:
        # Both at once.
        first_a = [a.sup.submit.remote(BookTrip(f"a1-{i}", 100 + i), f"a1-{i}") for i in range(10)]
        first_b = [b.sup.submit.remote(BookTrip(f"b1-{i}", 200 + i), f"b1-{i}") for i in range(10)]
        ids_a, ids_b = ray.get(first_a), ray.get(first_b)
        results = ray.get([a.sup.result.remote(w, 60) for w in ids_a] + [b.sup.result.remote(w, 60) for w in ids_b])
        assert all(set(r) == {"flight", "hotel"} for r in results)
        # A's payments service goes out: A's next workflows park after two steps.
        hosts["a"].set_faults("payments", outage=True)
        parked = _submit(a.sup, "a2", 5)
        wait_for(lambda: all(len(ray.get(a.sup.status.remote(w))["outcomes"]) == 2 for w in parked), 60,
                 "A's workflows to park at the payment step")
        assert not {_state(a.sup, w) for w in parked} & {"completed", "failed", "compensated"}
        # B is busy while A stops.
        during = _submit(b.sup, "b2", 10)
        assert cluster.stop(a.options.namespace)
        with pytest.raises(NotRunning):
            cluster.connect(a.options.namespace)
        after = _submit(b.sup, "b3", 5)
        assert all(set(r) == {"flight", "hotel"} for r in ray.get([b.sup.result.remote(w, 60)
                                                                     for w in during + after]))
        assert ray.get(b.sup.stats.remote())["mode"] == "normal"
        # A again, on its own journal: its parked workflows finish; B's are not its own.
        hosts["a"].set_faults("payments", outage=False)
        a.sup = cluster.start(a.options)
        assert all(set(r) == {"flight", "hotel"} for r in ray.get([a.sup.result.remote(w, 60) for w in parked]))
        assert ray.get([a.sup.result.remote(w, 60) for w in ids_a]) == results[:10]
        with pytest.raises(UnknownWorkflow):
            ray.get(a.sup.result.remote("b1-0", 5))
        listed_a = {s["id"] for s in ray.get(a.sup.list.remote(None, 1000))}
        listed_b = {s["id"] for s in ray.get(b.sup.list.remote(None, 1000))}
        assert listed_a == set(ids_a + parked)
        assert listed_b == set(ids_b + during + after)
        # Each coordinator called its own services only, and no step twice.
        assert _owners(_executed(hosts["a"])) == {"a1", "a2"}
        assert _owners(_executed(hosts["b"])) == {"b1", "b2", "b3"}
        for host, n in ((hosts["a"], 15), (hosts["b"], 25)):
            stats = host.stats()
            assert {name: stats[name]["keys"] for name in DEFAULT_SERVICES} == dict.fromkeys(DEFAULT_SERVICES, n)
            assert sum(stats[name]["duplicates"] for name in DEFAULT_SERVICES) == 0
    finally:
        a.stop()
        b.stop()
