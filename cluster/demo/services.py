"""Demo services over HTTP: idempotent by key, with faults to inject.

One aiohttp server hosts any number of services by path prefix:
``POST /{service}/{op}`` with the JSON body ``{"args": [...]}`` and an
``Idempotency-Key`` header. The first call with a key executes the operation and
stores its answer; any later call with that key gets the stored answer and executes
nothing. Answers are ``{"result": {...}}`` (200) or ``{"error": "..."}`` (4xx/5xx).

Admin endpoints (JSON):

- ``POST /_admin/faults`` ``{"service": name, ...}`` with any of ``outage`` (bool:
  503 for every call), ``outage_s`` (an outage that ends by itself after that many
  seconds), ``delay_ms`` (latency added after the work is done, so a client that
  times out leaves an executed call behind), ``drop_first`` (the first N calls of each
  key get a 503 before executing), ``drop_one_in`` (drop only keys whose CRC32 is a
  multiple of it; default 1, every key), ``reject_over`` (``charge`` with an amount
  over it gets 422), ``forget`` (drop stored answers, as a service that lost its
  data; a key executed again then counts as a duplicate).
- ``GET /_admin/stats``: counters per service. ``POST /_admin/reset``: clear all.

Rebuilding (``coordinator replay SERVICE --to URL``): ``POST /{service}/_replay`` with
``{"entries": [{"key", "workflow_id", "step", "kind", "value", "seq"}, ...]}`` stores
each entry's ``value`` as the answer to its ``key`` unless the key has one already;
nothing executes. It answers ``{"applied": n, "present": m}`` (200), 503 in an outage.

Counters per service: ``calls`` (requests), ``executions``, ``keys`` (distinct keys
executed), ``replays`` (answered from the store), ``dropped`` (503 by drop_first),
``outage`` (503 by an outage), ``rejected`` (422), ``duplicates`` (executions of a key
already executed: it must stay 0), ``restored`` (ledger entries rebuilt by a replay).
The state and its rules live in `cluster.demo.ledger`.

`ServiceHost` runs the server on its own event loop in a daemon thread;
``python -m cluster.demo.services --port N`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import structlog
from aiohttp import web

from cluster.demo.ledger import DEFAULT_SERVICES, FAULT_KEYS, Faults, Service, ServiceState

__all__ = ["DEFAULT_SERVICES", "FAULT_KEYS", "Faults", "Service", "ServiceHost", "ServiceState", "build_app", "main"]

log = structlog.get_logger("services")

T = TypeVar("T")


# --- HTTP ----------------------------------------------------------------------------


def build_app(state: ServiceState) -> web.Application:
    """The aiohttp application serving ``state``'s services and the admin endpoints."""

    async def call(request: web.Request) -> web.Response:
        name, op = request.match_info["service"], request.match_info["op"]
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return web.json_response({"error": "the Idempotency-Key header is required"}, status=400)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        args = body.get("args") if isinstance(body, dict) else None
        if not isinstance(args, list):
            return web.json_response({"error": 'the body must be {"args": [...]}'}, status=400)
        status, payload = state.answer(name, op, args, key)
        delay_ms = state.service(name).faults.delay_ms
        if delay_ms and status != 503:
            await asyncio.sleep(delay_ms / 1000)
        return web.json_response(payload, status=status)

    async def faults(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            changes = dict(body)
            service = str(changes.pop("service"))
            current = state.set_faults(service, **changes)
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": f"bad faults request: {exc}"}, status=400)
        return web.json_response({"service": service, "faults": current})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats())

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_post("/_admin/faults", faults)
    app.router.add_get("/_admin/stats", stats)
    app.router.add_post("/_admin/reset", reset)
    app.router.add_post(r"/{service:[^_/][^/]*}/_replay", _replay(state))
    app.router.add_post(r"/{service:[^_/][^/]*}/{op}", call)
    return app


def _replay(state: ServiceState) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``POST /{service}/_replay``: restore journaled entries into the service's ledger."""

    async def replay(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        entries = body.get("entries") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            return web.json_response({"error": 'the body must be {"entries": [...]}'}, status=400)
        status, payload = state.restore(request.match_info["service"], entries)
        return web.json_response(payload, status=status)

    return replay


class ServiceHost:
    """Runs the services on 127.0.0.1 in a daemon thread with its own event loop.

    ``port=0`` binds a free port. `start` returns once the server listens; the other
    methods may be called from any thread and act on the server's loop.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_SERVICES, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = ServiceState(names)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, service: str) -> str:
        return f"{self.base_url}/{service}"

    def urls(self, names: Iterable[str] = DEFAULT_SERVICES) -> dict[str, str]:
        return {name: self.url(name) for name in names}

    def start(self, timeout_s: float = 10.0) -> ServiceHost:
        """Start serving; returns when listening (or raises what stopped it)."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready, failure), name="service-host", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError(f"the service host did not start within {timeout_s}s")
        if failure:
            raise failure[0]
        log.debug("services_started", url=self.base_url, services=sorted(self.state.services))
        return self

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except Exception as exc:  # the one catch-all: start() re-raises it (e.g. the port is taken)
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    async def _listen(self) -> None:
        self._runner = web.AppRunner(build_app(self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def _on_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the service host is not running")

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per service (see the module doc)."""
        return self._on_loop(self.state.stats)

    def set_faults(self, service: str, **changes: Any) -> dict[str, Any]:
        """Change faults of ``service``: outage, outage_s, delay_ms, drop_first, drop_one_in, reject_over, forget."""
        return self._on_loop(self.state.set_faults, service, **changes)

    def ledger(self, service: str) -> dict[str, Any]:
        """The results ``service`` answered with (2xx), by idempotency key."""
        return self._on_loop(self.state.ledger, service)

    def reset(self) -> None:
        """Clear counters, stored answers and faults."""
        self._on_loop(self.state.reset)

    def stop(self) -> None:
        """Stop serving and end the thread; idempotent."""
        loop, runner = self._loop, self._runner
        if loop is None or loop.is_closed():
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        log.debug("services_stopped", url=self.base_url)

    def __enter__(self) -> ServiceHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m cluster.demo.services --port N``: serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m cluster.demo.services", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--services", default=",".join(DEFAULT_SERVICES), help="comma-separated names")
    ns = parser.parse_args(argv)
    state = ServiceState(name for name in ns.services.split(",") if name)
    urls = {name: f"http://{ns.host}:{ns.port}/{name}" for name in state.services}
    print(json.dumps({"services": urls}), flush=True)
    web.run_app(build_app(state), host=ns.host, port=ns.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
