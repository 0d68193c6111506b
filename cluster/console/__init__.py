"""The web console: an overview of a coordinator, its workflows and their steps, and
the operator's actions (suspend and resume intake; retry, cancel, terminate, resume,
fork or signal a workflow), served by aiohttp from plain HTML, CSS and JS.

`ConsoleServer` serves it in the current event loop (the ``coordinator console``
command); `cluster.start` serves it from a detached actor when `Options.console_port`
is set. It reads and acts through the SupervisorActor's public remote methods only.
"""

from cluster.console.api import ConsoleApi, Supervisor
from cluster.console.server import TOKEN_HEADER, ConsoleServer, make_app

__all__ = ["TOKEN_HEADER", "ConsoleApi", "ConsoleServer", "Supervisor", "make_app"]
