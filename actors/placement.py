"""Where the coordinator's actors run and under which names: one rule for the shells
that create them and for `cluster.start`/`connect`/`stop` that find them.

Every actor is named and detached in ``options.namespace``; the journal replicas of a
replicated journal are spread over nodes by a placement group.
"""

from __future__ import annotations

from typing import Any, cast

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.log import RemoteLogActor
from actors.options import Options

SUPERVISOR_NAME = "supervisor"
LOG_PREFIX = "log-"
COMMAND_PREFIX = "command-"


def log_actor_name(replica: int) -> str:
    return f"{LOG_PREFIX}{replica}"


def command_actor_name(index: int) -> str:
    return f"{COMMAND_PREFIX}{index}"


def is_coordinator_actor(name: str) -> bool:
    """Whether a named actor of a coordinator's namespace is one of its own."""
    return name == SUPERVISOR_NAME or name.startswith((LOG_PREFIX, COMMAND_PREFIX))


def journal_group_name(namespace: str) -> str:
    """The placement group that spreads the journal replicas over nodes."""
    return f"{namespace}-journal"


def actor_options(options: Options, name: str) -> dict[str, Any]:
    """Ray options of one of the coordinator's actors: named, detached, got if it exists."""
    opts: dict[str, Any] = {"name": name, "namespace": options.namespace, "lifetime": "detached",
                            "get_if_exists": True}
    if options.runtime_env is not None:
        opts["runtime_env"] = dict(options.runtime_env)
    return opts


HEAD = "node:__internal_head__"


async def journal_replicas(options: Options) -> Any:
    """Get or create the LogActors: the leader (log-0) and ``replicas - 1`` followers,
    one per node (a STRICT_SPREAD placement group) unless ``colocated_replicas``."""
    if options.replicas == 1:
        return RemoteLogActor.options(**actor_options(options, log_actor_name(0))).remote(options, 0)
    placement: list[dict[str, Any]] = [{} for _ in range(options.replicas)]
    if not options.colocated_replicas:
        try:
            # A restarted supervisor finds the group (and its replicas) as they are: a
            # bundle whose node died waits for a new node; the others go on.
            group = ray.util.get_placement_group(journal_group_name(options.namespace))
        except ValueError:
            alive = [n for n in cast(Any, ray).nodes() if n["Alive"]]
            if len(alive) < options.replicas:
                raise ValueError(f"Options.replicas={options.replicas} needs as many Ray nodes, {len(alive)} alive; "
                                 "set colocated_replicas=True to run replicas on one node (tests only)") from None
            # The leader (bundle 0) lives on the head node, beside the GCS: losing that
            # node stops the Ray cluster itself, so any node loss Ray survives leaves
            # the leader up, and the followers elsewhere keep a majority.
            bundles = [{"CPU": 0.01, HEAD: 0.001}] + [{"CPU": 0.01}] * (options.replicas - 1)
            group = ray.util.placement_group(bundles, strategy="STRICT_SPREAD",
                                             name=journal_group_name(options.namespace), lifetime="detached")
            await group.ready()
        placement = [{"num_cpus": 0.01, "resources": {HEAD: 0.001} if i == 0 else {},
                      "scheduling_strategy": PlacementGroupSchedulingStrategy(group, i)}
                     for i in range(options.replicas)]
    followers = [RemoteLogActor.options(**actor_options(options, log_actor_name(i)), **placement[i]).remote(options, i)
                 for i in range(1, options.replicas)]
    leader = actor_options(options, log_actor_name(0))
    return RemoteLogActor.options(**leader, **placement[0]).remote(options, 0, followers)
