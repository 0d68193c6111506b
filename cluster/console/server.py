"""The console's HTTP server (aiohttp): the page, its static files and the JSON API.

GETs are open to whoever reaches the port (bind it to 127.0.0.1 unless a proxy in
front of it authenticates). POSTs, the operator actions, need the operator token in
the ``X-Console-Token`` header, compared in constant time; a console started without
a token is read-only and refuses every POST with 403. The per-workflow actions
(cancel, terminate, resume-workflow, fork, signal) take a JSON object and answer one:
400 names what is wrong with the input, 404 an unknown workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from cluster.console.api import ConsoleApi, Supervisor
from workflows.errors import CoordinatorError

TOKEN_HEADER = "X-Console-Token"
STATIC = Path(__file__).parent / "static"
SAMPLE_INTERVAL_S = 1.0
READ_ONLY = ("This console is read-only: it was started without an operator token "
             "(coordinator console --token-env VAR, or Options.console_token).")
BAD_TOKEN = "Operator token missing or wrong: enter it in the token field at the top right."
BODY_MAX_BYTES = 2 << 20
"""A POST's largest body: a signal's payload (at most `Options.max_payload_bytes`, 1 MiB
by default, as msgpack) as JSON text."""
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cause(exc: BaseException) -> BaseException:
    """The error an actor raised, without Ray's remote traceback around it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=repr))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; errors as JSON ``{"error": ...}``."""
    try:
        response = await handler(request)
    except web.HTTPException:
        raise
    except KeyError as exc:  # UnknownWorkflow
        response = _error(404, str(_cause(exc)).strip("'\""))
    except ValueError as exc:
        response = _error(400, str(_cause(exc)))
    except CoordinatorError as exc:
        response = _error(503, f"{type(_cause(exc)).__name__}: {_cause(exc)}")
    except Exception as exc:  # the coordinator is down or restarting: the page says so and retries
        log.warning("console request %s failed: %r", request.path, exc)
        response = _error(503, f"coordinator unavailable: {type(_cause(exc)).__name__}")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is an empty object)."""
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _refused(request: web.Request, expected: bytes | None) -> web.Response | None:
    """403 unless the request carries the operator token (``expected``; None: read-only)."""
    if expected is None:
        return _error(403, READ_ONLY)
    given = request.headers.get(TOKEN_HEADER, "").encode()
    if not hmac.compare_digest(given, expected):
        return _error(403, BAD_TOKEN)
    return None


def make_app(api: ConsoleApi, token: str | None) -> web.Application:
    """The console as an aiohttp application over ``api``; ``token`` None = read-only."""
    expected = token.encode() if token else None

    async def index(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def overview(_: web.Request) -> web.Response:
        return _json(await api.overview())

    async def workflows(request: web.Request) -> web.Response:
        q = request.query
        return _json(await api.workflows(q.get("state") or None, q.get("type") or None, q.get("id") or None,
                                         _int(request, "limit", 50), q.get("cursor") or None,
                                         _int(request, "offset", 0)))

    async def deployments(_: web.Request) -> web.Response:
        return _json(await api.deployments())

    async def workflow(request: web.Request) -> web.Response:
        wid = request.query.get("id", "")
        if not wid:
            raise ValueError("id is required")
        return _json(await api.workflow(wid))

    def refused(request: web.Request) -> web.Response | None:
        return _refused(request, expected)

    async def action(request: web.Request) -> web.Response:
        return refused(request) or _json({"stats": await api.act(request.match_info["action"])})

    async def retry_now(request: web.Request) -> web.Response:
        return refused(request) or _json(await api.retry_now(request.query.get("id", "")))

    operations = {"cancel": api.operations.cancel, "terminate": api.operations.terminate,
                  "resume-workflow": api.operations.resume_workflow, "fork": api.operations.fork,
                  "signal": api.operations.signal}

    async def operate(request: web.Request) -> web.Response:
        denied = refused(request)
        if denied is not None:
            return denied
        return _json(await operations[request.match_info["op"]](await _body(request)))

    app = web.Application(middlewares=[_guard], client_max_size=BODY_MAX_BYTES)
    app.router.add_get("/", index)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/workflows", workflows)
    app.router.add_get("/api/workflow", workflow)
    app.router.add_get("/api/deployments", deployments)
    app.router.add_post("/api/{action:suspend|resume}", action)
    app.router.add_post("/api/retry-now", retry_now)
    app.router.add_post("/api/{op:" + "|".join(operations) + "}", operate)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app


class ConsoleServer:
    """A running console: the site, and a task sampling stats for the throughput graph."""

    def __init__(self, sup: Supervisor, token: str | None = None) -> None:
        self.api = ConsoleApi(sup, read_only=not token)
        self.app = make_app(self.api, token)
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._sampler: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind ``host:port`` (0: a free port) and serve; the URL. `OSError` if the port is taken."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._sampler = asyncio.create_task(self._sample())
        return f"http://{host}:{self.port}/"

    async def _sample(self) -> None:
        while True:
            try:
                await self.api.sample()
            except Exception as exc:  # down for now: sample again on the next tick
                log.debug("console stats sample failed: %r", exc)
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.runner is not None:
            await self.runner.cleanup()


async def serve_forever(sup: Supervisor, host: str, port: int, token: str | None) -> None:
    server = ConsoleServer(sup, token)
    url = await server.start(host, port)
    print(f"console at {url} ({'operator token required for actions' if token else 'read-only'})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
