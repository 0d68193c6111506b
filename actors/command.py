"""CommandActor: runs workflow attempts, a thin Ray shell over `actors.runner.Runner`.

Owns: the outcome lists of the attempts it runs (``slots_per_actor`` at once), read
from the journal for every attempt but a workflow's first, in one call per dispatch
batch. A parked attempt gives its slot back. Survives its death: every outcome it journaled;
the supervisor dispatches its attempts again elsewhere. Idempotent: ``reset``,
``ready``. An actor whose gateway cannot be built stays up to say so (``ready``) and
runs nothing.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any, cast

import ray

from actors import channel as channels
from actors import logs
from actors import metrics as m
from actors.batching import Batcher
from actors.channel import Channel, ChannelServer
from actors.log import append_within
from actors.options import Options
from actors.placement import COMMAND_PREFIX
from actors.records import Dispatch, Ended, Record, Report, Steps
from actors.runner import Runner, build_gateway
from actors.tuning import hot, tune_gc
from workflows.command import resolve_type
from workflows.errors import InvalidCommand


class CommandActor:
    def __init__(self, options: Options, log: Any, supervisor: Any, index: int | str) -> None:
        node = ray.get_runtime_context().get_node_id()
        logs.configure(options.log_level, options.log_format, component="command", actor=str(index), node_id=node[:12])
        tune_gc()
        self._log = log
        self._supervisor = supervisor
        self._incarnation = ""
        self._append_timeout_s = options.append_timeout_s
        self._channel = Channel(log)
        self._to_supervisor = Channel(supervisor)
        self._server: ChannelServer | None = None
        self._starting: asyncio.Task[None] | None = None
        # A few journal calls in flight: a step waits for its own batch, not the one before.
        self._journal: Batcher[Record] = Batcher(self._append, max_in_flight=2)
        self._reports: Batcher[Report] = Batcher(self._send_reports)
        self._fault: str | None = None
        try:
            gateway = build_gateway(options)
        except ValueError as exc:  # answered by `ready`: the supervisor's start-up fails with it
            self._fault, gateway = str(exc), None
        self.metrics = m.for_options(options.namespace, options.metrics)
        self._metrics_task: asyncio.Task[None] | None = None  # started by the first `run`, on the actor's loop
        self.runner = Runner(self._journal.submit, self._live_steps, self._report, gateway, options.max_payload_bytes,
                             metrics=self.metrics, deployment=deployment_of(index))

    def ready(self) -> str | None:
        """None once this actor can run workflows; else why not (a gateway that cannot be built)."""
        return self._fault

    def node(self) -> str:
        """The id of the node this actor runs on (told again after a restart elsewhere)."""
        return str(ray.get_runtime_context().get_node_id())

    def importable(self, types: list[str]) -> dict[str, str | None]:
        """Per command type, None if this actor's code has it, else why not: asked before
        a command of it is journaled for this actor's deployment."""
        answers: dict[str, str | None] = {}
        for name in types:
            try:
                resolve_type(name)
                answers[name] = None
            except InvalidCommand as exc:
                answers[name] = str(exc)
        return answers

    async def channel(self) -> dict[str, Any] | None:
        """Where the supervisor connects to dispatch without a Ray call (`actors.channel`),
        served from the first ask; None while this actor cannot run workflows."""
        if self._fault is not None:
            return None
        if self._server is None:
            if self._starting is None:
                self._starting = asyncio.get_running_loop().create_task(self._serve())
            await asyncio.shield(self._starting)
        return None if self._server is None else self._server.describe()

    async def _serve(self) -> None:
        server = ChannelServer(self._run_body)
        await server.start(cast(str, cast(Any, ray.util).get_node_ip_address()))
        self._server = server

    async def _run_body(self, body: bytes) -> None:
        """A dispatch batch that came on the channel, pickled by the supervisor (a token holder)."""
        items = pickle.loads(body)
        if not isinstance(items, list) or not all(isinstance(i, Dispatch) for i in items):
            raise ValueError(f"not a dispatch batch: {type(items).__name__}")
        await self.run(items)

    async def _append(self, records: list[Record]) -> list[Any]:
        return await append_within(self._log, records, self._append_timeout_s, self._channel)

    async def _live_steps(self, workflow_ids: list[str]) -> dict[str, Steps | Ended]:
        steps: dict[str, Steps | Ended] = await self._log.live_steps.remote(workflow_ids)
        return steps

    async def _send_reports(self, reports: list[Report]) -> list[Any]:
        await channels.call(self._supervisor, self._to_supervisor, "report", reports)
        return [None] * len(reports)

    async def _report(self, report: Report) -> None:
        await self._reports.submit([report])

    async def reset(self, incarnation: str) -> int:
        """Drop every attempt of an earlier supervisor incarnation; returns how many."""
        self._incarnation = incarnation
        return self.runner.cancel_all()

    async def stop(self, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Cancel or terminate running attempts: each stops at its next step boundary."""
        self.runner.stop(items)

    @hot
    async def run(self, items: list[Dispatch]) -> None:
        """Run a dispatch batch; returns once each attempt in it has been reported.

        Only the current supervisor dispatches, so a batch from a new incarnation
        (this actor restarted, or the supervisor did) cancels what an older one started.
        """
        if self._fault is not None:
            raise ValueError(self._fault)
        if items and items[0].incarnation != self._incarnation:
            await self.reset(items[0].incarnation)
        if self._metrics_task is None and self.metrics.enabled:
            self._metrics_task = self.metrics.start()
        await self.runner.run(items)


def deployment_of(name: int | str) -> str:
    """The deployment of a pool actor named ``command-<deployment>-<n>`` (`actors.pools`); ``""`` otherwise."""
    if not isinstance(name, str) or not name.startswith(COMMAND_PREFIX) or "-" not in name[len(COMMAND_PREFIX):]:
        return ""
    return name[len(COMMAND_PREFIX):].rsplit("-", 1)[0]


RemoteCommandActor: Any = cast(Any, ray.remote)(num_cpus=0, max_restarts=-1, max_concurrency=100_000)(CommandActor)
