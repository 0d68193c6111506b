"""`coordinator replay` against a real coordinator and the demo's HTTP services: a service
that lost its data is rebuilt from the journal, and a failing endpoint names where to resume."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from cluster.demo.services import ServiceHost
from tests.integration.test_cli import cli, one_line_error
from tests.support import Coordinator
from workflows.errors import CommandFailed
from workflows.examples import BookTrip

pytestmark = pytest.mark.ray

LIMIT = 1000
HTTP = {"gateway": "workflows.gateway:HttpGateway", "command_actors": 1, "slots_per_actor": 8}


@pytest.fixture
def host() -> Iterator[ServiceHost]:
    with ServiceHost() as running:
        running.set_faults("payments", reject_over=LIMIT)
        yield running


def _run_trips(sup: Any, n: int) -> dict[str, str]:
    """``n`` trips, every fourth over the payments limit (compensated); their end states."""
    ids = ray.get([sup.submit.remote(BookTrip(f"r-{i}", LIMIT * 2 if i % 4 == 1 else 100 + i), f"r-{i}")
                   for i in range(n)])
    for wid in ids:
        with contextlib.suppress(CommandFailed):
            ray.get(sup.result.remote(wid, 60.0))
    return {wid: ray.get(sup.status.remote(wid))["state"] for wid in ids}


def test_replay_rebuilds_a_wiped_service_and_resumes_after_a_failure(
        ray_session: str, coordinator: Callable[..., Coordinator], host: ServiceHost) -> None:
    c = coordinator(services=host.urls(), **HTTP)
    ns = c.options.namespace
    states = _run_trips(c.sup, 12)
    assert sorted(set(states.values())) == ["compensated", "completed"]
    before = host.ledger("hotels")
    assert len(before) == 12 + 3  # a reservation each, a cancel for each compensated trip
    assert any("/compensate/" in key for key in before)

    host.set_faults("hotels", forget=True)
    assert host.ledger("hotels") == {}
    done = cli(ray_session, ns, "replay", "hotels", "--to", host.url("hotels"), "--batch", "4", "-o", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sent"] == summary["acknowledged"] == summary["applied"] == len(before)
    assert summary["pages"] == 4 and "acknowledged" in done.stderr  # progress, a line a page
    assert host.ledger("hotels") == before
    counters = host.stats()["hotels"]
    assert counters["restored"] == len(before) and counters["duplicates"] == 0
    executions = counters["executions"]

    # A failing endpoint stops at the first page it refuses and names its seq.
    host.set_faults("hotels", forget=True)
    journaled = json.loads(cli(ray_session, ns, "outcomes", "hotels").stdout)
    assert len(journaled) == len(before) and {e["kind"] for e in journaled} == {"outcome", "compensation"}
    middle = journaled[len(journaled) // 2]["seq"]
    restored = sum(1 for e in journaled if e["seq"] >= middle)
    part = cli(ray_session, ns, "replay", "hotels", "--to", host.url("hotels"), "--since-seq", str(middle))
    assert part.returncode == 0, part.stderr
    host.set_faults("hotels", outage=True)
    failed = cli(ray_session, ns, "replay", "hotels", "--to", host.url("hotels"), "--batch", "5")
    first = journaled[0]["seq"]
    one_line_error(failed, 1, f"stopped at seq {first}")
    assert f"--since-seq {first}" in failed.stderr and "503" in failed.stderr
    host.set_faults("hotels", outage=False)
    resumed = cli(ray_session, ns, "replay", "hotels", "--to", host.url("hotels"), "--since-seq", str(first),
                  "-o", "json")
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(resumed.stdout)
    assert again["applied"] == len(before) - restored and again["present"] == restored
    assert again["last_seq"] == journaled[-1]["seq"]
    assert host.ledger("hotels") == before
    assert host.stats()["hotels"]["executions"] == executions  # replays execute nothing

    # The rebuilt service answers an original key from its ledger, executing nothing.
    call = urllib.request.Request(f"{host.url('hotels')}/reserve", data=json.dumps({"args": ["r-0"]}).encode(),
                                  headers={"Idempotency-Key": "r-0/1", "Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=10) as resp:
        assert json.loads(resp.read())["result"] == before["r-0/1"]
    assert host.stats()["hotels"]["executions"] == executions
