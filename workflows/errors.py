"""Every error the coordinator raises or understands, rooted at `CoordinatorError`.

Ray pickles what an actor raises and re-raises it in the caller, so each error keeps
its constructor arguments in ``args`` and rebuilds itself from them (``__reduce__``):
an error that crosses a process boundary arrives with the same type and fields.
"""

from __future__ import annotations

from typing import Any


class CoordinatorError(Exception):
    """Root of every coordinator error."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args)


# --- raised by workflow code -------------------------------------------------------


class Delayed(CoordinatorError):
    """A service did not answer: the step's outcome is unknown; park and retry."""


class Blocked(CoordinatorError):
    """A service is out for long (its circuit breaker is open): suspend intake."""


# --- raised to clients ---------------------------------------------------------------


class InvalidCommand(CoordinatorError, ValueError):
    """The command cannot be journaled: bad type, bad fields, too large, id reused."""


class Suspended(CoordinatorError):
    """Intake is closed while a service is out; retry the submit later."""


class AtCapacity(CoordinatorError):
    """MaxCmds unfinished commands are admitted and none finished in time."""


class UnknownWorkflow(CoordinatorError, KeyError):
    """No workflow with this id was ever submitted (or it was compacted away)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown workflow"


class NotRunning(CoordinatorError):
    """No coordinator runs in this namespace."""


class CommandFailed(CoordinatorError):
    """The workflow raised a non-retryable error; carries the original's description.

    ``error_type`` is the original exception's ``module.QualName``, ``message`` its
    ``str()``, ``traceback`` the formatted traceback text from the CommandActor.
    """

    def __init__(self, workflow_id: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(workflow_id, error_type, message, traceback)
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"workflow {self.workflow_id} failed: {self.error_type}: {self.message}"


class DeadlineExceeded(CoordinatorError):
    """A command's `deadline_s` passed while it was still being retried."""


class RetriesExhausted(CoordinatorError):
    """A command's retry policy allowed no more attempts (``max_attempts``)."""


class Cancelled(CoordinatorError):
    """An operator cancelled (or terminated) the workflow: raised in a running attempt
    at its next step boundary, and named by `CommandFailed` of its result."""


def cancel_error(reason: str, terminate: bool) -> dict[str, str]:
    """A cancelled (or terminated) workflow's error, as journaled."""
    what = "terminated" if terminate else "cancelled"
    return {"type": f"{__name__}.Cancelled", "message": f"{what}: {reason}" if reason else what, "traceback": ""}


# --- journal -------------------------------------------------------------------------


class JournalError(CoordinatorError):
    """Root of the journal's errors."""


class JournalCorrupt(JournalError):
    """A record inside the log failed its checksum or could not be decoded."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.path = path
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"journal corrupt at {self.path} offset {self.offset}: {self.reason}"


class Fenced(JournalError):
    """Another coordinator holds this storage (a newer epoch); this one must not write."""


class JournalUnavailable(JournalError):
    """Too few journal replicas are alive to make a write durable."""


# --- raised while running a workflow --------------------------------------------------


class NonDeterminism(CoordinatorError):
    """A replayed step asked for another service than the journal recorded."""


class ConcurrentStep(CoordinatorError):
    """A step was made or started while another step of the same workflow was in
    flight outside one `Context.gather`, or steps were awaited out of the order they
    were made: their step indices (and idempotency keys) would depend on timing."""


class PayloadTooLarge(CoordinatorError):
    """An outcome or result cannot be journaled: not encodable, or over the size limit."""


class WorkerLost(CoordinatorError):
    """A CommandActor died (or its node did) while running a dispatch batch."""


# --- the service gateway --------------------------------------------------------------


class UnknownService(CoordinatorError, LookupError):
    """A workflow asked for a service the gateway has no address for (a bug: not retried)."""

    def __init__(self, service: str, known: tuple[str, ...]) -> None:
        super().__init__(service, known)
        self.service = service
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "none configured"
        return f"unknown service {self.service!r}; known services: {known}"


class ServiceError(CoordinatorError):
    """A service answered with something the gateway cannot use; not retried.

    ``status`` is the HTTP status (0 when there is none), ``error`` the service's text.
    """

    def __init__(self, service: str, op: str, status: int, error: str) -> None:
        super().__init__(service, op, status, error)
        self.service = service
        self.op = op
        self.status = status
        self.error = error

    def __str__(self) -> str:
        return f"{self.service}.{self.op} answered {self.status}: {self.error}"


class ServiceRejected(ServiceError):
    """The service refused the call (HTTP 4xx): a definite answer, so not retried.

    The command fails and its ``compensate`` runs.
    """
