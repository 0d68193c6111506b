"""Deployments: CommandActor pools, each with one runtime_env, and which one runs what.

The supervisor never imports a user's code: a command reaches it as a type name,
msgpack fields and the runtime_env of the job that submitted it. Code runs in
deployments. `Deployments` decides, without Ray, where a new workflow goes:

1. the deployments with the submitter's runtime_env, newest first, then the others,
   newest first; the first that can import the type takes it (answers are cached per
   (deployment, type): a deployment's code does not change);
2. none can: a deployment is created for the submitter's runtime_env (or reused, if
   one has it and says no, the type is `InvalidCommand` with the remedy);
3. a workflow stays on the deployment it started on for every attempt, retry and
   restart (`Submitted.deployment`); a deployment that has no unfinished workflow
   left and is the newest for none of its types is drained after ``grace_s``;
4. a deployment outlives its Ray cluster: its code packages (a job's ``gcs://``
   working_dir and py_modules, which live in the cluster's GCS) are kept in the
   journal's storage before its `Deployed` record is journaled, and uploaded again
   by a cluster that lacks them before its pool is created; the types it serves are
   journaled as they come, so a restart lists them.

Its ports: ``pools`` creates, asks and removes CommandActor pools and keeps their
packages (`PoolsPort`); ``journal`` appends the `Deployed` records a restart recreates
the pools from. Idempotent: `adopt` (a restart re-adopts what the journal holds).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from actors.records import Deployed, Record
from workflows.errors import InvalidCommand

log = structlog.get_logger("supervisor")

Env = dict[str, Any]


class PoolsPort(Protocol):
    async def create(self, deployment: str, runtime_env: Env | None) -> None: ...
    async def importable(self, deployment: str, types: list[str]) -> dict[str, str | None]:
        """Per type, None if the deployment's actors import it, else why not."""
        ...

    async def remove(self, deployment: str) -> None: ...
    def counts(self, deployment: str) -> dict[str, int]: ...
    async def keep(self, runtime_env: Env | None) -> dict[str, str]:
        """Store the runtime_env's code packages with the journal: ``gcs://`` URI -> blob name."""
        ...

    async def forget(self, blobs: list[str]) -> None:
        """Delete kept packages no deployment uses any more."""
        ...


def env_key(env: Mapping[str, Any] | None) -> str:
    """A runtime_env's identity: its canonical JSON (``{}`` for none)."""
    if not env:
        return "{}"  # most submits bring none: no JSON to write
    return json.dumps(dict(env), sort_keys=True, default=str)


def env_summary(env: Mapping[str, Any] | None) -> str:
    """One line for people: the working_dir, py_modules and pip, or ``-``."""
    env = env or {}
    parts = [f"{k}={env[k]}" for k in ("working_dir", "py_modules", "pip", "conda") if env.get(k)]
    return " ".join(parts) if parts else "-"


@dataclass
class Deployment:
    id: str
    runtime_env: Env | None
    created_at: float
    types: set[str] = field(default_factory=set)
    """The types it has been given workflows of."""
    answers: dict[str, str | None] = field(default_factory=dict)
    """Cached importability: type -> None (imports) or why not."""
    idle_since: float | None = None
    packages: dict[str, str] = field(default_factory=dict)
    """Its code packages kept with the journal: ``gcs://`` URI -> blob name."""

    def record(self, retired: bool = False) -> Deployed:
        return Deployed(self.id, self.runtime_env, self.created_at, retired, tuple(sorted(self.types)),
                        tuple(sorted(self.packages.items())))

    def describe(self, live: int, counts: Mapping[str, int]) -> dict[str, Any]:
        return {"id": self.id, "runtime_env": env_summary(self.runtime_env), "types": sorted(self.types),
                "unfinished": live, **counts, "created_at": self.created_at}


class Deployments:
    """The deployment registry and its routing and draining rules (see the module docstring)."""

    def __init__(self, pools: PoolsPort, append: Callable[[list[Record]], Awaitable[list[Any]]],
                 grace_s: float, clock: Callable[[], float] = time.time) -> None:
        self.pools = pools
        self.append = append
        self.grace_s = grace_s
        self.clock = clock
        self.by_id: dict[str, Deployment] = {}
        self.default = ""
        """The deployment serving the coordinator's own runtime_env, never drained."""

    def adopt(self, known: Mapping[str, Mapping[str, Any]]) -> None:
        """Take the deployments the journal holds (``Deployed`` records, by id)."""
        for dep_id, d in known.items():
            if dep_id not in self.by_id:
                self.by_id[dep_id] = Deployment(dep_id, d.get("runtime_env"), d.get("t", 0.0),
                                                set(d.get("types", [])), packages=dict(d.get("packages") or {}))

    def newest_first(self) -> list[Deployment]:
        return sorted(self.by_id.values(), key=lambda d: d.created_at, reverse=True)

    def with_env(self, env: Mapping[str, Any] | None) -> Deployment | None:
        key = env_key(env)
        return next((d for d in self.newest_first() if env_key(d.runtime_env) == key), None)

    async def deploy(self, env: Env | None) -> Deployment:
        """A new deployment with ``env`` (a new version: new submits of the types it
        imports go to it): journaled, then its pool created."""
        dep = Deployment(f"d-{uuid.uuid4().hex[:8]}", env, self.clock())
        dep.packages = await self.pools.keep(env)  # kept before journaled: a journaled deployment can be rebuilt
        await self.append([dep.record()])
        self.by_id[dep.id] = dep
        await self.pools.create(dep.id, env)
        log.info("deployment_created", deployment=dep.id, runtime_env=env_summary(env))
        return dep

    async def ensure_default(self, env: Env | None) -> Deployment:
        """The deployment for the coordinator's own runtime_env: the newest with it, or a new one."""
        dep = self.with_env(env) or await self.deploy(env)
        self.default = dep.id
        return dep

    async def _answers(self, dep: Deployment, types: set[str]) -> None:
        missing = [t for t in types if t not in dep.answers]
        if missing:
            dep.answers.update(await self.pools.importable(dep.id, missing))

    async def route(self, items: list[tuple[str, Env | None]]) -> list[str]:
        """The deployment of each new command (type name, submitter's runtime_env);
        `InvalidCommand` for a type nobody can import, before anything is journaled."""
        placed: dict[tuple[str, str], str] = {}
        for name, env in items:
            key = (name, env_key(env))
            if key not in placed:
                placed[key] = (await self._place(name, env)).id
        out = [placed[(name, env_key(env))] for name, env in items]
        grown: dict[str, Deployment] = {}
        for (name, _), dep_id in placed.items():
            dep = self.by_id[dep_id]
            if name not in dep.types:
                dep.types.add(name)
                grown[dep_id] = dep
        if grown:  # journaled before the submits that use it: a restart lists what it served
            await self.append([dep.record() for dep in grown.values()])
        return out

    async def _place(self, name: str, env: Env | None) -> Deployment:
        key = env_key(env)
        order = self.newest_first()
        order = [d for d in order if env_key(d.runtime_env) == key] + [d for d in order
                                                                      if env_key(d.runtime_env) != key]
        for dep in order:
            await self._answers(dep, {name})
            if dep.answers[name] is None:
                return dep
        if env and self.with_env(env) is None:
            dep = await self.deploy(env)
            await self._answers(dep, {name})
            if dep.answers[name] is None:
                return dep
        why = next((d.answers[name] for d in order if d.answers.get(name)), "not importable")
        raise InvalidCommand(f"command type {name!r} cannot be imported by any deployment ({why}): deploy code that "
                             "has it with cluster.deploy(runtime_env=...) or `coordinator deploy --working-dir DIR`, "
                             "or submit from a job whose working_dir has it")

    def newest_for(self, name: str) -> str | None:
        return next((d.id for d in self.newest_first() if name in d.types), None)

    def drainable(self, live: Mapping[str, int]) -> list[str]:
        """Deployments to remove now: none unfinished, newest for none of their types,
        not the default, idle for ``grace_s``."""
        now = self.clock()
        newest = {self.newest_for(t) for d in self.by_id.values() for t in d.types}
        out = []
        for dep in self.by_id.values():
            if live.get(dep.id, 0) or dep.id in newest or dep.id == self.default:
                dep.idle_since = None
                continue
            dep.idle_since = dep.idle_since if dep.idle_since is not None else now
            if now - dep.idle_since >= self.grace_s:
                out.append(dep.id)
        return out

    async def drain(self, live: Mapping[str, int]) -> list[str]:
        """Remove the drainable deployments: journaled as retired, then their actors killed."""
        gone = self.drainable(live)
        for dep_id in gone:
            dep = self.by_id.pop(dep_id)
            await self.append([dep.record(retired=True)])
            await self.pools.remove(dep_id)
            used = {blob for d in self.by_id.values() for blob in d.packages.values()}
            await self.pools.forget(sorted(set(dep.packages.values()) - used))
            log.info("deployment_drained", deployment=dep_id)
        return gone

    def listing(self, live: Mapping[str, int]) -> list[dict[str, Any]]:
        return [d.describe(live.get(d.id, 0), self.pools.counts(d.id)) for d in self.newest_first()]


def spread(target: int | None, alive: list[str], placed: Mapping[int, str]) -> tuple[list[str], list[int]]:
    """Where a pool's actors should be: ``target`` actors (None: one per alive node)
    spread evenly over ``alive`` nodes, given ``placed`` (worker -> node). Returns the
    nodes to create an actor on and the workers to retire (on crowded or dead nodes)."""
    if not alive:
        return [], []
    want = len(alive) if target is None else target
    on: dict[str, list[int]] = {n: [] for n in alive}
    gone: list[int] = []
    for worker, node in sorted(placed.items()):
        on.get(node, gone).append(worker)
    order = sorted(alive, key=lambda n: len(on[n]), reverse=True)  # crowded nodes keep the extra ones
    base, extra = divmod(want, len(alive))
    create: list[str] = []
    retire: list[int] = list(gone)
    for i, node in enumerate(order):
        quota = base + (1 if i < extra else 0)
        create += [node] * max(0, quota - len(on[node]))
        retire += on[node][quota:]
    return create, retire
