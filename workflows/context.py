"""`Context`: what a running workflow sees of the coordinator.

A context belongs to one attempt of one workflow. Its outcome list is restored from
the journal before the attempt starts, so ``step`` replays what was already done and
calls services only for steps that have no outcome yet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import structlog

from workflows.errors import NonDeterminism


class Outcome(NamedTuple):
    """One journaled step result: its index, the service that produced it, the value."""

    step: int
    service: str
    value: Any


class Recorder(Protocol):
    """Journals one outcome durably and returns the value the journal holds for it.

    The journal keeps the first outcome of each step index: if another attempt got
    there first, its value comes back and this one's is dropped.
    """

    async def record(self, workflow_id: str, kind: str, step: int, service: str, value: Any) -> Any: ...


class Context:
    """The running workflow's view: identity, attempt, outcomes, services, logger."""

    def __init__(
        self,
        workflow_id: str,
        attempt: int,
        outcomes: list[Outcome],
        recorder: Recorder,
        gateway: Any = None,
        *,
        compensations: list[Outcome] | None = None,
        compensating: bool = False,
    ) -> None:
        self.workflow_id = workflow_id
        self.attempt = attempt
        self._outcomes = outcomes
        self._compensations = compensations if compensations is not None else []
        self._compensating = compensating
        self._recorder = recorder
        self._gateway = gateway
        self._cursor = 0
        self._log: Any = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to this workflow and attempt (made on first use)."""
        if self._log is None:
            self._log = structlog.get_logger("workflow").bind(workflow_id=self.workflow_id, attempt=self.attempt)
        return self._log

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """The journaled outcomes of ``exec``, in step order (read-only)."""
        return tuple(self._outcomes)

    @property
    def compensations(self) -> tuple[Outcome, ...]:
        """The journaled outcomes of ``compensate`` so far."""
        return tuple(self._compensations)

    @property
    def gateway(self) -> Any:
        """The service gateway, bound to this context so calls carry its idempotency key."""
        bind = getattr(self._gateway, "bind", None)
        return bind(self) if bind is not None else self._gateway

    def key(self, step: int | None = None) -> str:
        """The idempotency key of a step (default: the step about to run)."""
        index = self._cursor if step is None else step
        if self._compensating:
            return f"{self.workflow_id}/compensate/{index}"
        return f"{self.workflow_id}/{index}"

    def _current(self) -> list[Outcome]:
        return self._compensations if self._compensating else self._outcomes

    async def record(self, service: str, value: Any) -> Any:
        """Journal ``value`` as the next outcome durably, then append it; returns it."""
        current = self._current()
        index = len(current)
        kind = "compensation" if self._compensating else "outcome"
        stored = await self._recorder.record(self.workflow_id, kind, index, service, value)
        current.append(Outcome(index, service, stored))
        self._cursor = index + 1
        return stored

    async def step(self, service: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run step *i*: the journaled outcome if there is one, else call ``fn`` and record."""
        current = self._current()
        index = self._cursor
        if index < len(current):
            done = current[index]
            if done.service != service:
                raise NonDeterminism(
                    f"step {index} of {self.workflow_id} recorded service {done.service!r}, "
                    f"replay asked for {service!r}"
                )
            self._cursor = index + 1
            return done.value
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return await self.record(service, value)
