"""LogActor: one journal replica, a thin Ray shell over the journal classes.

Replica 0 is the leader: writers (the supervisor, CommandActors) append to it; it
group-commits to its own segments and, with ``replicas > 1``, acknowledges a batch
once a majority of replicas holds it (`actors.journal.replica`). Other replicas are
followers holding a copy of the log.

Owns: the storage lock (leader) or its own copy (follower). Survives its death:
every acknowledged record (fsynced on a majority before the ack); Ray restarts it
and it recovers. Idempotent: ``append`` of the same step index or terminal record (a
retried call) is answered, not journaled twice; ``accept`` of records already held.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, cast

import ray
from ray.exceptions import RayActorError

from actors import logs
from actors import metrics as m
from actors.channel import Channel, ChannelServer, unpack_records
from actors.channel import append as channel_append
from actors.journal import Journal, open_backend
from actors.journal.replica import Replica, Replicator, replica_backend
from actors.options import Options
from actors.records import RECORD_TYPES, Ended, Record, Steps, from_wire
from actors.tuning import hot, tune_gc
from workflows.context import Outcome
from workflows.errors import JournalError, JournalUnavailable


async def append_within(leader: Any, records: list[Record], timeout_s: float,
                        channel: Channel | None = None) -> list[Any]:
    """Append through the leader LogActor: on ``channel`` (`actors.channel`) when it can
    carry the batch, else as a Ray call. Ray re-sends a call to a restarting leader;
    one that does not answer within ``timeout_s`` (its node is gone and no other can
    hold it yet) is `JournalUnavailable`, never a silent wait. The records travel as
    their wire maps (`LogActor.append`)."""
    wire = [r.to_wire() for r in records]
    try:
        answers: list[Any] = await asyncio.wait_for(channel_append(leader, channel, wire), timeout_s)
    except TimeoutError:
        raise JournalUnavailable(f"the journal leader did not answer within {timeout_s} s") from None
    except RayActorError as exc:
        raise JournalUnavailable(f"the journal leader is gone: {exc}") from exc
    return answers


def _records(maps: list[dict[str, Any]]) -> list[Record]:
    """The records of wire maps; a record object (from a caller of an earlier version,
    still running while this actor restarted on newer code) is taken as it is."""
    try:
        return [from_wire(d) if isinstance(d, dict) else _record(d) for d in maps]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a journal record: {exc!r}") from None


def _record(obj: Any) -> Record:
    if not isinstance(obj, RECORD_TYPES):
        raise TypeError(f"{type(obj).__name__} {obj!r:.80}")
    return cast(Record, obj)


class _RayFollower:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.end_seen = 0
        """The end of the follower's log it last answered with (for the replica lag metric)."""

    @hot
    async def accept(self, epoch: int, epoch_seq: int, first_seq: int, data: bytes, count: int,
                     sealed_upto: int) -> int:
        end: int = await self.handle.accept.remote(epoch, epoch_seq, first_seq, data, count, sealed_upto)
        self.end_seen = end
        return end

    async def read(self, from_seq: int) -> tuple[int, bytes]:
        got: tuple[int, bytes] = await self.handle.read_frames.remote(from_seq)
        return got

    async def end(self) -> int:
        end: int = await self.handle.end.remote()
        return end


class LogActor:
    async def __init__(self, options: Options, replica: int = 0,  # type: ignore[misc]  # Ray awaits it
                       followers: list[Any] | None = None) -> None:
        logs.configure(options.log_level, options.log_format, component="log", replica=str(replica))
        tune_gc()
        self._fault: JournalError | None = None
        # The owner names this Ray cluster too: a restarted replica re-takes its own lock,
        # a coordinator of the same namespace on another cluster is fenced.
        owner = f"{ray.get_runtime_context().gcs_address}/{options.namespace}/log-{replica}"
        self.journal: Journal | None = None
        self.replica: Replica | None = None
        self.metrics = m.for_options(options.namespace, options.metrics and replica == 0)
        self._followers = [_RayFollower(f) for f in followers or []]
        self._written = (0, 0)
        self._channel: ChannelServer | None = None
        self._appends = 0
        """Append calls taken, Ray calls and channel requests alike (`info`)."""
        try:
            if replica == 0:
                self.journal = Journal(open_backend(options.storage), fsync=options.fsync,
                                       segment_bytes=options.segment_bytes, owner=owner,
                                       snapshot_records=options.snapshot_records, retention_s=options.retention_s,
                                       seal_idle_s=options.seal_idle_s, cache_size=options.result_cache_size)
                if followers:
                    await self.journal.open_replicated(
                        Replicator(list(self._followers), timeout_s=options.replica_timeout_s))
                else:
                    self.journal.open()
            else:
                self.replica = Replica(replica_backend(options.storage, replica), fsync=options.fsync,
                                       segment_bytes=options.segment_bytes, owner=owner)
                self.replica.open()
        except JournalError as exc:  # Fenced, JournalCorrupt, JournalUnavailable: raised to every caller
            self._fault = exc
        if self.journal is not None and self._fault is None:
            self._channel = ChannelServer(self._append_body)
            await self._channel.start(cast(str, cast(Any, ray.util).get_node_ip_address()))
        if self.journal is not None:
            self.metrics.source(self._sample)
            self._metrics_task = self.metrics.start()

    def _sample(self, metrics: m.Metrics) -> None:
        """The journal's counters and the replicas' lag, read at each metrics flush (the
        write thread only counts): fsyncs, records, and their mean per fsync over the interval."""
        log_ = cast(Journal, self.journal).log
        writes, records = log_.writes, log_.records_written
        fsyncs, written = writes - self._written[0], records - self._written[1]
        self._written = (writes, records)
        metrics.count(m.FSYNCS, fsyncs)
        metrics.count(m.JOURNAL_RECORDS, written)
        if fsyncs:
            metrics.observe(m.BATCH_RECORDS, written / fsyncs)
        durable_end = log_.segments[-1].last_seq + 1 if log_.segments else 0
        for i, follower in enumerate(self._followers, start=1):
            metrics.gauge(m.REPLICA_LAG, max(0, durable_end - follower.end_seen), str(i))

    def _leader(self) -> Journal:
        if self._fault is not None:
            raise self._fault
        if self.journal is None:
            raise JournalError("this journal replica is a follower; append to replica 0")
        return self.journal

    def _follower(self) -> Replica:
        if self._fault is not None:
            raise self._fault
        return cast(Replica, self.replica)

    async def info(self) -> dict[str, Any]:
        if self.replica is not None:
            r = self._follower()
            return {"role": "follower", "next_seq": r.next_seq, "epoch": r.epoch, "node": _node(), "pid": os.getpid()}
        j = self._leader()
        return {"role": "leader", "epoch": j.epoch, "next_seq": j.next_seq, "storage": j.backend.uri,
                "torn_bytes": j.torn_bytes, "node": _node(), "pid": os.getpid(), "appends": self._appends,
                "channel_appends": 0 if self._channel is None else self._channel.served}

    # --- leader --------------------------------------------------------------------------

    async def channel(self) -> dict[str, Any] | None:
        """Where writers connect to append without a Ray call (`actors.channel`); None
        when this replica does not serve appends (a follower, or a journal that failed)."""
        return None if self._channel is None else self._channel.describe()

    @hot
    async def append(self, records: list[dict[str, Any]]) -> list[Any]:
        """Journal ``records``, given as wire maps (`Record.to_wire`): plain data, which
        Ray serializes without pickling a class per record; `ValueError` for a map that
        is not a record, before anything is journaled."""
        start = time.perf_counter()
        self._appends += 1
        answers = await self._leader().append(_records(records))
        self.metrics.observe(m.APPEND_LATENCY, time.perf_counter() - start)
        return answers

    async def _append_body(self, body: bytes) -> list[Any]:
        """An append that came on the channel: its records as msgpack wire maps."""
        return await self.append(unpack_records(body))

    async def read(self, from_seq: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        return self._leader().read(from_seq, limit)

    async def state(self, offset: int = 0, limit: int = 50_000) -> dict[str, Any]:
        return self._leader().state(offset, limit)

    async def snapshot(self) -> int:
        return await self._leader().snapshot()

    async def live_steps(self, workflow_ids: list[str]) -> dict[str, Steps | Ended]:
        return self._leader().live_steps(workflow_ids)

    async def steps_of(self, workflow_ids: list[str]) -> dict[str, list[Outcome]]:
        return self._leader().steps_of(workflow_ids)

    async def outcomes(self, service: str, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return self._leader().outcomes(service, since_seq, limit)

    async def lookup(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self._leader().lookup(workflow_ids)

    async def page(self, state: str | None, type_part: str | None, before: int | None,
                   limit: int) -> dict[str, Any]:
        return self._leader().page(state, type_part, before, limit)

    async def finished_counts(self) -> dict[str, int]:
        return self._leader().finished_counts()

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        return self._leader().history(workflow_id)

    async def finished_page(self, state: str | None, limit: int, exclude: list[str]) -> list[dict[str, Any]]:
        return self._leader().finished_page(state, limit, exclude)

    # --- follower ------------------------------------------------------------------------

    async def accept(self, epoch: int, epoch_seq: int, first_seq: int, data: bytes, count: int,
                     sealed_upto: int) -> int:
        return self._follower().accept(epoch, epoch_seq, first_seq, data, count, sealed_upto)

    async def read_frames(self, from_seq: int) -> tuple[int, bytes]:
        return self._follower().read(from_seq)

    async def end(self) -> int:
        return self._follower().next_seq

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.journal is not None:
            await self.journal.drain()
            self.journal.close()
        if self.replica is not None:
            self.replica.close()


def _node() -> str:
    return str(ray.get_runtime_context().get_node_id())


RemoteLogActor: Any = cast(Any, ray.remote)(
    num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000
)(LogActor)
