"""Running a coordinator: `Options`, `start`, `connect`, `stop`."""

from actors.options import Options
from cluster.api import connect, deploy, deployments, start, stop

__all__ = ["Options", "connect", "deploy", "deployments", "start", "stop"]
