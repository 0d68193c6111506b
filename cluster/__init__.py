"""Running a coordinator: `Options`, `start`, `connect`, `stop`."""

from cluster.api import connect, start, stop
from cluster.options import Options

__all__ = ["Options", "connect", "start", "stop"]
