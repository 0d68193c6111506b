"""`actors.metrics` without Ray: aggregation, sampling, flushing, and the dashboard's series."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from actors import metrics as m
from actors.inprocess import LocalCoordinator, LocalJournal
from actors.options import Options
from actors.supervision.supervisor import SupervisorCore
from tests.unit.local import opts
from workflows.errors import CommandFailed
from workflows.testing import Echo, Fails, Flaky

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "coordinator-dashboard.json"


class FakeRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, str]]] = []

    def inc(self, spec: m.Spec, value: float, tags: m.Tags) -> None:
        self.calls.append(("inc", spec.name, value, tags))

    def set(self, spec: m.Spec, value: float, tags: m.Tags) -> None:
        self.calls.append(("set", spec.name, value, tags))

    def observe(self, spec: m.Spec, value: float, tags: m.Tags) -> None:
        self.calls.append(("observe", spec.name, value, tags))

    def of(self, op: str, name: str) -> list[tuple[float, dict[str, str]]]:
        return [(v, t) for o, n, v, t in self.calls if o == op and n == name]


def make() -> tuple[m.Metrics, FakeRecorder]:
    fake = FakeRecorder()
    return m.Metrics("ns", fake), fake


def test_counters_aggregate_per_tag_set_into_one_inc_per_flush() -> None:
    metrics, fake = make()
    for _ in range(1000):
        metrics.count(m.SUBMITTED, 1, "a:A")
    metrics.count(m.SUBMITTED, 5, "b:B")
    metrics.count(m.FSYNCS)
    metrics.flush()
    assert sorted(fake.of("inc", m.SUBMITTED.name), key=lambda c: c[0]) == [
        (5, {"type": "b:B", "namespace": "ns"}), (1000, {"type": "a:A", "namespace": "ns"})]
    assert fake.of("inc", m.FSYNCS.name) == [(1, {"namespace": "ns"})]
    fake.calls.clear()
    metrics.flush()
    assert fake.calls == []  # nothing new: counters send deltas, nothing when there is none


def test_histograms_keep_a_bounded_uniform_sample_per_flush() -> None:
    metrics, fake = make()
    for i in range(10_000):
        metrics.observe(m.STEP_LATENCY, i / 10_000, "a:A")
    metrics.observe(m.STEP_LATENCY, 0.5, "b:B")
    metrics.flush()
    kept = [v for v, t in fake.of("observe", m.STEP_LATENCY.name) if t["type"] == "a:A"]
    assert len(kept) == m.SAMPLES_PER_FLUSH
    assert 0.25 < sum(kept) / len(kept) < 0.75  # drawn from the whole interval, not its start
    assert max(kept) > 0.5
    assert [v for v, t in fake.of("observe", m.STEP_LATENCY.name) if t["type"] == "b:B"] == [0.5]


def test_gauges_are_sampled_from_their_sources_at_each_flush() -> None:
    metrics, fake = make()
    state = {"in_flight": 3}
    metrics.source(lambda mx: mx.gauge(m.IN_FLIGHT, state["in_flight"]))
    metrics.gauge(m.REPLICA_LAG, 7, "1")
    metrics.flush()
    state["in_flight"] = 9
    metrics.flush()
    assert [v for v, _ in fake.of("set", m.IN_FLIGHT.name)] == [3, 9]
    assert fake.of("set", m.REPLICA_LAG.name)[-1] == (7, {"replica": "1", "namespace": "ns"})


def test_off_records_nothing_and_needs_no_recorder() -> None:
    metrics = m.Metrics.off()
    metrics.count(m.SUBMITTED, 1, "a:A")
    metrics.observe(m.STEP_LATENCY, 0.1, "a:A")
    metrics.gauge(m.MODE, 1)
    metrics.flush()
    assert not metrics.enabled and metrics.start() is None
    assert m.for_options("ns", enabled=False).enabled is False


def test_zero_counts_are_not_sent() -> None:
    metrics, fake = make()
    metrics.count(m.SUBMITTED, 0, "a:A")
    metrics.flush()
    assert fake.calls == []


async def test_run_flushes_periodically_and_survives_a_failing_recorder() -> None:
    metrics, fake = make()
    broken = {"on": True}

    def sample(mx: m.Metrics) -> None:
        if broken["on"]:
            broken["on"] = False
            raise RuntimeError("recorder down")
        mx.gauge(m.MODE, 2)

    metrics.source(sample)
    task = metrics.start(0.01)
    assert task is not None
    try:
        for _ in range(200):
            if fake.of("set", m.MODE.name):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert fake.of("set", m.MODE.name)[0] == (2, {"namespace": "ns"})


def test_exported_series_follow_rays_naming() -> None:
    assert m.exported_series(m.SUBMITTED) == ("ray_coordinator_workflows_submitted_total",)
    assert m.exported_series(m.IN_FLIGHT) == ("ray_coordinator_in_flight",)
    assert m.exported_series(m.STEP_LATENCY) == ("ray_coordinator_step_latency_s_bucket",
                                                 "ray_coordinator_step_latency_s_sum",
                                                 "ray_coordinator_step_latency_s_count")


def test_specs_are_unique_valid_and_cover_every_mode_and_end() -> None:
    names = [s.name for s in m.SPECS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names)
    assert all(list(s.boundaries) == sorted(s.boundaries) and s.boundaries for s in m.SPECS
               if s.kind is m.Kind.HISTOGRAM)
    assert set(m.MODES) == {"normal", "suspended_slow", "suspended_fast"}
    assert set(m.FINISHED) == {"completed", "failed", "compensated", "cancelled", "terminated"}


def test_importing_the_module_imports_no_ray() -> None:
    # Ray may already be imported by other tests in this process: check a fresh interpreter.
    code = "import sys, actors.metrics, actors.supervision.supervisor, actors.runner; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_options_turn_metrics_on_by_default() -> None:
    assert Options().metrics is True
    assert Options(metrics=False).metrics is False


def _dashboard_series() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return {s for e in exprs for s in re.findall(r"\bray_[a-z0-9_]+", e)}


def test_dashboard_references_only_defined_metrics_and_covers_them_all() -> None:
    defined = {s: spec for spec in m.SPECS for s in m.exported_series(spec)}
    used = _dashboard_series()
    assert used, "the dashboard has no queries"
    assert used <= set(defined), f"undefined series in the dashboard: {sorted(used - set(defined))}"
    assert {defined[s].name for s in used} == {s.name for s in m.SPECS}, "a metric has no panel"


def test_dashboard_filters_every_query_by_the_namespace_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert "namespace" in names
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert 'namespace=~"$namespace"' in target["expr"], (panel["title"], target["expr"])


@pytest.mark.parametrize("spec", m.SPECS, ids=lambda s: s.name)
def test_every_spec_has_a_description(spec: m.Spec) -> None:
    assert spec.description


async def test_the_supervisor_core_counts_what_happens_to_workflows() -> None:
    """The in-process coordinator with a recording `Metrics`: submits, ends, parked attempts,
    retries, latencies, the sampled gauges and result answers, by command type."""
    metrics, fake = make()
    c = LocalCoordinator(opts())
    c.core = SupervisorCore(c.options, LocalJournal(c.journal), c.pool, metrics=metrics)
    await c.start()
    try:
        ids = await c.core.submit_many([Echo(1), Echo(2), Fails(steps=0), Fails(steps=1), Flaky(failures=1)])
        for wid in ids:
            with contextlib.suppress(CommandFailed):
                await c.core.result(wid, 10)
        metrics.flush()
    finally:
        await c.close()
    echo, fails, flaky = "workflows.testing:Echo", "workflows.testing:Fails", "workflows.testing:Flaky"
    counts = {(name, tags.get("type")): value for op, name, value, tags in fake.calls if op == "inc"}
    assert counts[(m.SUBMITTED.name, echo)] == 2 and counts[(m.SUBMITTED.name, fails)] == 2
    assert counts[(m.COMPLETED.name, echo)] == 2 and counts[(m.COMPLETED.name, flaky)] == 1
    assert counts[(m.FAILED.name, fails)] == 1 and counts[(m.COMPENSATED.name, fails)] == 1
    assert counts[(m.DELAYED.name, flaky)] == 1 and counts[(m.RETRIES.name, flaky)] == 1
    assert counts[(m.RESULT_CACHE_HITS.name, None)] == 5
    assert len([v for v, t in fake.of("observe", m.WORKFLOW_LATENCY.name) if t["type"] == echo]) == 2
    gauges = {name: value for op, name, value, _ in fake.calls if op == "set"}
    assert gauges == {m.IN_FLIGHT.name: 0, m.MAX_CMDS.name: c.options.max_cmds, m.MODE.name: 0}


async def test_results_read_back_from_the_journal_count_as_misses_not_hits() -> None:
    """With a cache of one finished result, the others are read back: each a miss only."""
    metrics, fake = make()
    c = LocalCoordinator(opts(result_cache_size=1))
    c.core = SupervisorCore(c.options, LocalJournal(c.journal), c.pool, metrics=metrics)
    await c.start()
    try:
        ids = await c.core.submit_many([Echo(i) for i in range(4)])
        assert await c.core.result(ids[-1], 10) == 3
        while sum(wf.state.finished for wf in c.core.table.workflows.values()) < 1 or \
                any(w in c.core.table.workflows for w in ids[:3]):
            await asyncio.sleep(0.01)
        assert [await c.core.result(w, 10) for w in ids[:3]] == [0, 1, 2]
        assert set(await c.core.wait(ids[:2], 10)) == set(ids[:2])
        metrics.flush()
    finally:
        await c.close()
    counts = {name: value for op, name, value, _ in fake.calls if op == "inc"}
    assert counts[m.RESULT_CACHE_MISSES.name] == 5 and counts[m.RESULT_CACHE_HITS.name] == 1
