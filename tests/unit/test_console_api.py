"""The console's HTTP API over the in-process coordinator (no Ray, no browser): pages by
cursor, a timeline with each step's time and attempt, the deployments, and retry-now
refused without the operator token and done with it."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from actors.inprocess import LocalCoordinator
from cluster.console import TOKEN_HEADER, ConsoleServer
from tests.unit.local import opts, wait_state
from workflows.testing import Echo, Fails, Flaky

TOKEN = "t0ken"
DEPLOYMENTS = [{"id": "d-2", "runtime_env": "working_dir=gcs://b.zip", "types": ["shop:Refund"], "unfinished": 0,
                "actors": 1, "nodes": 1, "created_at": 1_700_000_100.0},
               {"id": "d-1", "runtime_env": "-", "types": ["shop:BookTrip"], "unfinished": 3, "actors": 2,
                "nodes": 2, "created_at": 1_700_000_000.0}]


class Core:
    """`cluster.console.api.Supervisor` over a `SupervisorCore`, with fixed deployments."""

    def __init__(self, c: LocalCoordinator) -> None:
        self.core = c.core

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def list(self, state: str | None, limit: int) -> builtins.list[dict[str, Any]]:
        return await self.core.list(state, limit)

    async def status(self, workflow_id: str) -> dict[str, Any]:
        return await self.core.status(workflow_id)

    async def outcomes(self, service: str, since_seq: int, limit: int) -> builtins.list[dict[str, Any]]:
        return await self.core.outcomes(service, since_seq, limit)

    async def suspend(self) -> dict[str, Any]:
        return await self.core.suspend()

    async def resume(self) -> dict[str, Any]:
        return await self.core.resume()

    async def page(self, state: str | None, type_part: str | None, cursor: str | None,
                   limit: int) -> dict[str, Any]:
        return await self.core.page(state, type_part, cursor, limit)

    async def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        return await self.core.history(workflow_id)

    async def deployments(self) -> builtins.list[dict[str, Any]]:
        return DEPLOYMENTS

    async def retry_now(self, workflow_id: str) -> bool:
        return await self.core.retry_now(workflow_id)

    async def finished_counts(self) -> dict[str, int]:
        return await self.core.finished_counts()


@pytest.fixture
async def consoles() -> AsyncIterator[tuple[LocalCoordinator, str, str, aiohttp.ClientSession]]:
    """A coordinator (parked workflows wait a minute), its read-only console and its operator's."""
    c = LocalCoordinator(opts(slow_retry_interval_s=60.0, result_cache_size=3))
    await c.start()
    ro, op = ConsoleServer(Core(c)), ConsoleServer(Core(c), TOKEN)
    ro_url, op_url = await ro.start(), await op.start()
    async with aiohttp.ClientSession() as http:
        yield c, ro_url, op_url, http
    await ro.stop()
    await op.stop()
    await c.close()


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with http.get(url, params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_pages_follow_the_cursor_newest_first(consoles: Any) -> None:
    c, url, _, http = consoles
    for i in range(7):  # more than the 3 finished ones held in memory
        await c.core.result(await c.core.submit(Echo(i, steps=1), f"e{i}"), 5)
    parked = await c.core.submit(Flaky(failures=5), "parked")
    await wait_state(c, parked, "delayed")
    seen, cursor = [], ""
    while True:
        page = await get(http, url + "api/workflows", limit="3", **({"cursor": cursor} if cursor else {}))
        seen += [w["id"] for w in page["items"]]
        if not page["more"]:
            break
        cursor = page["next"]
    assert seen == ["parked", *[f"e{i}" for i in range(6, -1, -1)]]
    done = await get(http, url + "api/workflows", state="completed", limit="2")
    assert [w["id"] for w in done["items"]] == ["e6", "e5"]
    assert done["total"] == 7 and c.core.stats()["counts"]["completed"] == 3  # all the journal keeps
    overview = await get(http, url + "api/overview")
    assert overview["stats"]["counts"]["completed"] == 7 and overview["stats"]["counts"]["delayed"] == 1
    async with http.get(url + "api/workflows", params={"cursor": "nonsense"}) as r:
        assert r.status == 400 and "cursor" in (await r.json())["error"]


async def test_the_timeline_shows_each_steps_time_and_attempt(consoles: Any) -> None:
    c, url, _, http = consoles
    wid = await c.core.submit(Fails(steps=2), "refused")
    await wait_state(c, wid, "compensated")
    d = await get(http, url + "api/workflow", id=wid)
    assert [(t["kind"], t["step"], t["attempt"]) for t in d["timeline"]] == [
        ("outcome", 0, 1), ("outcome", 1, 1), ("compensation", 0, 1), ("compensation", 1, 1)]
    assert all(t["at"] and t["at"].endswith("Z") for t in d["timeline"]) and d["timeline_complete"]
    assert d["retry_offered"] is False


async def test_the_deployments_as_listed(consoles: Any) -> None:
    _, url, _, http = consoles
    d = await get(http, url + "api/deployments")
    assert [x["id"] for x in d["deployments"]] == ["d-2", "d-1"]
    assert d["deployments"][1]["created_at"] == "2023-11-14T22:13:20.000Z" and d["read_only"] is True


async def test_retry_now_needs_the_operator_token(consoles: Any) -> None:
    c, url, op_url, http = consoles
    wid = await c.core.submit(Flaky(failures=1), "parked")
    await wait_state(c, wid, "delayed")
    assert (await get(http, url + "api/workflow", id=wid))["retry_offered"] is False  # read-only
    assert (await get(http, op_url + "api/workflow", id=wid))["retry_offered"] is True
    async with http.post(url + "api/retry-now", params={"id": wid}, headers={TOKEN_HEADER: TOKEN}) as r:
        assert r.status == 403 and "read-only" in (await r.json())["error"]
    async with http.post(op_url + "api/retry-now", params={"id": wid}, headers={TOKEN_HEADER: "wrong"}) as r:
        assert r.status == 403 and "token" in (await r.json())["error"]
    assert (await c.core.status(wid))["state"] == "delayed"
    async with http.post(op_url + "api/retry-now", params={"id": wid}, headers={TOKEN_HEADER: TOKEN}) as r:
        assert r.status == 200 and await r.json() == {"id": wid, "retried": True}
    assert (await c.core.result(wid, 5))["attempts"] == 2
    async with http.post(op_url + "api/retry-now", params={"id": wid}, headers={TOKEN_HEADER: TOKEN}) as r:
        assert (await r.json())["retried"] is False  # finished: nothing to retry
    async with http.post(op_url + "api/retry-now", params={"id": "nobody"}, headers={TOKEN_HEADER: TOKEN}) as r:
        assert r.status == 404



async def test_throughput_counts_finishes_past_the_cache_of_finished_ones(consoles: Any) -> None:
    """The counts by state stop rising once the supervisor's cache (3 here) is full; the
    throughput follows the finishes since it started."""
    from cluster.console.api import ConsoleApi

    c = consoles[0]
    now = [100.0]
    api = ConsoleApi(Core(c), read_only=True, clock=lambda: now[0])
    await api.sample()
    for i in range(8):
        await c.core.result(await c.core.submit(Echo(i, steps=0)), 5)
    now[0] = 101.0
    stats = await api.sample()
    assert stats["counts"]["completed"] == 3 and stats["finished_since_start"] == 8
    assert sum(api.throughput.series(101.5)["per_s"]) * api.throughput.bucket_s == pytest.approx(8, abs=0.01)
    now[0] = 102.0
    api.throughput.add(now[0], stats["counts"], 2)  # a restarted supervisor counts from 0: nothing added
    assert sum(api.throughput.series(102.5)["per_s"]) * api.throughput.bucket_s == pytest.approx(8, abs=0.01)
