"""The console's HTTP API over the in-process coordinator (no Ray, no browser): pages by
cursor, a timeline with each step's time and attempt, the deployments, and retry-now
and every per-workflow action (cancel, terminate, resume-workflow, fork, signal)
refused without the operator token and done with it, bad input 400, unknown 404."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from actors.inprocess import LocalCoordinator
from cluster.console import TOKEN_HEADER, ConsoleServer
from tests.unit.local import opts, wait_state
from workflows.testing import AwaitsSignal, Echo, Fails, Flaky, Stalls

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
        return self.core.stats(await self.core.finished_counts())

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

    async def cancel(self, workflow_id: str, reason: str) -> bool:
        return await self.core.cancel(workflow_id, reason)

    async def terminate(self, workflow_id: str, reason: str) -> bool:
        return await self.core.terminate(workflow_id, reason)

    async def resume_workflow(self, workflow_id: str) -> bool:
        return await self.core.resume_workflow(workflow_id)

    async def fork(self, workflow_id: str, from_step: int, new_workflow_id: str) -> str:
        return await self.core.fork(workflow_id, from_step, new_workflow_id)

    async def signal(self, workflow_id: str, name: str, payload: Any) -> bool:
        return await self.core.signal(workflow_id, name, payload)


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
    """The counts by state go on rising once the supervisor's cache (3 here) is full (they
    are the journal's); the throughput follows the finishes since it started."""
    from cluster.console.api import ConsoleApi

    c = consoles[0]
    now = [100.0]
    api = ConsoleApi(Core(c), read_only=True, clock=lambda: now[0])
    await api.sample()
    for i in range(8):
        await c.core.result(await c.core.submit(Echo(i, steps=0)), 5)
    now[0] = 101.0
    stats = await api.sample()
    assert stats["counts"]["completed"] == 8 and stats["finished_since_start"] == 8
    assert c.core.stats()["counts"]["completed"] == 3  # the cache alone
    assert sum(api.throughput.series(101.5)["per_s"]) * api.throughput.bucket_s == pytest.approx(8, abs=0.01)
    now[0] = 102.0
    api.throughput.add(now[0], stats["counts"], 2)  # a restarted supervisor counts from 0: nothing added
    assert sum(api.throughput.series(102.5)["per_s"]) * api.throughput.bucket_s == pytest.approx(8, abs=0.01)


OPS = ("cancel", "terminate", "resume-workflow", "fork", "signal")


async def post(http: aiohttp.ClientSession, url: str, body: Any, token: str | None = TOKEN,
               status: int = 200) -> Any:
    """POST ``body`` (JSON, or text as it is) and the answer, which must have ``status``."""
    headers = {TOKEN_HEADER: token} if token is not None else {}
    data = body if isinstance(body, str) else None
    async with http.post(url, json=None if data is not None else body, data=data, headers=headers) as r:
        answer = await r.json()
        assert r.status == status, answer
        return answer


async def test_every_workflow_action_with_the_token(consoles: Any) -> None:
    c, _, url, http = consoles
    waits, cancels, terminates = [await c.core.submit(AwaitsSignal(sleep_s=0.0), w) for w in ("w", "c", "t")]
    for wid in (waits, cancels, terminates):
        await wait_state(c, wid, "waiting")
    page = await get(http, url + "api/workflow", id=waits)
    assert page["actions"] == ["cancel", "terminate", "fork", "signal"]  # its sleep is a step: fork
    assert page["signal_name"] == "go"

    sent = await post(http, url + "api/signal", {"id": waits, "name": "go", "payload_json": '{"seats": [1, 2]}'})
    assert sent == {"id": waits, "name": "go", "delivered": True}
    assert await c.core.result(waits, 5) == {"seats": [1, 2]}
    assert (await post(http, url + "api/signal", {"id": waits, "name": "go", "payload": 3}))["delivered"] is False

    assert await post(http, url + "api/cancel", {"id": cancels, "reason": "customer asked"}) == \
        {"id": cancels, "cancelled": True}
    await wait_state(c, cancels, "cancelled")
    assert (await post(http, url + "api/cancel", {"id": cancels}))["cancelled"] is False  # finished: a no-op
    assert (await get(http, url + "api/workflow", id=cancels))["actions"] == ["fork"]  # stop no more
    assert await post(http, url + "api/terminate", {"id": terminates}) == {"id": terminates, "terminated": True}
    await wait_state(c, terminates, "terminated")

    paused = await c.core.submit(Stalls(steps=2), "stalls")
    await wait_state(c, paused, "paused")
    page = await get(http, url + "api/workflow", id=paused)
    assert page["actions"] == ["cancel", "terminate", "resume-workflow", "fork"] and page["fork_max_step"] == 2
    assert await post(http, url + "api/resume-workflow", {"id": paused}) == {"id": paused, "resumed": True}
    await c.core.result(paused, 5)
    assert (await post(http, url + "api/resume-workflow", {"id": paused}))["resumed"] is False

    done = await c.core.submit(Echo("v", steps=2), "echo")
    await c.core.result(done, 5)
    page = await get(http, url + "api/workflow", id=done)
    assert page["actions"] == ["fork"] and page["fork_max_step"] == 2
    forked = await post(http, url + "api/fork", {"id": done, "from_step": 1})
    assert forked == {"id": done, "from_step": 1, "new_id": "echo-fork-1"}  # the default new id
    assert await c.core.result("echo-fork-1", 5) == "v"
    named = await post(http, url + "api/fork", {"id": done, "from_step": "0", "new_id": "echo-again"})
    assert named["new_id"] == "echo-again" and await c.core.result("echo-again", 5) == "v"


async def test_a_compensated_workflow_forks_from_step_0_only(consoles: Any) -> None:
    c, _, url, http = consoles
    wid = await c.core.submit(Fails(steps=2), "refused")
    await wait_state(c, wid, "compensated")
    page = await get(http, url + "api/workflow", id=wid)
    assert page["actions"] == ["fork"] and page["fork_max_step"] == 0
    error = await post(http, url + "api/fork", {"id": wid, "from_step": 1}, status=400)
    assert "from step 0" in error["error"]


async def test_each_action_needs_the_operator_token(consoles: Any) -> None:
    c, ro_url, url, http = consoles
    wid = await c.core.submit(AwaitsSignal(sleep_s=0.0), "w")
    await wait_state(c, wid, "waiting")
    page = await get(http, ro_url + "api/workflow", id=wid)
    assert page["actions"] == [] and page["read_only"] is True  # read-only: nothing offered
    body = {"id": wid, "reason": "r", "from_step": 0, "new_id": "w2", "name": "go", "payload": 1}
    for op in OPS:
        assert "read-only" in (await post(http, ro_url + "api/" + op, body, status=403))["error"]
        assert "token" in (await post(http, url + "api/" + op, body, token="wrong", status=403))["error"]
        assert "token" in (await post(http, url + "api/" + op, body, token=None, status=403))["error"]
    status = await c.core.status(wid)
    assert status["state"] == "waiting"
    with pytest.raises(KeyError):
        await c.core.status("w2")  # not forked


@pytest.mark.parametrize(("op", "body", "names"), [
    *[(op, {}, "id is required") for op in OPS],
    *[(op, {"id": ""}, "id is required") for op in OPS],
    ("cancel", {"id": "w", "reason": 7}, "reason must be a string"),
    ("fork", {"id": "w"}, "from_step is required"),
    ("fork", {"id": "w", "from_step": ""}, "from_step is required"),  # the page's field cleared
    ("fork", {"id": "w", "from_step": -1}, "from_step must be a step index"),
    ("fork", {"id": "w", "from_step": "1.5"}, "from_step must be a step index"),
    ("fork", {"id": "w", "from_step": "two"}, "from_step must be a step index"),
    ("fork", {"id": "w", "from_step": True}, "from_step must be a step index"),
    ("fork", {"id": "w", "from_step": 5}, "past them"),
    ("fork", {"id": "w", "from_step": 0, "new_id": "w"}, "needs a new workflow id"),
    ("signal", {"id": "w", "payload": 1}, "name is required"),
    ("signal", {"id": "w", "name": "go", "payload_json": "{seats: 1"}, "payload is not JSON"),
    ("signal", {"id": "w", "name": "go", "payload_json": 5}, "payload_json must be a string"),
    ("cancel", "{not json", "the request body is not JSON"),
    ("cancel", "[1, 2]", "must be a JSON object"),
])
async def test_bad_input_is_400_naming_what_is_wrong(consoles: Any, op: str, body: Any, names: str) -> None:
    c, _, url, http = consoles
    await c.core.result(await c.core.submit(Echo(1, steps=1), "w"), 5)
    assert names in (await post(http, url + "api/" + op, body, status=400))["error"]


async def test_an_unknown_workflow_is_404(consoles: Any) -> None:
    _, _, url, http = consoles
    body = {"id": "nobody", "from_step": 0, "new_id": "nobody-2", "name": "go"}
    for op in OPS:
        assert "nobody" in (await post(http, url + "api/" + op, body, status=404))["error"]


async def test_resume_of_a_finished_workflow_out_of_memory_is_a_no_op(consoles: Any) -> None:
    c, _, url, http = consoles
    await c.core.result(await c.core.submit(Echo(0, steps=0), "old"), 5)
    for i in range(4):  # the supervisor keeps 3 finished ones
        await c.core.result(await c.core.submit(Echo(i, steps=0)), 5)
    assert "old" not in c.core.table.workflows
    assert await post(http, url + "api/resume-workflow", {"id": "old"}) == {"id": "old", "resumed": False}


@pytest.mark.parametrize(("state", "steps", "actions"), [
    ("pending", 0, ["cancel", "terminate"]),
    ("running", 1, ["cancel", "terminate", "fork"]),
    ("delayed", 1, ["retry-now", "cancel", "terminate", "fork"]),
    ("blocked", 0, ["retry-now", "cancel", "terminate"]),
    ("paused", 2, ["cancel", "terminate", "resume-workflow", "fork"]),
    ("sleeping", 0, ["cancel", "terminate"]),
    ("waiting", 0, ["cancel", "terminate", "signal"]),
    *[(s, 1, ["fork"]) for s in ("completed", "failed", "compensated", "cancelled", "terminated")],
    ("completed", 0, []),
])
def test_the_actions_offered_by_state(state: str, steps: int, actions: list[str]) -> None:
    from cluster.console.operations import offered

    status = {"state": state, "outcomes": [[i, "svc", i] for i in range(steps)], "waiting_for": "go"}
    offer = offered(status, compensated=False)
    assert offer["actions"] == actions and offer["fork_max_step"] == steps
    assert offer["signal_name"] == ("go" if state == "waiting" else None)
