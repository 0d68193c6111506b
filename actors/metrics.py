"""The coordinator's metrics: named once here, aggregated in-process, exported through Ray.

Every metric is a `Spec` in `SPECS`, tagged with ``namespace`` (`Options.namespace`) and,
where it applies, ``type`` (the command type, ``module:QualName``) or ``replica``.
Ray exports each as ``ray_<name>`` on every node's metrics endpoint (counters as
``ray_<name>_total``, histograms as ``_bucket``, ``_sum`` and ``_count``; see
`exported_series`).

The Ray-free logic (supervision, the runner, the journal) records into a `Metrics`
object: a dict update per event, never a Ray call. `Metrics.flush` hands the
aggregates to a `Recorder`: one ``inc`` per counter and tag set with the sum since the
last flush, one ``set`` per gauge (gauges are sampled just before the flush, through
the ``sample`` callbacks the owners register), and, for histograms, a uniform sample of
at most `SAMPLES_PER_FLUSH` observations per tag set and flush. A histogram's count is
therefore a sample count; counters carry the exact event counts.

`Metrics.off()` (the default of the Ray-free classes) records nothing at all. The Ray
shells build ``Metrics(namespace, RayRecorder())`` when `Options.metrics` is on and run
`Metrics.run`, which flushes every `FLUSH_INTERVAL_S`. `RayRecorder` is the only user
of `ray.util.metrics`, imported when the first one is built, so that importing this
module needs no Ray.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger("metrics")

FLUSH_INTERVAL_S = 1.0
"""How often aggregates go to the recorder; Ray itself exports every few seconds."""
SAMPLES_PER_FLUSH = 64
"""Histogram observations kept per tag set and flush (a uniform sample of the interval's)."""

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, eq=False)  # hashed by identity: a spec is a dict key on the hot path
class Spec:
    """One metric: its name (without Ray's ``ray_`` prefix), kind, tags besides ``namespace``."""

    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


def _counter(name: str, description: str, *tags: str) -> Spec:
    return Spec(name, Kind.COUNTER, description, tags)


def _gauge(name: str, description: str, *tags: str) -> Spec:
    return Spec(name, Kind.GAUGE, description, tags)


def _histogram(name: str, description: str, boundaries: tuple[float, ...], *tags: str) -> Spec:
    return Spec(name, Kind.HISTOGRAM, description, tags, boundaries)


SUBMITTED = _counter("coordinator_workflows_submitted", "Workflows journaled by submit (new ids only)", "type")
COMPLETED = _counter("coordinator_workflows_completed", "Workflows that completed", "type")
FAILED = _counter("coordinator_workflows_failed", "Workflows that failed", "type")
COMPENSATED = _counter("coordinator_workflows_compensated", "Workflows that failed and were compensated", "type")
CANCELLED = _counter("coordinator_workflows_cancelled", "Workflows an operator cancelled (compensated)", "type")
TERMINATED = _counter("coordinator_workflows_terminated", "Workflows an operator terminated", "type")
DELAYED = _counter("coordinator_delayed", "Attempts that ended Delayed (parked, to be retried)", "type")
BLOCKED = _counter("coordinator_blocked", "Attempts that ended Blocked (parked; intake suspends)", "type")
RETRIES = _counter("coordinator_retries", "Parked workflows dispatched again by their retry timer", "type")
IN_FLIGHT = _gauge("coordinator_in_flight", "Admitted, unfinished workflows (counted against max_cmds)")
MAX_CMDS = _gauge("coordinator_max_cmds", "The MaxCmds limit")
MODE = _gauge("coordinator_mode", "Supervisor mode: 0 normal, 1 suspended_slow, 2 suspended_fast")
STEP_LATENCY = _histogram("coordinator_step_latency_s", "A step: from the end of the previous one (or the "
                          "attempt's start) until its outcome is durable", LATENCY_BUCKETS_S, "type")
WORKFLOW_LATENCY = _histogram("coordinator_workflow_latency_s", "End to end: from submit until the workflow "
                              "finished", LATENCY_BUCKETS_S, "type")
APPEND_LATENCY = _histogram("coordinator_journal_append_latency_s", "A journal append call until its records "
                            "are durable (on a majority of replicas)", LATENCY_BUCKETS_S)
BATCH_RECORDS = _histogram("coordinator_journal_batch_records", "Records per journal fsync (group commit): "
                           "the mean of each flush interval", BATCH_BUCKETS)
FSYNCS = _counter("coordinator_journal_fsyncs", "Journal batches written and synced by the leader")
JOURNAL_RECORDS = _counter("coordinator_journal_records", "Records journaled by the leader")
REPLICA_LAG = _gauge("coordinator_replica_lag_records", "Records a follower is behind the journal leader",
                     "replica")
RESULT_CACHE_HITS = _counter("coordinator_result_cache_hits", "Finished results answered from memory")
RESULT_CACHE_MISSES = _counter("coordinator_result_cache_misses", "Finished results read back from the journal")

SPECS: tuple[Spec, ...] = (
    SUBMITTED, COMPLETED, FAILED, COMPENSATED, CANCELLED, TERMINATED, DELAYED, BLOCKED, RETRIES, IN_FLIGHT,
    MAX_CMDS, MODE,
    STEP_LATENCY, WORKFLOW_LATENCY, APPEND_LATENCY, BATCH_RECORDS, FSYNCS, JOURNAL_RECORDS, REPLICA_LAG,
    RESULT_CACHE_HITS, RESULT_CACHE_MISSES,
)
FINISHED = {"completed": COMPLETED, "failed": FAILED, "compensated": COMPENSATED, "cancelled": CANCELLED,
            "terminated": TERMINATED}
"""The counter of each terminal record kind."""
MODES = {"normal": 0, "suspended_slow": 1, "suspended_fast": 2}
"""`MODE`'s value per supervisor mode."""


def exported_series(spec: Spec) -> tuple[str, ...]:
    """The Prometheus series names Ray exports for ``spec``."""
    name = f"ray_{spec.name}"
    if spec.kind is Kind.COUNTER:
        return (f"{name}_total",)
    if spec.kind is Kind.HISTOGRAM:
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)


Tags = dict[str, str]


class Recorder(Protocol):
    """Where flushed aggregates go."""

    def inc(self, spec: Spec, value: float, tags: Tags) -> None: ...
    def set(self, spec: Spec, value: float, tags: Tags) -> None: ...
    def observe(self, spec: Spec, value: float, tags: Tags) -> None: ...


class NullRecorder:
    """Drops everything."""

    def inc(self, spec: Spec, value: float, tags: Tags) -> None:
        pass

    def set(self, spec: Spec, value: float, tags: Tags) -> None:
        pass

    def observe(self, spec: Spec, value: float, tags: Tags) -> None:
        pass


class RayRecorder:
    """Records into `ray.util.metrics`; a metric object is made on first use of its spec."""

    def __init__(self) -> None:
        from ray.util import metrics as ray_metrics

        self._ray = ray_metrics
        self._made: dict[Spec, Any] = {}

    def _metric(self, spec: Spec) -> Any:
        metric = self._made.get(spec)
        if metric is None:
            keys = ("namespace", *spec.tags)
            if spec.kind is Kind.COUNTER:
                metric = self._ray.Counter(spec.name, spec.description, tag_keys=keys)
            elif spec.kind is Kind.GAUGE:
                metric = self._ray.Gauge(spec.name, spec.description, tag_keys=keys)
            else:
                metric = self._ray.Histogram(spec.name, spec.description, boundaries=list(spec.boundaries),
                                             tag_keys=keys)
            self._made[spec] = metric
        return metric

    def inc(self, spec: Spec, value: float, tags: Tags) -> None:
        self._metric(spec).inc(value, tags)

    def set(self, spec: Spec, value: float, tags: Tags) -> None:
        self._metric(spec).set(value, tags)

    def observe(self, spec: Spec, value: float, tags: Tags) -> None:
        self._metric(spec).observe(value, tags)


Key = tuple[Spec, tuple[str, ...]]


class Metrics:
    """In-process aggregates of one coordinator's metrics; see the module docstring.

    Tag values are given positionally, in the order of ``spec.tags``. Not thread-safe:
    it belongs to one event loop (the journal's flusher records from its loop, never
    from the fsync thread).
    """

    def __init__(self, namespace: str, recorder: Recorder | None = None, *, seed: int = 0) -> None:
        self.namespace = namespace
        self.recorder: Recorder = recorder if recorder is not None else NullRecorder()
        self.enabled = recorder is not None
        self._rng = random.Random(seed)
        self._counts: dict[Key, float] = {}
        self._gauges: dict[Key, float] = {}
        self._samples: dict[Key, tuple[int, list[float]]] = {}
        self._sources: list[Callable[[Metrics], None]] = []

    @classmethod
    def off(cls) -> Metrics:
        """A `Metrics` that records nothing (metrics off, unit tests, the in-process coordinator)."""
        return cls("")

    # --- the hot path: dict updates only ----------------------------------------------

    def count(self, spec: Spec, value: float = 1, *tags: str) -> None:
        if self.enabled and value > 0:
            key = (spec, tags)
            self._counts[key] = self._counts.get(key, 0) + value

    def gauge(self, spec: Spec, value: float, *tags: str) -> None:
        if self.enabled:
            self._gauges[(spec, tags)] = value

    def observe(self, spec: Spec, value: float, *tags: str) -> None:
        """Keep ``value`` in the interval's sample (reservoir sampling, `SAMPLES_PER_FLUSH`)."""
        if not self.enabled:
            return
        key = (spec, tags)
        seen, kept = self._samples.get(key) or (0, [])
        seen += 1
        if len(kept) < SAMPLES_PER_FLUSH:
            kept.append(value)
        else:
            slot = self._rng.randrange(seen)
            if slot < SAMPLES_PER_FLUSH:
                kept[slot] = value
        self._samples[key] = (seen, kept)

    # --- export -----------------------------------------------------------------------

    def source(self, sample: Callable[[Metrics], None]) -> None:
        """Call ``sample(self)`` before each flush: it sets gauges from its owner's state."""
        self._sources.append(sample)

    def _tags(self, spec: Spec, values: tuple[str, ...]) -> Tags:
        tags = dict(zip(spec.tags, values, strict=True))
        tags["namespace"] = self.namespace
        return tags

    def flush(self) -> None:
        """Hand everything aggregated since the last flush to the recorder."""
        if not self.enabled:
            return
        for sample in self._sources:
            sample(self)
        counts, self._counts = self._counts, {}
        samples, self._samples = self._samples, {}
        for (spec, values), total in counts.items():
            self.recorder.inc(spec, total, self._tags(spec, values))
        for (spec, values), value in self._gauges.items():
            self.recorder.set(spec, value, self._tags(spec, values))
        for (spec, values), (_, kept) in samples.items():
            tags = self._tags(spec, values)
            for value in kept:
                self.recorder.observe(spec, value, tags)

    async def run(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        """Flush every ``interval_s`` until cancelled."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.flush()
            except Exception as exc:  # the loop's one catch-all: metrics never stop the coordinator
                log.warning("metrics_flush_failed", error=repr(exc))

    def start(self, interval_s: float = FLUSH_INTERVAL_S) -> asyncio.Task[None] | None:
        """Start `run` on the running loop; the caller keeps the task (None when off)."""
        if not self.enabled:
            return None
        return asyncio.get_running_loop().create_task(self.run(interval_s))


def for_options(namespace: str, enabled: bool) -> Metrics:
    """The Ray shells' `Metrics`: exported through Ray when ``enabled``, else off."""
    return Metrics(namespace, RayRecorder()) if enabled else Metrics.off()
