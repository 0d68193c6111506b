"""RayPools: the CommandActor pools of a coordinator's deployments, over Ray.

Each deployment's pool is spread one actor to a node (node-affinity scheduling per
alive node; Ray's ``"SPREAD"`` alone is best effort), ``command_actors`` actors, or
one per alive node when it is None. Ray restarts an actor whose node died on another
node; `respread` then brings the pool back to one actor per node as nodes join,
creating actors on nodes without one and retiring (once idle) those on crowded nodes.
Workers are indices that only grow: a retired worker's index is never reused, so the
dispatcher's slot counts stay valid. Survives a supervisor restart: the actors (named
``command-<deployment>-<n>``, detached), found again by `create`. Survives a
whole-cluster restart: each deployment's code packages, kept with the journal
(`actors.packages`) and uploaded again by `create` where the new cluster lacks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.channel import Channel, ChannelLost
from actors.command import RemoteCommandActor
from actors.journal import open_backend
from actors.messages import Dispatch
from actors.options import Options
from actors.packages import Packages
from actors.placement import COMMAND_PREFIX, actor_options
from actors.supervision.deployments import spread
from workflows.errors import WorkerLost

NODE_TIMEOUT_S = 60.0
UNAVAILABLE_TIMEOUT_S = 120.0
"""How long a batch is sent again to an actor being restarted before it counts as lost."""
UNAVAILABLE_RETRY_S = 0.5


@dataclass
class Worker:
    handle: Any
    deployment: str
    name: str
    node: str | None = None
    retired: bool = False
    channel: Channel | None = None
    """Where its batches go without a Ray call (`actors.channel`)."""


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in cast(Any, ray).nodes() if n["Alive"])


class RayPools:
    """`PoolPort` for the dispatcher and `PoolsPort` for `Deployments`."""

    def __init__(self, options: Options, log: Any, supervisor: Any) -> None:
        self.options = options
        self.log = log
        self.supervisor = supervisor
        self.workers: list[Worker] = []
        self.envs: dict[str, dict[str, Any] | None] = {}
        self.serial = 0
        self.busy: Callable[[int], bool] = lambda worker: False
        self.incarnation = ""
        self.size = 0
        """Workers ever made: indices only grow."""
        self.packages = Packages(lambda: open_backend(options.storage))

    def workers_of(self, deployment: str) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.deployment == deployment and not w.retired]

    def node_of(self, worker: int) -> str | None:
        return self.workers[worker].node

    def live(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if not w.retired]

    def counts(self, deployment: str) -> dict[str, int]:
        mine = [self.workers[i] for i in self.workers_of(deployment)]
        return {"actors": len(mine), "nodes": len({w.node for w in mine if w.node})}

    def handles(self) -> list[Any]:
        return [self.workers[i].handle for i in self.live()]

    async def run(self, worker: int, items: list[Dispatch]) -> None:
        """Run a batch on a worker; `WorkerLost` once its actor is gone for good.

        An actor that is being restarted raises `ActorUnavailableError`, and then Ray
        cannot say whether the call ran (it may run on the restarted actor later). Sent
        elsewhere, its attempts could run twice at once; so the batch is sent again to
        the same actor once it is back (its runner runs each attempt once), with each
        attempt reading its journaled steps. A batch the channel lost is sent so too.

        The batch goes on the actor's channel when it can carry it (`actors.channel`)."""
        channel = self.workers[worker].channel
        if channel is not None:
            try:
                await channel.call(pickle.dumps(items, protocol=5))
                return
            except ChannelLost:  # it may have run or be running: its attempts read their steps
                items = [dataclasses.replace(i, fresh=False) for i in items]
        deadline = time.monotonic() + UNAVAILABLE_TIMEOUT_S
        while True:
            try:
                await self.workers[worker].handle.run.remote(items)
                return
            except ActorUnavailableError as exc:
                if time.monotonic() > deadline:
                    raise WorkerLost(str(exc)) from exc
                items = [dataclasses.replace(i, fresh=False) for i in items]
                await asyncio.sleep(UNAVAILABLE_RETRY_S)
            except RayActorError as exc:
                raise WorkerLost(str(exc)) from exc

    async def stop(self, worker: int, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        try:
            await self.workers[worker].handle.stop.remote(items)
        except RayActorError as exc:
            raise WorkerLost(str(exc)) from exc

    async def reset(self, incarnation: str) -> None:
        self.incarnation = incarnation
        for handle in self.handles():
            with contextlib.suppress(RayActorError):  # a dead actor runs nothing; Ray restarts it empty
                await handle.reset.remote(incarnation)

    def _spawn(self, deployment: str, node: str | None, name: str | None = None) -> Worker:
        if name is None:
            self.serial += 1
            name = f"{COMMAND_PREFIX}{deployment}-{self.serial}"
        opts = actor_options(self.options, name)
        env = self.envs.get(deployment)
        if env is not None:
            opts["runtime_env"] = env
        if node is not None:  # soft: if the node dies, Ray restarts the actor elsewhere
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        handle = RemoteCommandActor.options(**opts).remote(self.options, self.log, self.supervisor, name)
        worker = Worker(handle, deployment, name, channel=Channel(handle))
        self.workers.append(worker)
        self.size = len(self.workers)
        return worker

    async def _locate(self, workers: list[Worker]) -> None:
        """Ask each worker its node (None while it is being restarted or placed)."""
        calls = [w.handle.node.remote() for w in workers]
        try:
            answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), NODE_TIMEOUT_S)
        except TimeoutError:
            answers = [None] * len(workers)
        for w, node in zip(workers, answers, strict=True):
            w.node = node if isinstance(node, str) else None

    async def create(self, deployment: str, runtime_env: dict[str, Any] | None) -> None:
        """The pool of a deployment: its actors found again (after a restart) or created, spread over nodes."""
        self.envs[deployment] = runtime_env
        await asyncio.to_thread(self.packages.restore, runtime_env)
        prefix = f"{COMMAND_PREFIX}{deployment}-"
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["namespace"] == self.options.namespace and a["name"].startswith(prefix))
        for name in names:
            self.serial = max(self.serial, int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else 0)
            self._spawn(deployment, None, name)
        if not names:
            nodes = await asyncio.to_thread(alive_nodes)
            want = self.options.command_actors or len(nodes)
            made = [self._spawn(deployment, nodes[i % len(nodes)] if nodes else None) for i in range(want)]
            await self._locate(made)
        else:
            await self._locate([w for w in self.workers if w.deployment == deployment])
        for handle in [w.handle for w in self.workers if w.deployment == deployment and self.incarnation]:
            with contextlib.suppress(RayActorError):
                await handle.reset.remote(self.incarnation)

    async def keep(self, runtime_env: dict[str, Any] | None) -> dict[str, str]:
        return await asyncio.to_thread(self.packages.keep, runtime_env)

    async def forget(self, blobs: list[str]) -> None:
        await asyncio.to_thread(self.packages.forget, blobs)

    async def importable(self, deployment: str, types: list[str]) -> dict[str, str | None]:
        """Asked of the deployment's actors in turn: one that dies or restarts meanwhile (a
        respread retired and ended it, or its node was lost) is passed over; `WorkerLost`
        when none answers (nothing is concluded about the types)."""
        asked: set[int] = set()
        lost: RayActorError | None = None
        while left := [i for i in self.workers_of(deployment) if i not in asked and self.workers[i].handle]:
            asked.add(left[0])
            try:
                answer: dict[str, str | None] = await self.workers[left[0]].handle.importable.remote(types)
                return answer
            except RayActorError as exc:
                lost = exc
        if lost is not None:
            raise WorkerLost(f"no CommandActor of deployment {deployment} answered: {lost}") from lost
        return dict.fromkeys(types, f"deployment {deployment} has no CommandActor")

    async def remove(self, deployment: str) -> None:
        for i in self.workers_of(deployment):
            self.workers[i].retired = True
            self._end(self.workers[i])
        self.envs.pop(deployment, None)

    async def respread(self) -> None:
        """One pass: nodes learnt, missing actors created, surplus ones retired and, once idle, ended."""
        live = [self.workers[i] for i in self.live()]
        await self._locate(live)
        nodes = await asyncio.to_thread(alive_nodes)
        for deployment in list(self.envs):
            mine = {i: self.workers[i].node for i in self.workers_of(deployment)}
            if any(node is None for node in mine.values()):
                continue  # an actor is being restarted: look again next pass
            create, retire = spread(self.options.command_actors, nodes, cast(dict[int, str], mine))
            made = [self._spawn(deployment, node) for node in create]
            await self._locate(made)
            for w in made:
                with contextlib.suppress(RayActorError):
                    await w.handle.reset.remote(self.incarnation)
            for i in retire:
                self.workers[i].retired = True
        for i, w in enumerate(self.workers):
            if w.retired and not self.busy(i) and w.handle is not None:
                self._end(w)
                w.handle = None

    @staticmethod
    def _end(worker: Worker) -> None:
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        with contextlib.suppress(ValueError, RayActorError):
            ray.kill(worker.handle, no_restart=True)
