"""SupervisorActor: the coordinator's front door, a thin Ray shell over `SupervisorCore`.

Owns: admission (MaxCmds), the suspension mode, the retry timers, dispatch to the
CommandActor pool, and result futures. It is detached, named and restarted by Ray
(``max_restarts=-1``); a restart rebuilds all of that from the journal. Survives its
death: everything journaled, i.e. every acknowledged submit and every outcome.
Idempotent: ``submit`` with the same id and command, ``suspend``, ``resume``.
"""

from __future__ import annotations

import asyncio
import builtins
import pickle
import time
from typing import Any, cast

import ray
import structlog

from actors import logs
from actors import metrics as m
from actors.batching import Batcher
from actors.channel import Channel, ChannelServer
from actors.journal.sealed import SealedReader
from actors.log import append_within
from actors.options import Options
from actors.placement import journal_replicas, log_actor_name
from actors.pools import RayPools
from actors.records import Ended, Record, Report, Steps
from actors.supervision.deployments import Deployments
from actors.supervision.supervisor import SupervisorCore
from actors.tuning import hot, tune_gc
from actors.workflow_state import Workflow
from workflows.command import current_runtime_env
from workflows.context import Outcome
from workflows.errors import CoordinatorError

POOL_TEND_S = 1.0
CHANNEL_METHODS = ("report", "submit_many", "wait")
"""The supervisor's calls its channel carries: the hot ones, each idempotent when sent again."""
"""How often the pools are re-spread over the nodes and unused deployments drained."""
POOL_READY_TIMEOUT_S = 120.0
"""How long start-up waits for CommandActors to say whether they can run workflows;
one not placed by then (its node is gone) is left to dispatch, which handles lost actors."""


async def pool_fault(pool: list[Any], timeout_s: float = POOL_READY_TIMEOUT_S) -> str | None:
    """Why the CommandActors cannot run workflows (their gateway cannot be built), or None.

    A dead or unplaced actor is no fault here: Ray restarts it, and dispatch requeues
    what it loses."""
    calls = [handle.ready.remote() for handle in pool]
    try:
        answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout_s)
    except TimeoutError:
        return None
    return next((a for a in answers if isinstance(a, str)), None)


LEADER_CHECK_S = 1.0
"""How often, at most, the supervisor asks the LogActor for its pid again when the
storage's lock names another process (`RayJournal.finished_here`)."""


class RayJournal:
    """The supervisor's port to the LogActor; its appends ride in batches. With
    ``sealed``, long-finished workflows are read from the leader's files here."""

    def __init__(self, handle: Any, append_timeout_s: float, sealed: SealedReader | None = None) -> None:
        self.handle = handle
        self.append_timeout_s = append_timeout_s
        self.sealed = sealed
        self._batcher: Batcher[Record] = Batcher(self._send)
        self._channel = Channel(handle)
        self._checked = 0.0
        self._checking: asyncio.Task[None] | None = None

    def finished_here(self, workflow_id: str) -> Workflow | None:
        if self.sealed is None:
            return None
        found = self.sealed.finished(workflow_id)
        if self.sealed.stale and self._checking is None and time.monotonic() - self._checked > LEADER_CHECK_S:
            self._checked = time.monotonic()
            self._checking = asyncio.get_running_loop().create_task(self._check_leader())
        return found

    async def _check_leader(self) -> None:
        """Learn the leader's pid again (it restarted): its storage read here once more."""
        try:
            info = await self.handle.info.remote()
            if self.sealed is not None and info.get("storage") == "file://" + self.sealed.root:
                self.sealed.leader_pid = info.get("pid", -1)
        except Exception as exc:  # the leader is away: the next miss asks again
            structlog.get_logger("supervisor").debug("leader_check_failed", error=repr(exc))
        finally:
            self._checking = None

    async def _send(self, records: list[Record]) -> list[Any]:
        return await append_within(self.handle, records, self.append_timeout_s, self._channel)

    async def append(self, records: list[Record]) -> list[Any]:
        return await self._batcher.submit(records)

    async def state(self, offset: int, limit: int) -> dict[str, Any]:
        page: dict[str, Any] = await self.handle.state.remote(offset, limit)
        return page

    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Steps | Ended]:
        steps: dict[str, Steps | Ended] = await self.handle.live_steps.remote(workflow_ids)
        return steps

    async def steps_of(self, workflow_ids: list[str]) -> dict[str, list[Outcome]]:
        steps: dict[str, list[Outcome]] = await self.handle.steps_of.remote(workflow_ids)
        return steps

    async def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self.handle.outcomes.remote(service, since_seq, limit)
        return out

    async def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = await self.handle.lookup.remote(workflow_ids)
        return found

    async def page(self, state: str | None, type_part: str | None, before: int | None,
                   limit: int) -> dict[str, Any]:
        found: dict[str, Any] = await self.handle.page.remote(state, type_part, before, limit)
        return found

    async def finished_counts(self) -> dict[str, int]:
        counts: dict[str, int] = await self.handle.finished_counts.remote()
        return counts

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = await self.handle.history.remote(workflow_id)
        return records

    async def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        page: list[dict[str, Any]] = await self.handle.finished_page.remote(state, limit, exclude)
        return page


def _sealed(options: Options, leader: dict[str, Any]) -> SealedReader | None:
    """A reader of the leader's sealed segments, if its storage is a directory (it is
    read only while the leader on this host holds it)."""
    if not options.storage.startswith("file://") or leader.get("storage") != options.storage:
        return None
    owner = f"{ray.get_runtime_context().gcs_address}/{options.namespace}/{log_actor_name(0)}"
    return SealedReader(options.storage, owner, leader.get("pid", -1), options.retention_s)


class SupervisorActor:
    async def __init__(self, options: Options) -> None:  # type: ignore[misc]  # Ray awaits it
        logs.configure(options.log_level, options.log_format, component="supervisor")
        tune_gc()
        self.options = options
        self._fault: Exception | None = None
        try:
            self.log = await journal_replicas(options)
            leader = await self.log.info.remote()
        except (CoordinatorError, ValueError) as exc:  # Fenced, JournalCorrupt, bad replicas: answer every call
            self._fault = exc
            return
        me = ray.get_runtime_context().current_actor
        journal = RayJournal(self.log, options.append_timeout_s, _sealed(options, leader))
        self.pool = RayPools(options, self.log, me)
        self.registry = Deployments(self.pool, journal.append, options.deployment_grace_s)
        self.registry.adopt((await journal.state(0, 0)).get("deployments", {}))
        for dep in self.registry.newest_first():
            await self.pool.create(dep.id, dep.runtime_env)
        own = dict(options.runtime_env) if options.runtime_env is not None else current_runtime_env()
        default = await self.registry.ensure_default(own)
        fault = await pool_fault(self.pool.handles())
        if fault is not None:  # a bad gateway option: `cluster.start` raises it and stops everything
            self._fault = ValueError(fault)
            return
        self.metrics = m.for_options(options.namespace, options.metrics)
        self.core = SupervisorCore(options, journal, self.pool, metrics=self.metrics)
        self.pool.busy = lambda w: w < len(self.core.dispatcher.free) and \
            self.core.dispatcher.free[w] < options.slots_per_actor
        for wf in self.core.table.workflows.values():
            wf.deployment = wf.deployment or default.id
        self.core.intake.route = self.registry.route
        await self.core.start()
        for wf in self.core.table.workflows.values():  # journals older than deployments: the default one
            wf.deployment = wf.deployment or default.id
        self.core.dispatcher.wake.set()
        self._pool_task = asyncio.get_running_loop().create_task(self._tend())
        self._metrics_task = self.metrics.start()
        self._channel = ChannelServer(self._serve_body)
        await self._channel.start(cast(str, cast(Any, ray.util).get_node_ip_address()))

    def _ready(self) -> SupervisorCore:
        if self._fault is not None:
            raise self._fault
        return self.core

    async def ready(self) -> dict[str, Any]:
        """Raises what stopped start-up (`Fenced`, `JournalCorrupt`, a `ValueError` for a
        bad option such as a gateway that cannot be built); else the stats."""
        return self._ready().stats()

    @hot
    async def submit(self, cmd: Any, workflow_id: str | None = None, start_at: float | None = None) -> str:
        return (await self.submit_many([cmd], [workflow_id], start_at))[0]

    @hot
    async def submit_many(self, cmds: list[Any], workflow_ids: list[str | None] | None = None,
                          start_at: float | None = None) -> list[str]:
        # A default id comes from the Ray task id, which a retried call keeps: a submit
        # that Ray re-sends after a supervisor restart finds its command, not a twin.
        task = ray.get_runtime_context().get_task_id() or ""
        given: list[str | None] = list(workflow_ids) if workflow_ids is not None else [None] * len(cmds)
        ids: list[str | None] = [w if w is not None else f"{task[:40]}-{i}" for i, w in enumerate(given)]
        return await self._ready().submit_many(cmds, ids, start_at)

    @hot
    async def result(self, workflow_id: str, timeout_s: float | None = None) -> Any:
        return await self._ready().result(workflow_id, timeout_s)

    @hot
    async def wait(self, workflow_ids: builtins.list[str], timeout_s: float | None = None) -> dict[str, Any]:
        return await self._ready().wait(workflow_ids, timeout_s)

    async def status(self, workflow_id: str) -> dict[str, Any]:
        return await self._ready().status(workflow_id)


    async def stats(self) -> dict[str, Any]:
        core = self._ready()
        return core.stats(await core.finished_counts())

    async def suspend(self) -> dict[str, Any]:
        return await self._ready().suspend()

    async def resume(self) -> dict[str, Any]:
        return await self._ready().resume()

    async def resume_workflow(self, workflow_id: str) -> bool:
        """Run a ``paused`` workflow again from its last outcome (idempotent)."""
        return await self._ready().resume_workflow(workflow_id)

    async def retry_now(self, workflow_id: str) -> bool:
        """Retry a ``delayed`` or ``blocked`` workflow at once instead of at its retry time."""
        return await self._ready().retry_now(workflow_id)

    async def page(self, state: str | None = None, type_part: str | None = None, cursor: str | None = None,
                   limit: int = 50) -> dict[str, Any]:
        """A page of workflows by cursor, in flight first, then finished ones, the last to end
        first: ``{"items", "next", "scanned"}`` (see `Queries.page`)."""
        return await self._ready().page(state, type_part, cursor, limit)

    async def finished_counts(self) -> dict[str, int]:
        """The finished workflows the journal keeps, by state (as `stats` counts them)."""
        return await self._ready().finished_counts()

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        """The journaled records of a workflow's last run, in order (each step with its time and attempt)."""
        return await self._ready().history(workflow_id)

    async def cancel(self, workflow_id: str, reason: str = "") -> bool:
        """Stop a workflow and compensate it: end state ``cancelled`` (journaled; False once finished)."""
        return await self._ready().cancel(workflow_id, reason)

    async def terminate(self, workflow_id: str, reason: str = "") -> bool:
        """Stop a workflow without compensating it: end state ``terminated``."""
        return await self._ready().terminate(workflow_id, reason)

    async def fork(self, workflow_id: str, from_step: int, new_workflow_id: str) -> str:
        """A new workflow with ``workflow_id``'s command and outcomes ``[0, from_step)``, run on
        from ``from_step``: journaled, idempotent (a repeat answers the same id)."""
        return await self._ready().fork(workflow_id, from_step, new_workflow_id)

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return await self._ready().outcomes(service, since_seq, limit)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> bool:
        """Journal the signal once per (workflow, name) and wake a ``ctx.wait_for`` of it."""
        return await self._ready().signal(workflow_id, name, payload)

    async def get_event(self, workflow_id: str, key: str) -> Any:
        """The last value ``ctx.set_event(key, value)`` journaled, or None."""
        return await self._ready().get_event(workflow_id, key)

    @hot
    async def report(self, reports: list[Report]) -> None:
        """From CommandActors: the ends of attempts."""
        await self._ready().report(reports)

    async def channel(self) -> dict[str, Any] | None:
        """Where CommandActors (their reports) and `cluster.client.Client` (its submits and
        waits) connect to call without a Ray call (`actors.channel`); None when start-up failed."""
        channel: ChannelServer | None = getattr(self, "_channel", None)
        return None if channel is None else channel.describe()

    async def _serve_body(self, body: bytes) -> Any:
        """A call that came on the channel: ``(method, args)`` pickled by a token holder,
        one of `CHANNEL_METHODS`; answered as the Ray call would be."""
        call = pickle.loads(body)
        if not isinstance(call, tuple) or len(call) != 2 or call[0] not in CHANNEL_METHODS \
                or not isinstance(call[1], tuple):
            raise ValueError(f"not a call of {', '.join(CHANNEL_METHODS)}: {type(call).__name__}")
        method, args = call
        if method == "report" and (not isinstance(args[0], list) or not all(isinstance(r, Report) for r in args[0])):
            raise ValueError(f"not a list of reports: {type(args[0]).__name__}")
        return await getattr(self, method)(*args)

    async def _tend(self) -> None:
        """Re-spread the pools over the nodes and drain unused deployments; the loop's one catch-all."""
        while True:
            await asyncio.sleep(POOL_TEND_S)
            try:
                await self.pool.respread()
                await self.registry.drain(self._live())
            except Exception as exc:
                structlog.get_logger("supervisor").warning("pool_tending_failed", error=repr(exc))

    def _live(self) -> dict[str, int]:
        live: dict[str, int] = {}
        for wf in self.core.table.unfinished():
            live[wf.deployment] = live.get(wf.deployment, 0) + 1
        return live

    async def deploy(self, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new deployment with ``runtime_env``: new submits of the types it imports go to it."""
        self._ready()
        dep = await self.registry.deploy(dict(runtime_env) if runtime_env is not None else None)
        return dep.describe(0, self.pool.counts(dep.id))

    async def deployments(self) -> builtins.list[dict[str, Any]]:
        """Each deployment: id, runtime_env summary, types, unfinished workflows, actors, created_at."""
        self._ready()
        return self.registry.listing(self._live())

    async def actors(self) -> dict[str, Any]:
        """Handles of the LogActor and the CommandActor pool (for tools and tests)."""
        namespace = self.options.namespace
        logs = [ray.get_actor(log_actor_name(i), namespace=namespace) for i in range(self.options.replicas)]
        return {"log": logs, "command": self.pool.handles()}

    async def list(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return await self._ready().list(state, limit)


# Calls in flight when it dies are sent again to its restarted self (results, submits
# with their task-derived ids): a client sees a slow answer, not an error.
RemoteSupervisorActor: Any = cast(Any, ray.remote)(
    num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=100_000
)(SupervisorActor)
