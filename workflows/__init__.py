"""What a workflow author imports: `Command`, `Context`, `Delayed`, `Blocked`, errors."""

from workflows.command import Command
from workflows.context import Context
from workflows.errors import Blocked, CoordinatorError, Delayed

__all__ = ["Blocked", "Command", "Context", "CoordinatorError", "Delayed"]
