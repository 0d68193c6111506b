"""What a workflow author imports: `Command`, `Context`, `Delayed`, `Blocked`, errors, `RetryPolicy`."""

from workflows.command import Command
from workflows.context import Context
from workflows.errors import Blocked, CoordinatorError, Delayed
from workflows.policy import RetryPolicy

__all__ = ["Blocked", "Command", "Context", "CoordinatorError", "Delayed", "RetryPolicy"]
