"""The console next to a coordinator: a detached actor ``console`` on the head node,
and the adapter that turns a SupervisorActor handle into a `Supervisor`."""

from __future__ import annotations

import builtins
from typing import Any, cast

import ray

from actors.options import Options
from actors.placement import HEAD, SUPERVISOR_NAME, actor_options
from cluster.console.server import ConsoleServer

CONSOLE = "console"


class RaySupervisor:
    """The SupervisorActor's public remote methods, awaited (`cluster.console.api.Supervisor`)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.handle.stats.remote())

    async def list(self, state: str | None, limit: int) -> builtins.list[dict[str, Any]]:
        return cast(builtins.list[dict[str, Any]], await self.handle.list.remote(state, limit))

    async def status(self, workflow_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self.handle.status.remote(workflow_id))

    async def outcomes(self, service: str, since_seq: int, limit: int) -> builtins.list[dict[str, Any]]:
        return cast(builtins.list[dict[str, Any]], await self.handle.outcomes.remote(service, since_seq, limit))

    async def page(self, state: str | None, type_part: str | None, cursor: str | None,
                   limit: int) -> dict[str, Any]:
        return cast(dict[str, Any], await self.handle.page.remote(state, type_part, cursor, limit))

    async def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        return cast(builtins.list[dict[str, Any]], await self.handle.history.remote(workflow_id))

    async def deployments(self) -> builtins.list[dict[str, Any]]:
        return cast(builtins.list[dict[str, Any]], await self.handle.deployments.remote())

    async def finished_counts(self) -> dict[str, int]:
        return cast(dict[str, int], await self.handle.finished_counts.remote())

    async def retry_now(self, workflow_id: str) -> bool:
        return bool(await self.handle.retry_now.remote(workflow_id))

    async def cancel(self, workflow_id: str, reason: str) -> bool:
        return bool(await self.handle.cancel.remote(workflow_id, reason))

    async def terminate(self, workflow_id: str, reason: str) -> bool:
        return bool(await self.handle.terminate.remote(workflow_id, reason))

    async def resume_workflow(self, workflow_id: str) -> bool:
        return bool(await self.handle.resume_workflow.remote(workflow_id))

    async def fork(self, workflow_id: str, from_step: int, new_workflow_id: str) -> str:
        return str(await self.handle.fork.remote(workflow_id, from_step, new_workflow_id))

    async def signal(self, workflow_id: str, name: str, payload: Any) -> bool:
        return bool(await self.handle.signal.remote(workflow_id, name, payload))

    async def suspend(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.handle.suspend.remote())

    async def resume(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.handle.resume.remote())


class ConsoleActor:
    """Serves the console of the coordinator in its namespace on ``Options.console_port``."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.server: ConsoleServer | None = None
        self.url = ""

    async def ready(self) -> str:
        """Start serving (once); the URL. Raises `OSError` if the port is taken."""
        if self.server is None:
            port = self.options.console_port
            if port is None:
                raise ValueError("Options.console_port is not set")
            handle = ray.get_actor(SUPERVISOR_NAME, namespace=self.options.namespace)
            server = ConsoleServer(RaySupervisor(handle), self.options.console_token)
            self.url = await server.start("127.0.0.1", port)
            self.server = server
        return self.url


RemoteConsoleActor: Any = cast(Any, ray.remote)(num_cpus=0, max_restarts=0)(ConsoleActor)


def start_console(options: Options) -> str:
    """Get or create the console actor of ``options.namespace`` and wait until it serves;
    its URL. The error that stopped it (a port in use: `OSError`) is raised here."""
    opts = {**actor_options(options, CONSOLE), "resources": {HEAD: 0.001}}
    handle = RemoteConsoleActor.options(**opts).remote(options)
    try:
        return cast(str, ray.get(handle.ready.remote()))
    except Exception as exc:
        ray.kill(handle, no_restart=True)
        cause = getattr(exc, "cause", None)
        raise cause if isinstance(cause, BaseException) else exc from None


def serve(namespace: str, host: str, port: int, token: str | None) -> None:
    """Serve the console of the running coordinator in ``namespace`` until interrupted
    (``coordinator console``); the driver must be connected to Ray."""
    import asyncio

    from cluster.console.server import serve_forever

    handle = ray.get_actor(SUPERVISOR_NAME, namespace=namespace)
    asyncio.run(serve_forever(RaySupervisor(handle), host, port, token))
