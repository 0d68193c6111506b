"""The service gateway: what a workflow calls as ``ctx.gateway.<service>.<op>(*args)``.

`HttpGateway` speaks to plain HTTP services. A call is ``POST {base}/{op}`` with the
JSON body ``{"args": [...]}`` and the header ``Idempotency-Key: <ctx.key()>``; the
answer is the ``"result"`` field of the JSON response. How a failure maps to the
coordinator's errors:

- no answer (connection refused or reset, timeout) or HTTP 502/503/504: `Delayed`,
  because whether the service did the work is unknown and a retry with the same key
  is safe;
- that failure, or any call, while the service's circuit breaker is open: `Blocked`;
- HTTP 4xx: `ServiceRejected`, the service's definite "no" (the command fails and
  compensates);
- any other answer the gateway cannot use (other 5xx, a body that is not the
  expected JSON): `ServiceError`, also non-retryable.

The breakers live in the gateway instance, so in one process: each CommandActor
process judges a service by what it has seen itself.

`LocalGateway` calls plain Python objects instead, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import aiohttp
import structlog

from workflows.errors import Blocked, Delayed, ServiceError, ServiceRejected, UnknownService

log = structlog.get_logger("gateway")

TRANSIENT_STATUS = frozenset({502, 503, 504})
"""HTTP statuses that mean "the service did not answer": the call is retried."""


# --- the bound view a workflow sees --------------------------------------------------


class ServiceMap(Protocol):
    """What `HttpGateway` reads of its options (`actors.options.Options` has it)."""

    @property
    def services(self) -> Mapping[str, str]: ...


class KeySource(Protocol):
    """Anything that names the idempotency key of the step about to run (a `Context`)."""

    def key(self) -> str: ...


class Caller(Protocol):
    """A gateway backend: calls ``op`` of ``service`` once, under idempotency ``key``."""

    def known_services(self) -> tuple[str, ...]: ...

    async def call(self, service: str, op: str, args: list[Any], key: str) -> Any: ...


class BoundGateway:
    """``gateway.bind(ctx)``: attribute access picks a service, then an operation."""

    def __init__(self, caller: Caller, ctx: KeySource) -> None:
        self._caller = caller
        self._ctx = ctx

    def __getattr__(self, service: str) -> ServiceProxy:
        if service.startswith("_"):
            raise AttributeError(service)
        known = self._caller.known_services()
        if service not in known:
            raise UnknownService(service, known)
        return ServiceProxy(self._caller, self._ctx, service)


class ServiceProxy:
    """One service of a bound gateway; ``proxy.op`` is an `Operation`."""

    def __init__(self, caller: Caller, ctx: KeySource, service: str) -> None:
        self._caller = caller
        self._ctx = ctx
        self._service = service

    def __getattr__(self, op: str) -> Operation:
        if op.startswith("_"):
            raise AttributeError(op)
        return Operation(self._caller, self._ctx, self._service, op)


@dataclass(frozen=True)
class Operation:
    """A callable service operation; calling it returns an awaitable of the result."""

    caller: Caller
    ctx: KeySource
    service: str
    op: str

    def __call__(self, *args: Any) -> Coroutine[Any, Any, Any]:
        # The key is read now, not when the coroutine first runs: ctx.step calls us
        # right before it awaits, while its cursor points at this step.
        return self.caller.call(self.service, self.op, list(args), self.ctx.key())


# --- circuit breaker -----------------------------------------------------------------


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Per-service circuit breaker.

    Closed: calls pass; ``failures`` consecutive failures open it. Open: calls are
    refused until ``cooldown_s`` has passed, then it is half-open: exactly one call
    (the probe) passes, the others are refused; the probe's success closes it, its
    failure opens it again for another cooldown.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float]) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self._opened_at = 0.0
        self._probing = False

    def admit(self) -> bool:
        """May a call go through now? (Claims the probe when half-open.)"""
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self._probing = False

    def failed(self) -> bool:
        """Count a failure; True if the breaker is open now."""
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive >= self.failures:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probing = False
            return True
        return False

    def abandoned(self) -> None:
        """A call ended with neither verdict (cancelled): free the probe slot."""
        self._probing = False


# --- HTTP ----------------------------------------------------------------------------


class HttpGateway:
    """Calls HTTP services named in ``options.services`` (name -> base URL).

    Safe to share between the workflows of one process. It keeps one
    ``aiohttp.ClientSession`` per event loop, made on first use; `close` closes the
    running loop's one.
    """

    def __init__(
        self,
        options: ServiceMap,
        *,
        timeout_s: float = 2.0,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options = options
        self.services: dict[str, str] = {name: url.rstrip("/") for name, url in dict(options.services).items()}
        self.timeout_s = timeout_s
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Sessions and breakers belong to a process: a copy starts fresh.
        kwargs = {
            "timeout_s": self.timeout_s,
            "breaker_failures": self.breaker_failures,
            "breaker_cooldown_s": self.breaker_cooldown_s,
        }
        return (_rebuild_http_gateway, (self._options, kwargs))

    def bind(self, ctx: KeySource) -> BoundGateway:
        return BoundGateway(self, ctx)

    def known_services(self) -> tuple[str, ...]:
        return tuple(sorted(self.services))

    def breaker(self, service: str) -> Breaker:
        found = self._breakers.get(service)
        if found is None:
            found = self._breakers[service] = Breaker(self.breaker_failures, self.breaker_cooldown_s, self._clock)
        return found

    async def call(self, service: str, op: str, args: list[Any], key: str) -> Any:
        """POST ``{"args": args}`` to ``{base}/{op}`` under ``key``; return its ``"result"``.

        Raises `UnknownService`, `Blocked`, `Delayed`, `ServiceRejected` or `ServiceError`.
        """
        base = self.services.get(service)
        if base is None:
            raise UnknownService(service, self.known_services())
        breaker = self.breaker(service)
        if not breaker.admit():
            raise Blocked(f"{service}.{op}: circuit breaker is open")
        try:
            status, body = await self._post(f"{base}/{op}", args, key)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            self._transient_failure(breaker, service, op, str(exc) or type(exc).__name__, exc)
        except BaseException:
            breaker.abandoned()  # cancelled or a bug: no verdict on the service
            raise
        if status in TRANSIENT_STATUS:
            self._transient_failure(breaker, service, op, f"HTTP {status}: {_error_text(body)}", None)
        breaker.succeeded()  # any other answer, a 4xx included, shows the service is up
        return _result(service, op, status, body)

    def _transient_failure(
        self, breaker: Breaker, service: str, op: str, cause: str, exc: BaseException | None
    ) -> NoReturn:
        """Count a no-answer against the breaker; raise `Blocked` if that opened it, else `Delayed`."""
        if breaker.failed():
            log.warning("breaker_opened", service=service, op=op, cause=cause, failures=breaker.consecutive)
            opened = f"circuit breaker opened after {breaker.consecutive} failures"
            raise Blocked(f"{service}.{op}: {opened} ({cause})") from exc
        log.info("service_delayed", service=service, op=op, cause=cause)
        raise Delayed(f"{service}.{op} did not answer: {cause}") from exc

    async def _post(self, url: str, args: list[Any], key: str) -> tuple[int, Any]:
        async with self._session().post(url, json={"args": args}, headers={"Idempotency-Key": key}) as resp:
            text = await resp.text()
            return resp.status, _parse_json(text)

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            self._forget_closed_loops()
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            session = self._sessions[loop] = aiohttp.ClientSession(timeout=timeout)
        return session

    def _forget_closed_loops(self) -> None:
        # A session of a closed loop cannot be closed any more; only drop it.
        for loop in [loop for loop in self._sessions if loop.is_closed()]:
            del self._sessions[loop]

    async def close(self) -> None:
        """Close the running loop's session (a later call makes a new one)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
        self._forget_closed_loops()


def _rebuild_http_gateway(options: ServiceMap, kwargs: dict[str, Any]) -> HttpGateway:
    return HttpGateway(options, **kwargs)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:500] if body is not None else "(no body)"


def _result(service: str, op: str, status: int, body: Any) -> Any:
    """Map a non-transient HTTP answer to the call's result or error."""
    if 400 <= status < 500:
        raise ServiceRejected(service, op, status, _error_text(body))
    if status < 200 or status >= 300:
        raise ServiceError(service, op, status, _error_text(body))
    if not isinstance(body, dict) or "result" not in body:
        raise ServiceError(service, op, status, f"response has no 'result' field: {str(body)[:200]}")
    return body["result"]


# --- in-process ----------------------------------------------------------------------


class LocalGateway:
    """Calls Python objects: ``ctx.gateway.flights.reserve(x)`` runs
    ``services["flights"].reserve(x, key=ctx.key())`` (plain or async).

    Whatever the method raises goes to the workflow as is, so a fake service raises
    `Delayed`, `Blocked` or any other error itself.
    """

    def __init__(self, services: Mapping[str, Any]) -> None:
        self.services = dict(services)

    def bind(self, ctx: KeySource) -> BoundGateway:
        return BoundGateway(self, ctx)

    def known_services(self) -> tuple[str, ...]:
        return tuple(sorted(self.services))

    async def call(self, service: str, op: str, args: list[Any], key: str) -> Any:
        target = self.services.get(service)
        if target is None:
            raise UnknownService(service, self.known_services())
        value = getattr(target, op)(*args, key=key)
        if inspect.isawaitable(value):
            value = await value
        return value
