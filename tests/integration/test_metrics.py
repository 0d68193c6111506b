"""The coordinator's metrics, read back from the Ray node's metrics endpoint.

Runs workflows that complete, compensate, fail and are delayed once, on a coordinator
of its own namespace, then polls ``http://<node>:<MetricsExportPort>/metrics`` (Ray
exports every few seconds) until that namespace's series carry the expected counts.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import ray

from actors import metrics as m
from tests.support import Coordinator
from workflows.errors import CommandFailed
from workflows.testing import Echo, Fails, Flaky

pytestmark = pytest.mark.ray

EXPORT_DEADLINE_S = 90.0
SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Sample = tuple[str, dict[str, str], float]


def endpoints() -> list[str]:
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n["Alive"] and n.get("MetricsExportPort")]


def scrape(urls: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except (urllib.error.URLError, OSError):
            continue  # the node's agent is still starting: the next poll asks again
        for line in text.splitlines():
            match = SERIES.match(line)
            if match is not None:
                samples.append((match[1], dict(LABEL.findall(match[2] or "")), float(match[3])))
    return samples


class Scraped:
    """One namespace's samples, summed over the processes (Ray's WorkerId label) that recorded them."""

    def __init__(self, samples: list[Sample], namespace: str) -> None:
        self.samples = [s for s in samples if s[1].get("namespace") == namespace]

    def total(self, series: str, **labels: str) -> float:
        return sum(v for name, tags, v in self.samples
                   if name == series and all(tags.get(k) == want for k, want in labels.items()))

    def gauge(self, series: str, **labels: str) -> float | None:
        values = [v for name, tags, v in self.samples
                  if name == series and all(tags.get(k) == want for k, want in labels.items())]
        return max(values) if values else None

    def counter(self, spec: m.Spec, **labels: str) -> float:
        return self.total(m.exported_series(spec)[0], **labels)

    def observed(self, spec: m.Spec, **labels: str) -> float:
        return self.total(m.exported_series(spec)[2], **labels)


def poll(namespace: str, expected: dict[str, Callable[[Scraped], bool]]) -> Scraped:
    """Scrape until every check in ``expected`` holds; fail naming those that never did."""
    urls = endpoints()
    assert urls, "no Ray node has a metrics export port"
    deadline = time.monotonic() + EXPORT_DEADLINE_S
    while True:
        got = Scraped(scrape(urls), namespace)
        failing = [what for what, check in expected.items() if not check(got)]
        if not failing:
            return got
        if time.monotonic() > deadline:
            names = sorted({name for name, _, _ in got.samples})
            raise AssertionError(f"after {EXPORT_DEADLINE_S} s still not exported: {failing}; "
                                 f"series of namespace {namespace!r}: {names}")
        time.sleep(1.0)


def test_metrics_reach_the_nodes_metrics_endpoint(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(replicas=2, colocated_replicas=True, command_actors=1)
    sup, namespace = c.sup, c.options.namespace
    echoes = ray.get(sup.submit_many.remote([Echo(i) for i in range(6)]))
    compensated = ray.get(sup.submit_many.remote([Fails(steps=2) for _ in range(2)]))
    failed = ray.get(sup.submit.remote(Fails(steps=0)))
    delayed = ray.get(sup.submit_many.remote([Flaky(failures=1) for _ in range(2)]))
    assert ray.get([sup.result.remote(w, 60) for w in echoes]) == list(range(6))
    for wid in [*compensated, failed]:
        with pytest.raises(CommandFailed):
            ray.get(sup.result.remote(wid, 60))
    assert all(r["attempts"] == 2 for r in ray.get([sup.result.remote(w, 60) for w in delayed]))
    echo, fails, flaky = "workflows.testing:Echo", "workflows.testing:Fails", "workflows.testing:Flaky"

    expected: dict[str, Callable[[Scraped], Any]] = {
        "submitted": lambda s: (s.counter(m.SUBMITTED, type=echo), s.counter(m.SUBMITTED, type=fails),
                                s.counter(m.SUBMITTED, type=flaky)) == (6, 3, 2),
        "completed": lambda s: (s.counter(m.COMPLETED, type=echo), s.counter(m.COMPLETED, type=flaky)) == (6, 2),
        "compensated": lambda s: s.counter(m.COMPENSATED, type=fails) == 2,
        "failed": lambda s: s.counter(m.FAILED, type=fails) == 1,
        "delayed": lambda s: s.counter(m.DELAYED, type=flaky) == 2,
        "retries": lambda s: s.counter(m.RETRIES, type=flaky) == 2,
        "no blocked": lambda s: s.counter(m.BLOCKED) == 0,
        "in flight": lambda s: s.gauge("ray_coordinator_in_flight") == 0,
        "max_cmds": lambda s: s.gauge("ray_coordinator_max_cmds") == c.options.max_cmds,
        "mode": lambda s: s.gauge("ray_coordinator_mode") == m.MODES["normal"],
        "step latency": lambda s: s.observed(m.STEP_LATENCY, type=echo) >= 12,
        "workflow latency": lambda s: s.observed(m.WORKFLOW_LATENCY, type=echo) == 6,
        "append latency": lambda s: s.observed(m.APPEND_LATENCY) > 0,
        "batch records": lambda s: s.observed(m.BATCH_RECORDS) > 0,
        "fsyncs": lambda s: s.counter(m.FSYNCS) > 0,
        "records per fsync": lambda s: s.counter(m.JOURNAL_RECORDS) >= s.counter(m.FSYNCS) > 0,
        "replica lag": lambda s: s.gauge("ray_coordinator_replica_lag_records", replica="1") == 0,
        "result hits": lambda s: s.counter(m.RESULT_CACHE_HITS) >= 11,
    }
    got = poll(namespace, expected)
    assert got.counter(m.RESULT_CACHE_MISSES) == 0  # every finished result is still in memory


def test_metrics_off_exports_nothing_for_the_namespace(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(metrics=False, command_actors=1)
    wid = ray.get(c.sup.submit.remote(Echo(1)))
    assert ray.get(c.sup.result.remote(wid, 60)) == 1
    # Another namespace's series exported meanwhile prove a round of export happened.
    on = coordinator(command_actors=1)
    assert ray.get(on.sup.result.remote(ray.get(on.sup.submit.remote(Echo(2))), 60)) == 2
    poll(on.options.namespace, {"the other's submit": lambda s: s.counter(m.SUBMITTED) == 1})
    assert Scraped(scrape(endpoints()), c.options.namespace).samples == []
