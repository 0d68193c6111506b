"""start, connect, stop: the driver's way to a coordinator."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import ray

from actors.options import Options
from actors.placement import SUPERVISOR_NAME, actor_options, is_coordinator_actor, journal_group_name
from actors.supervisor import RemoteSupervisorActor
from workflows.command import current_runtime_env
from workflows.errors import CoordinatorError, NotRunning


def _ensure_ray(options: Options | None = None) -> None:
    """Use the driver's Ray connection; start a local one only when there is none."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"namespace": options.namespace if options else "coordinator",
                              "log_to_driver": True, "configure_logging": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


def start(options: Options | None = None) -> Any:
    """Get or create the coordinator's detached actors; return the SupervisorActor handle.

    Raises `Fenced` if another coordinator holds ``options.storage``, `JournalCorrupt`
    if the journal cannot be recovered, `OSError` if ``options.console_port`` is taken;
    in each case nothing is left running.
    """
    options = options or Options()
    _ensure_ray(options)
    handle = RemoteSupervisorActor.options(**actor_options(options, SUPERVISOR_NAME)).remote(options)
    try:
        ray.get(handle.ready.remote())
        if options.console_port is not None:
            from cluster.console.actor import start_console

            start_console(options)
    except (CoordinatorError, ValueError, OSError):
        stop(options.namespace)
        raise
    return handle


def connect(namespace: str = "coordinator") -> Any:
    """The SupervisorActor handle of a running coordinator; `NotRunning` if there is none."""
    _ensure_ray(Options(namespace=namespace))
    try:
        return ray.get_actor(SUPERVISOR_NAME, namespace=namespace)
    except ValueError:
        raise NotRunning(f"no coordinator is running in namespace {namespace!r}") from None


def deploy(runtime_env: dict[str, Any] | None = None, namespace: str = "coordinator") -> dict[str, Any]:
    """A new deployment of the running coordinator: a CommandActor pool with ``runtime_env``
    (default: this job's, its ``working_dir`` already uploaded). A new version: new submits
    of the types it imports go to it; workflows started elsewhere finish where they started."""
    sup = connect(namespace)
    env = dict(runtime_env) if runtime_env is not None else current_runtime_env()
    answer: dict[str, Any] = ray.get(sup.deploy.remote(env))
    return answer


def deployments(namespace: str = "coordinator") -> list[dict[str, Any]]:
    """The running coordinator's deployments, newest first."""
    listed: list[dict[str, Any]] = ray.get(connect(namespace).deployments.remote())
    return listed


def stop(namespace: str = "coordinator") -> bool:
    """End the coordinator's actors in ``namespace`` (the journal stays); False if none ran."""
    _ensure_ray(Options(namespace=namespace))
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]
    for name in names:
        if is_coordinator_actor(name) or name == "console":
            with contextlib.suppress(ValueError):  # ended meanwhile
                ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    with contextlib.suppress(ValueError):  # no journal placement group: one replica, or removed
        ray.util.remove_placement_group(ray.util.get_placement_group(journal_group_name(namespace)))
    return SUPERVISOR_NAME in names
