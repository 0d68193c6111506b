"""The web console in a real headless Chromium, driven over the Chrome DevTools Protocol.

A coordinator runs workflows (finishing, parked, compensated); the console serves it
on 127.0.0.1; the test reads what a person would see on the page: counts moving,
a workflow's timeline with each step's time and attempt, the deployments, pages by
cursor, a suspend and a retry-now refused without the operator token and done with
it, and a workflow's own actions (none without the token; with it, a signal sent and
a running workflow cancelled from its page). It leaves a screenshot in
tests/artifacts/console.png (and console-operate.png, a running workflow's actions).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import ray

import cluster
from actors.options import Options
from cluster.console.actor import RaySupervisor
from cluster.console.server import TOKEN_HEADER, ConsoleServer
from tests.support import Coordinator
from workflows.testing import AwaitsSignal, Echo, Fails, Flaky, Tracked

pytestmark = pytest.mark.ray

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1360,1100", "--hide-scrollbars"]
TOKEN = "operator-secret"


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.fail("Chromium is not installed: the console test needs a real browser "
                    "(apt-get update && apt-get install -y chromium chromium-driver)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_console(coordinator: Callable[..., Coordinator], **kw: Any) -> tuple[Coordinator, int]:
    """A coordinator serving its console on a free port. A port found free can be taken
    by another process before the console binds it (`cluster.start` then raises OSError
    and leaves nothing running): try another."""
    for attempt in range(5):
        port = free_port()
        try:
            return coordinator(console_port=port, **kw), port
        except OSError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


class Browser:
    """One headless Chromium with a fresh profile, and one page driven over CDP."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.reader: asyncio.Task[None] | None = None
        self.errors: list[str] = []
        """Script errors and console errors on the page (a refused request's network error aside)."""

    async def connect(self, timeout_s: float = 30.0) -> None:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not active.exists() or not active.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.profile.parent / "chromium.log").read_bytes()[-2000:].decode(errors="replace")
                pytest.fail(f"Chromium did not start (exit {self.proc.poll()}):\n{tail}")
            await asyncio.sleep(0.05)
        port = int(active.read_text().split()[0])
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=1360, height=1100, deviceScaleFactor=1,
                        mobile=False)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            data = json.loads(msg.data)
            params = data.get("params", {})
            if data.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(params["exceptionDetails"])[:500])
            elif data.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error" \
                    and params["entry"].get("source") != "network":
                self.errors.append(params["entry"]["text"])
            future = self.calls.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.calls[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def js(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href === " + json.dumps(url), what=url)

    async def until(self, expression: str, timeout_s: float = 20.0, what: str = "") -> Any:
        """Poll ``expression`` on the page until truthy; fail with what the page shows."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        shown = await self.js("document.getElementById('view') ? document.body.innerText.slice(0, 1500) : ''")
        pytest.fail(f"the page did not show {what or expression} within {timeout_s} s; it shows:\n{shown}")

    async def text(self, selector: str) -> str:
        return str(await self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"))

    async def click(self, selector: str) -> None:
        await self.until(f"!!document.querySelector({json.dumps(selector)})", what=selector)
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="console-chromium-") as tmp:
        b = Browser(binary, Path(tmp) / "profile")
        try:
            await b.connect()
            yield b
        finally:
            await b.close()


def facts_show(state: str) -> str:
    """True once a workflow's page shows it in ``state``."""
    return f"(document.querySelector('dl.facts .state') || {{}}).textContent === {json.dumps(state)}"


def count(state: str) -> str:
    return f"Number(document.getElementById('count-{state}')?.textContent ?? -1)"


async def test_console_in_a_browser(coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    began = time.monotonic()
    # The read-only console is the coordinator's own (an actor); the operator's runs here.
    # Parked workflows wait 30 s for their retry: one that runs sooner was retried now.
    c, port = with_console(coordinator, slow_retry_interval_s=30.0, command_actors=1, slots_per_actor=16)
    sup, url = c.sup, f"http://127.0.0.1:{port}/"
    operator = ConsoleServer(RaySupervisor(sup), TOKEN)
    op_url = await operator.start("127.0.0.1", 0)
    try:
        done = [await sup.submit.remote(Echo(i)) for i in range(3)]
        failed = await sup.submit.remote(Fails(steps=2), "trip-refused")
        await sup.submit.remote(Flaky(failures=10_000), "waits-for-payments")
        await sup.submit.remote(Tracked(str(tmp_path), steps=20, sleep_s=0.5), "slow-trip")
        await sup.wait.remote([*done, failed], 30)
        async with browser() as page:
            await page.goto(url)
            await page.until(f"{count('completed')} >= 3 && {count('compensated')} === 1", what="the first counts")
            assert await page.text("#mode") == "normal" and await page.text("#intake") == "open"
            assert await page.text("#access") == "read-only"
            await page.until("[...document.querySelectorAll('tr[data-id=\"waits-for-payments\"]')]"
                             ".some(r => /delayed.*\\((in [0-9.]+ s|due)\\)/.test(r.textContent))",
                             what="a parked row with its next retry")
            await page.until("!!document.querySelector('tr[data-id=\"slow-trip\"]')", what="an in-flight row")

            # Counts move on the page as more workflows complete, without reloading it.
            before = int(await page.js(count("completed")))
            more = await sup.submit_many.remote([Echo(f"more-{i}") for i in range(5)])
            await page.until(f"{count('completed')} >= {before + 5}", what="the completed count rising by 5")
            assert all(w["state"] == "completed" for w in (await sup.wait.remote(more, 30)).values())

            # The completed ones, listed from their count on the overview.
            await page.click('a.count[href="#/workflows?state=completed"]')
            await page.until(f"document.getElementById('range')?.textContent === '1\u2013{before + 5} of {before + 5}'",
                             what="the list of completed workflows")
            assert await page.js("document.querySelectorAll('tbody .state.completed').length") == before + 5
            await page.screenshot(ARTIFACTS / "console-list.png")
            # Three a page: the next link carries the cursor, and no row comes twice.
            await page.goto(url + "#/workflows?state=completed&limit=3")
            await page.until(f"document.getElementById('range')?.textContent === '1\u20133 of {before + 5}'",
                             what="the first page of three")
            shown = await page.js("[...document.querySelectorAll('tbody tr')].map(r => r.dataset.id)")
            await page.click("#next")
            await page.until(f"document.getElementById('range')?.textContent === '4\u20136 of {before + 5}'",
                             what="the second page of three")
            assert "cursor=" in await page.js("location.hash") and await page.js("!!document.getElementById('first')")
            shown += await page.js("[...document.querySelectorAll('tbody tr')].map(r => r.dataset.id)")
            assert len(set(shown)) == 6
            await page.goto(url)

            # A refused suspend: the read-only console answers 403 and the page says why.
            await page.click("#suspend")
            await page.until("document.getElementById('flash').textContent.includes('read-only')",
                             what="the read-only refusal")
            assert "Suspend refused" in await page.text("#flash")
            assert (await sup.stats.remote())["held"] is False

            # Search by type, then by id, which opens the workflow's page.
            await page.js("document.getElementById('search-type').value = 'Fails';"
                          "document.getElementById('search').requestSubmit()")
            await page.until("!!document.querySelector('tr[data-id=\"trip-refused\"]')", what="the search by type")
            assert await page.js("document.querySelectorAll('tbody tr').length") == 1
            await page.js("document.getElementById('search-type').value = '';"
                          "document.getElementById('search-id').value = 'trip-refused';"
                          "document.getElementById('search').requestSubmit()")
            await page.until("document.querySelectorAll('#timeline li').length === 4", what="the timeline")
            items = await page.js("[...document.querySelectorAll('#timeline li')].map(li => "
                                  "[li.className, li.dataset.service, li.querySelector('.tl-attempt').textContent, "
                                  "li.querySelector('.tl-time').textContent])")
            assert [i[:3] for i in items] == [["outcome", "svc0", "attempt 1"], ["outcome", "svc1", "attempt 1"],
                                              ["compensation", "undo-svc1", "attempt 1"],
                                              ["compensation", "undo-svc0", "attempt 1"]]
            today = time.strftime("%Y-%m-%d", time.gmtime())
            assert all(i[3].startswith(today) for i in items), items  # each step's own journaled time
            assert "ValueError" in await page.text("#error .etype")
            assert await page.text("#wf-id") == "trip-refused"
            assert "compensated" in await page.js("document.querySelector('dl.facts').textContent")
            await page.screenshot(ARTIFACTS / "console-workflow.png")

            # The deployments, as `coordinator deployments` lists them.
            await page.goto(url + "#/deployments")
            await page.until("[...document.querySelectorAll('tbody tr')].some(r => r.textContent.includes("
                             "'workflows.testing:Echo'))", what="the deployment running Echo")
            listed = await sup.deployments.remote()
            row = await page.js("[...document.querySelectorAll('tbody tr')].map(r => "
                                "[...r.querySelectorAll('td')].map(td => td.textContent))")
            assert [r[0] for r in row] == [d["id"] for d in listed]
            mine = next(r for r, d in zip(row, listed, strict=True) if "workflows.testing:Echo" in d["types"])
            assert int(mine[4]) >= 1 and int(mine[5]) >= 1 and mine[6].startswith(time.strftime("%Y"))
            await page.screenshot(ARTIFACTS / "console-deployments.png")
            await page.goto(url)

            # Pages follow the supervisor's cursor, newest first: two per page, none twice.
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "api/workflows?state=completed&limit=2") as r:
                    first = await r.json()
                async with http.get(url + "api/workflows", params={"state": "completed", "limit": "2",
                                                                   "cursor": first["next"]}) as r:
                    second = await r.json()
                assert r.status == 200 and len(first["items"]) == len(second["items"]) == 2 and second["more"]
                ids = [w["id"] for w in first["items"] + second["items"]]
                ends = [w["finished_at"] for w in first["items"] + second["items"]]
                assert len(set(ids)) == 4 and ends == sorted(ends, reverse=True)  # the last to finish first
                async with http.post(url + "api/retry-now", params={"id": "waits-for-payments"}) as r:
                    assert r.status == 403 and "read-only" in (await r.json())["error"]
                async with http.get(url + "api/workflow", params={"id": "no-such-workflow"}) as r:
                    assert r.status == 404 and "no-such-workflow" in (await r.json())["error"]
                async with http.post(op_url + "api/suspend", headers={TOKEN_HEADER: "wrong"}) as r:
                    assert r.status == 403 and "token" in (await r.json())["error"]
                # The actor's errors through Ray: InvalidCommand is 400, UnknownWorkflow 404.
                operator_header = {TOKEN_HEADER: TOKEN}
                async with http.post(op_url + "api/fork", json={"id": "trip-refused", "from_step": 1},
                                     headers=operator_header) as r:
                    assert r.status == 400 and "from step 0" in (await r.json())["error"]
                async with http.post(op_url + "api/terminate", json={"id": "no-such-workflow"},
                                     headers=operator_header) as r:
                    assert r.status == 404 and "no-such-workflow" in (await r.json())["error"]
                async with http.post(op_url + "api/resume-workflow", json={"id": "trip-refused"},
                                     headers=operator_header) as r:
                    assert r.status == 200 and (await r.json())["resumed"] is False
                async with http.post(url + "api/cancel", json={"id": "slow-trip"}, headers=operator_header) as r:
                    assert r.status == 403 and "read-only" in (await r.json())["error"]

            # Read-only, a parked workflow's page offers no retry; with the token it does.
            await page.goto(url + "#/workflow?id=waits-for-payments")
            await page.until("document.getElementById('wf-id')?.textContent === 'waits-for-payments'",
                             what="the parked workflow's page")
            assert await page.js("!document.getElementById('retry-now')")
            attempts = (await sup.status.remote("waits-for-payments"))["attempts"]
            await page.goto(op_url + "#/workflow?id=waits-for-payments")
            await page.js(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
            await page.click("#retry-now")
            await page.until("document.getElementById('flash').textContent.includes('retries now')",
                             what="the retry accepted")
            deadline = time.monotonic() + 15
            while (await sup.status.remote("waits-for-payments"))["attempts"] <= attempts:
                assert time.monotonic() < deadline, "retry-now did not run the parked workflow"
                await asyncio.sleep(0.1)

            # With the operator token, in the second console: suspend, then resume.
            await page.goto(op_url)
            await page.until("document.getElementById('intake')?.textContent === 'open'", what="intake open")
            await page.click("#suspend")
            await page.until("document.getElementById('intake')?.textContent === 'closed'", what="intake closed")
            assert "held by the operator" in await page.text("#intake-note")
            assert (await sup.stats.remote())["held"] is True
            await page.click("#resume")
            await page.until("document.getElementById('intake')?.textContent === 'open'", what="intake reopened")
            assert (await sup.stats.remote())["held"] is False

            # A workflow's own actions: none on the read-only console; with the token, the
            # ones its state allows: send a waiting one its signal, cancel a running one.
            await sup.submit.remote(Tracked(str(tmp_path), steps=80, sleep_s=0.25), "cancel-me")
            await sup.submit.remote(AwaitsSignal(sleep_s=0.0), "needs-go")
            await page.goto(url + "#/workflow?id=needs-go")
            await page.until(facts_show("waiting"), what="the waiting workflow's page")
            assert await page.js("!document.getElementById('ops') && !document.querySelector('.tl-fork')")
            await page.goto(op_url + "#/workflow?id=needs-go")
            await page.until("!!document.getElementById('signal-send')", what="the signal form")
            assert await page.js("document.getElementById('signal-name').value") == "go"
            assert await page.js("!document.getElementById('resume-workflow') && !!document.getElementById('cancel')")
            await page.click('.tl-fork[data-step="0"]')  # a step picked on the timeline fills in the fork
            assert await page.js("[document.getElementById('fork-step').value, "
                                 "document.getElementById('fork-id').value]") == ["0", "needs-go-fork-0"]
            await page.js("const p = document.getElementById('signal-payload'); p.value = '{\"seats\": 2}';"
                          "p.dispatchEvent(new Event('input'))")
            await page.click("#signal-send")
            await page.until("document.getElementById('flash').textContent.includes('sent to needs-go')",
                             what="the signal sent")
            assert await sup.result.remote("needs-go", 10) == {"seats": 2}
            await page.until(facts_show("completed"), what="the signalled workflow completed")
            # Fork it from step 0 (picked above): the page moves to the fork, which waits
            # again; terminate it there.
            await page.click("#fork")
            await page.until("document.getElementById('wf-id')?.textContent === 'needs-go-fork-0' && "
                             + facts_show("waiting"), what="the fork's page")
            await page.click("#terminate")
            await page.click("#terminate")
            await page.until(facts_show("terminated"), what="the fork terminated")

            await page.goto(op_url + "#/workflow?id=cancel-me")
            await page.until(facts_show("running") + " && !!document.getElementById('cancel')",
                             what="the running workflow's actions")
            # What the operator types survives the page's refreshes, and so does the focus.
            await page.js("document.getElementById('reason').focus()")
            await page.send("Input.insertText", text="customer")
            updated = await page.text("#updated")
            await page.until(f"document.getElementById('updated').textContent !== {json.dumps(updated)}",
                             what="a refresh")
            await page.send("Input.insertText", text=" asked")
            assert await page.js("[document.activeElement.id, document.getElementById('reason').value]") == \
                ["reason", "customer asked"]
            await page.screenshot(ARTIFACTS / "console-operate.png")
            await page.click("#cancel")  # the first click arms it, the second cancels
            await page.until("document.getElementById('cancel')?.textContent === 'Confirm cancel'", what="armed")
            assert (await sup.status.remote("cancel-me"))["state"] == "running"
            await page.click("#cancel")
            await page.until(facts_show("cancelled"), what="the workflow cancelled")
            assert (await sup.status.remote("cancel-me"))["state"] == "cancelled"
            assert await page.js("!document.getElementById('cancel') && !!document.getElementById('fork')")

            # The overview as an operator sees it, with work in flight, for the screenshot.
            await sup.submit_many.remote([Tracked(str(tmp_path), steps=40, sleep_s=0.25) for _ in range(3)])
            await page.goto(url)
            await page.until("document.querySelectorAll('tr[data-id]').length >= 4", what="the overview again")
            await page.screenshot(ARTIFACTS / "console.png")
            assert page.errors == []
        assert (ARTIFACTS / "console.png").stat().st_size > 10_000
    finally:
        await operator.stop()
    print(f"console browser test: {time.monotonic() - began:.1f} s")


def test_console_actor_ends_with_the_coordinator_and_a_taken_port_fails_start(
        coordinator: Callable[..., Coordinator]) -> None:
    port = free_port()
    c = coordinator(console_port=port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=10) as r:
        assert json.load(r)["read_only"] is True
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ns = f"taken-{taken.getsockname()[1]}"
        with pytest.raises(OSError):
            cluster.start(Options(storage=str(c.options.storage) + "-2", namespace=ns, gateway=None,
                                  console_port=taken.getsockname()[1]))
    assert [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns] == []
    c.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=5)


def test_console_command(coordinator: Callable[..., Coordinator], ray_session: str) -> None:
    c = coordinator()
    port = free_port()
    env = {**os.environ, "CONSOLE_TOKEN": TOKEN, "RAY_ADDRESS": ray_session}
    cmd = [sys.executable, "-m", "cluster.cli", "--namespace", c.options.namespace, "console", "--port", str(port),
           "--token-env", "CONSOLE_TOKEN"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert "console at http://127.0.0.1:" in proc.stdout.readline()
        post = urllib.request.Request(f"http://127.0.0.1:{port}/api/suspend", method="POST",
                                      headers={TOKEN_HEADER: TOKEN})
        with urllib.request.urlopen(post, timeout=10) as r:
            assert json.load(r)["stats"]["held"] is True
        assert ray.get(c.sup.resume.remote())["held"] is False
    finally:
        proc.terminate()
        proc.wait(10)
    unset = subprocess.run([*cmd[:-1], "NO_SUCH_VARIABLE"], env=env, capture_output=True, text=True, timeout=60)
    assert unset.returncode == 1 and "NO_SUCH_VARIABLE" in unset.stderr
